"""A small, bounded load test of the documented serve command (``make serve``).

It registers a recommender in a throw-away MLflow store (random embeddings, at the size given;
nothing is trained), starts ``make serve MODEL=... PORT=...`` on 127.0.0.1 with
``MLFLOW_TRACKING_URI`` at that store, sends a fixed number of requests of 1, 100 and 10,000
rows one after another, prints rows per second for each size, checks that a request one row
over ``ALIGNREC_SERVE_MAX_ROWS`` is refused quickly, and stops the server. ``--model URI``
serves a model already registered in ``$MLFLOW_TRACKING_URI`` (or the project's store) instead.
Nothing listens beyond the loopback interface, and every loop is bounded.

Usage: ``.venv/bin/python benchmarks/serve_load.py [--users 943 --items 1349 --dim 64]``
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

from alignrec.paths import PROJECT_ROOT

HOST = "127.0.0.1"
NAME = "alignrec-serve-load"
START_TIMEOUT_S = 180
MAX_ROWS = 10_000  # ALIGNREC_SERVE_MAX_ROWS's default


def synthetic_export(path: Path, users: int, items: int, dim: int, per_user: int, seed: int) -> None:
    """A ``recommender.npz`` as ``alignrec.serving.export_recommender`` writes it."""
    rng = np.random.default_rng(seed)
    per_user = min(per_user, items - 1)
    indices = np.concatenate(
        [np.sort(rng.choice(items, per_user, replace=False)) for _ in range(users)]
    ).astype(np.int32)
    indptr = np.arange(users + 1, dtype=np.int32) * per_user
    np.savez_compressed(
        path,
        user_emb=rng.standard_normal((users, dim), dtype=np.float32),
        item_emb=rng.standard_normal((items, dim), dtype=np.float32),
        indptr=indptr,
        indices=indices,
        user_ids=np.asarray([str(u) for u in range(users)], dtype=str),
        item_ids=np.asarray([str(i) for i in range(items)], dtype=str),
        popularity=np.bincount(indices, minlength=items).astype(np.float32),
    )


def register_synthetic(root: Path, args) -> tuple[str, str]:
    """Register a synthetic recommender as the champion of ``NAME``; its URI and the store."""
    import mlflow

    from alignrec.registry import CHAMPION, registry_client
    from alignrec.serving import log_recommender

    uri = f"sqlite:///{root / 'mlflow.db'}"
    export = root / "recommender.npz"
    synthetic_export(export, args.users, args.items, args.dim, args.per_user, args.seed)
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.create_experiment("serve-load", artifact_location=str(root / "artifacts"))
    with mlflow.start_run(experiment_id=experiment) as run:
        run_id = run.info.run_id
    log_recommender(export, run_id, registered_name=NAME, tracking_uri=uri)
    client = registry_client(uri)
    version = max(int(v.version) for v in client.search_model_versions(f"name='{NAME}'"))
    client.set_registered_model_alias(NAME, CHAMPION, str(version))
    return f"models:/{NAME}@{CHAMPION}", uri


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def post(base: str, body: bytes) -> tuple[int, bytes]:
    request = urllib.request.Request(
        f"{base}/invocations", data=body, headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=300) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def payload(rows: int, users: int, k: int, offset: int) -> bytes:
    data = [[str((offset + r) % users), k] for r in range(rows)]
    return json.dumps({"dataframe_split": {"columns": ["user_id", "k"], "data": data}}).encode()


def wait_until_up(proc: subprocess.Popen, base: str, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{base}/ping", timeout=2) as reply:
                if reply.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    raise SystemExit(f"no /ping within {START_TIMEOUT_S} s:\n{log.read_text()[-3000:]}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a registered model URI to serve instead of a synthetic one")
    parser.add_argument("--users", type=int, default=943, help="synthetic users (movielens: 943)")
    parser.add_argument("--items", type=int, default=1349, help="synthetic items (movielens: 1349)")
    parser.add_argument("--dim", type=int, default=64, help="synthetic embedding size")
    parser.add_argument("--per-user", type=int, default=85, help="training items per user")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--sizes", default="1,100,10000", help="rows per request")
    parser.add_argument("--requests", default="50,20,5", help="requests per size (bounded)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    counts = [int(c) for c in args.requests.split(",")]
    if len(sizes) != len(counts) or max(sizes) > MAX_ROWS or max(counts) > 1000:
        parser.error(f"one request count per size, sizes up to {MAX_ROWS}, at most 1000 requests")

    with tempfile.TemporaryDirectory(prefix="serve-load-") as tmp:
        root = Path(tmp)
        env = {**os.environ}
        for var in ("ALIGNREC_SERVE_MAX_K", "ALIGNREC_SERVE_MAX_ROWS"):
            env.pop(var, None)
        if args.model:
            model, users = args.model, args.users
        else:
            model, uri = register_synthetic(root, args)
            env["MLFLOW_TRACKING_URI"] = uri
            env.pop("MLFLOW_REGISTRY_URI", None)
            users = args.users
        port = free_port()
        base = f"http://{HOST}:{port}"
        log = root / "serve.log"
        cmd = ["make", "-s", "serve", f"MODEL={model}", f"PORT={port}"]
        print(f"$ {' '.join(cmd)}   (cwd {PROJECT_ROOT}; serves on {HOST} only)")
        started = time.perf_counter()
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                cmd, cwd=PROJECT_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        try:
            wait_until_up(proc, base, log)
            print(f"server up in {time.perf_counter() - started:.1f} s; model {model}")
            status, _ = post(base, payload(1, users, args.k, 0))  # warm-up
            assert status == 200, status
            print(f"{'rows/request':>12} {'requests':>8} {'median s':>9} {'rows/s':>10}")
            for rows, count in zip(sizes, counts, strict=True):
                body = payload(rows, users, args.k, 0)
                times = []
                for _ in range(count):
                    t0 = time.perf_counter()
                    status, reply = post(base, body)
                    times.append(time.perf_counter() - t0)
                    assert status == 200, reply[:300]
                median = statistics.median(times)
                print(f"{rows:>12,} {count:>8} {median:>9.3f} {rows / median:>10,.0f}")
            t0 = time.perf_counter()
            status, reply = post(base, payload(MAX_ROWS + 1, users, args.k, 0))
            print(
                f"{MAX_ROWS + 1:,} rows: HTTP {status} in {time.perf_counter() - t0:.3f} s: "
                f"{json.loads(reply).get('message', '')}"
            )
        finally:
            stop(proc)


if __name__ == "__main__":
    main()
