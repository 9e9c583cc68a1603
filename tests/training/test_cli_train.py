"""``alignrec train`` and ``alignrec bench-speed`` on a tiny in-memory dataset."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

import alignrec.data
from alignrec import cli
from alignrec.errors import ConfigError
from tests.training.synth import clustered

KEYS = {f"{m}@{k}" for m in ("recall", "ndcg", "precision", "map", "hit") for k in (5, 10, 20, 50)}


@pytest.fixture
def tiny(monkeypatch):
    ds = clustered(0)
    monkeypatch.setattr(alignrec.data, "load_dataset", lambda name: ds)
    return ds


def test_train_writes_metrics_and_per_user_arrays(tiny, tmp_path):
    out = tmp_path / "run"
    tiny.meta["fingerprint"] = "0f" * 32  # a prepared dataset's content hash
    res = CliRunner().invoke(
        cli.app,
        [
            "train",
            "bpr",
            "--dataset",
            "tiny",
            "--seed",
            "2",
            "--out",
            str(out),
            "--quiet",
            "--set",
            "epochs=3",
            "--set",
            "batch_size=64",
            "--set",
            "reg_weight=1e-3",
        ],
    )
    assert res.exit_code == 0, res.output
    m = json.loads((out / "metrics.json").read_text())
    for key in (
        "model",
        "dataset",
        "seed",
        "best_epoch",
        "epochs_run",
        "train_seconds",
        "valid",
        "test",
    ):
        assert key in m
    assert m["model"] == "bpr" and m["seed"] == 2 and m["epochs_run"] == 3
    assert m["data_fingerprint"] == "0f" * 32
    assert set(m["valid"]) == KEYS and set(m["test"]) == KEYS
    per_user = np.load(out / "per_user.npz")
    assert len(per_user["test/users"]) == tiny.n_users
    assert per_user["test/recall@20"].mean() == pytest.approx(m["test"]["recall@20"])
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model"]["reg_weight"] == 1e-3
    assert len(json.loads((out / "history.json").read_text())) == 3


def test_identical_runs_write_identical_files(tiny, tmp_path):
    args = ["train", "bpr", "--dataset", "tiny", "--seed", "1", "--quiet", "--set", "epochs=2"]
    for name in ("a", "b"):
        res = CliRunner().invoke(cli.app, [*args, "--out", str(tmp_path / name)])
        assert res.exit_code == 0, res.output
    for name in ("model.pt", "per_user.npz", "config.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_train_grid_records_the_validation_winner(tiny, tmp_path):
    out = tmp_path / "grid"
    res = CliRunner().invoke(
        cli.app,
        [
            "train",
            "lightgcn",
            "--dataset",
            "tiny",
            "--out",
            str(out),
            "--quiet",
            "--set",
            "epochs=2",
            "--set",
            "batch_size=64",
            "--grid",
            "learning_rate=1e-4,1e-2",
        ],
    )
    assert res.exit_code == 0, res.output
    m = json.loads((out / "metrics.json").read_text())
    rows = json.loads((out / "grid.json").read_text())
    assert m["selected_on"] == "valid/recall@20"
    best = max(rows, key=lambda r: r["valid/recall@20"])
    assert best["winner"] and m["grid_point"] == best["point"]
    assert m["valid"]["recall@20"] == best["valid/recall@20"]


def test_unknown_set_key_is_a_config_error(tiny, tmp_path):
    res = CliRunner().invoke(
        cli.app, ["train", "bpr", "--dataset", "tiny", "--out", str(tmp_path), "--set", "lr=1"]
    )
    assert isinstance(res.exception, ConfigError) and "'lr'" in str(res.exception)


def test_main_prints_a_clean_error(tiny, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "alignrec",
            "train",
            "bpr",
            "--dataset",
            "tiny",
            "--out",
            str(tmp_path),
            "--set",
            "batch_size=big",
        ],
    )
    with pytest.raises(SystemExit) as exc:
        cli.main()
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "error:" in err and "'batch_size'" in err and "Traceback" not in err


def test_bench_speed_prints_figures(tiny):
    res = CliRunner().invoke(
        cli.app,
        [
            "bench-speed",
            "--model",
            "lightgcn",
            "--dataset",
            "tiny",
            "--epochs",
            "1",
            "--evals",
            "1",
        ],
    )
    assert res.exit_code == 0, res.output
    assert (
        "train epoch" in res.output
        and "full validation" in res.output
        and "CPU time" in res.output
        and "peak RSS" in res.output
    )


@pytest.mark.slow
def test_train_logs_to_mlflow_when_asked(tiny, tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    import alignrec.tracking as tracking

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setattr(tracking, "MLRUNS_DIR", tmp_path / "mlruns")
    res = CliRunner().invoke(
        cli.app,
        [
            "train",
            "bpr",
            "--dataset",
            "tiny",
            "--out",
            str(tmp_path / "run"),
            "--quiet",
            "--set",
            "epochs=2",
            "--mlflow",
            "--experiment",
            "unit",
        ],
    )
    assert res.exit_code == 0, res.output
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking.default_tracking_uri())
    exp = client.get_experiment_by_name("unit")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.data.params["model"] == "bpr"
    assert "test/recall_at_20" in run.data.metrics and "valid/ndcg_at_10" in run.data.metrics
    assert len(client.get_metric_history(run.info.run_id, "train/loss")) == 2
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {
        "metrics.json",
        "per_user.npz",
    }
