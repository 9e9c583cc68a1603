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
MAX_ROWS = 50  # the server's ALIGNREC_SERVE_MAX_ROWS


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
        "ALIGNREC_SERVE_MAX_ROWS": str(MAX_ROWS),
    }
    env.pop("ALIGNREC_SERVE_MAX_K", None)
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


def post(base: str, payload: dict | str) -> tuple[int, str]:
    """The status and body of POST /invocations, 4xx and 5xx included."""
    data = payload if isinstance(payload, str) else json.dumps(payload)
    request = urllib.request.Request(
        f"{base}/invocations",
        data=data.encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def strict_json(text: str):
    """JSON as the standard has it: -Infinity, Infinity and NaN are errors."""

    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


def split(columns, data, params=None) -> str:
    """A dataframe_split request as raw JSON (so 2**63 stays an integer literal)."""
    body = json.dumps({"dataframe_split": {"columns": columns, "data": data}})
    if params is not None:
        body = body[:-1] + ', "params": ' + json.dumps(params) + "}"
    return body


BAD_REQUESTS = {
    "k -1": (split(["user_id", "k"], [["3", -1]]), "row 0: k = -1: "),
    "k -3": (split(["user_id", "k"], [["3", -3]]), "row 0: k = -3: "),
    "k 0": (split(["user_id", "k"], [["3", 0]]), "row 0: k = 0: "),
    "k -100": (split(["user_id", "k"], [["3", -100]]), "row 0: k = -100: "),
    "k 2**63": (split(["user_id", "k"], [["3", 2**63]]), f"row 0: k = {2**63}: "),
    "k 1001": (split(["user_id", "k"], [["3", 5], ["4", 1001]]), "row 1: k = 1001: "),
    "k 2.5": (split(["user_id", "k"], [["3", 2.5]]), "row 0: k = 2.5: "),
    "k text": (split(["user_id", "k"], [["3", "ten"]]), "row 0: k = 'ten': "),
    "params k -5": (split(["user_id"], [["3"]], {"k": -5}), "params: k = -5: "),
    "params k 2**63": (split(["user_id"], [["3"]], {"k": 2**63}), f"params: k = {2**63}: "),
    "no user_id": (split(["user", "k"], [["3", 2]]), "the request has no user_id column"),
    "too many rows": (
        split(["user_id"], [[str(u)] for u in range(MAX_ROWS + 1)]),
        f"{MAX_ROWS + 1} rows in one request: at most {MAX_ROWS} (ALIGNREC_SERVE_MAX_ROWS)",
    ),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_a_bad_request_gets_400_with_a_one_line_reason(served, case):
    payload, reason = BAD_REQUESTS[case]
    status, text = post(served, payload)
    assert status == 400, text
    body = strict_json(text)
    assert set(body) <= {"error_code", "message", "sqlstate", "error_class"}, body  # no stack_trace
    assert body["error_code"] == "INVALID_PARAMETER_VALUE"
    assert body["message"].startswith(reason) and "\n" not in body["message"], body["message"]
    assert "Traceback" not in text and "site-packages" not in text


def test_missing_k_means_the_default_and_no_score_is_infinite(served, trained):
    status, text = post(served, split(["user_id", "k"], [["3", 2], ["4", None]], {"k": 3}))
    assert status == 200, text
    rows = strict_json(text)["predictions"]
    assert [r["user_id"] for r in rows] == ["3"] * 2 + ["4"] * 3
    # k beyond the candidates: every item not seen in training, each once, finite scores
    status, text = post(served, split(["user_id", "k"], [["3", 1000], ["nobody", 1000]]))
    assert status == 200, text
    rows = strict_json(text)["predictions"]
    mine = [r["item_id"] for r in rows if r["user_id"] == "3"]
    seen = train_items(trained.dataset, "3")
    assert len(mine) == len(set(mine)) == trained.dataset.n_items - len(seen)
    assert not set(mine) & seen
    assert len([r for r in rows if r["user_id"] == "nobody"]) == trained.dataset.n_items
