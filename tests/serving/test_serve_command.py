"""``alignrec serve`` / ``make serve``: the command they run, without starting a server (the
HTTP tests in test_serve_http.py start one)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from alignrec.commands.registry import serve_invocation
from alignrec.paths import PROJECT_ROOT


def test_serve_reads_the_project_store_and_finds_uvicorn(monkeypatch, tmp_path):
    """Bare `mlflow models serve` opens ./mlflow.db (the registered model is "not found", and a
    stray database is left behind) and execs `uvicorn` from PATH; the serve command points
    MLflow at the project's store and puts this environment's bin first on PATH."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    monkeypatch.chdir(tmp_path)
    argv, env = serve_invocation("models:/alignrec-x@champion", port=5123)
    store = f"sqlite:///{PROJECT_ROOT / 'mlruns' / 'mlflow.db'}"
    assert env["MLFLOW_TRACKING_URI"] == env["MLFLOW_REGISTRY_URI"] == store
    bin_dir = Path(sys.executable).parent
    assert env["PATH"].split(os.pathsep)[0] == str(bin_dir) and (bin_dir / "uvicorn").exists()
    assert argv[:5] == [sys.executable, "-m", "mlflow", "models", "serve"]
    assert argv[5:] == ["-m", "models:/alignrec-x@champion", "--env-manager", "local",
                        "-h", "127.0.0.1", "-p", "5123"]  # fmt: skip
    assert not (tmp_path / "mlflow.db").exists()


def test_serve_honours_a_tracking_uri(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.example:5000")
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    _, env = serve_invocation("models:/m@champion")
    assert env["MLFLOW_TRACKING_URI"] == env["MLFLOW_REGISTRY_URI"] == "http://tracking.example:5000"
    _, env = serve_invocation("models:/m@champion", tracking_uri="sqlite:////tmp/other.db")
    assert env["MLFLOW_TRACKING_URI"] == env["MLFLOW_REGISTRY_URI"] == "sqlite:////tmp/other.db"


def test_make_serve_serves_the_datasets_champion():
    out = subprocess.run(
        ["make", "-n", "-o", ".venv/bin/.installed", "serve", "DATASET=lastfm-2k"],
        cwd=PROJECT_ROOT, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert ".venv/bin/alignrec serve --model 'models:/alignrec-lastfm-2k@champion' --port 5001" in out
    out = subprocess.run(
        ["make", "-n", "-o", ".venv/bin/.installed", "serve", "MODEL=models:/m/3", "PORT=6001"],
        cwd=PROJECT_ROOT, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert "alignrec serve --model 'models:/m/3' --port 6001" in out


def test_a_stray_mlflow_db_is_ignored():
    res = subprocess.run(
        ["git", "check-ignore", "-q", "mlflow.db"], cwd=PROJECT_ROOT, capture_output=True
    )
    assert res.returncode == 0
