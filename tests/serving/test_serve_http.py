"""The documented serve command (``make serve``, which runs ``alignrec serve``, which runs
``mlflow models serve``) on the registered champion answers real HTTP requests.

Starting the server takes 10-30 s (make, the MLflow CLI, then uvicorn loading the model), hence
the ``smoke`` mark. One server, from a temporary store, serves every test of this module.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from alignrec.paths import PROJECT_ROOT
from tests.serving.conftest import train_items

pytestmark = [pytest.mark.smoke, pytest.mark.slow]

START_TIMEOUT_S = 180


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_ping(proc: subprocess.Popen, base: str, log: Path) -> None:
    """Return once ``/ping`` answers 200; fail with the server's log if it dies or stalls."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{base}/ping", timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    pytest.fail(f"no /ping within {START_TIMEOUT_S} s:\n{log.read_text()[-3000:]}")


def invoke(base: str, payload: dict) -> dict:
    request = urllib.request.Request(
        f"{base}/invocations",
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=60) as r:
        return json.loads(r.read())


@pytest.fixture(scope="module")
def served(registered, tmp_path_factory):
    """``make serve MODEL=<champion> PORT=<free port>`` with MLFLOW_TRACKING_URI at the test
    store and a PATH without this environment's bin (the command adds it for uvicorn); yields
    the base URL, then stops the server and checks that no ./mlflow.db appeared."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    bin_dir = Path(sys.executable).parent
    path = [p for p in os.environ["PATH"].split(os.pathsep) if p and Path(p) != bin_dir]
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": registered.uri,
        "PATH": os.pathsep.join(path),
    }
    env.pop("MLFLOW_REGISTRY_URI", None)
    stray = PROJECT_ROOT / "mlflow.db"
    stray_before = stray.exists()
    cmd = ["make", "-s", "-o", ".venv/bin/.installed", "serve",
           f"MODEL={registered.champion}", f"PORT={port}"]  # fmt: skip
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd, cwd=PROJECT_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        wait_for_ping(proc, base, log)
        yield base
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
    assert stray.exists() == stray_before, "the serve command left a stray ./mlflow.db"


def test_served_champion_answers_dataframe_split_requests(served, trained):
    base = served
    users, k = ["2", "9", "nobody"], 5
    body = invoke(
        base,
        {
            "dataframe_split": {
                "columns": ["user_id", "k", "exclude"],
                "data": [[u, k, []] for u in users],
            }
        },
    )
    rows = body["predictions"]
    for user in users:
        mine = [r for r in rows if r["user_id"] == user]
        assert [r["rank"] for r in mine] == list(range(1, k + 1))
        assert np.all(np.diff([r["score"] for r in mine]) <= 0)
        if user == "nobody":
            assert {r["fallback"] for r in mine} == {"popular"}
        else:
            assert {r["fallback"] for r in mine} == {""}
            assert not {r["item_id"] for r in mine} & train_items(trained.dataset, user)
    default_k = invoke(
        base, {"dataframe_split": {"columns": ["user_id"], "data": [["2"]]}, "params": {"k": 3}}
    )
    assert len(default_k["predictions"]) == 3
