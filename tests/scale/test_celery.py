"""Dagster on Celery: two workers (separate processes) on a real Redis broker run the steps
of the benchmark and the training assets, at overlapping times, with the run and event
storage on PostgreSQL (deploy/dagster-postgres.yaml), and the report equals the in-process
run's."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import dagster as dg
import pytest

from tests.scale import servers

pytestmark = [pytest.mark.scale, pytest.mark.slow]

WORKERS = ("worker1", "worker2")
OUTPUTS = ("benchmark", "bpr_model", "lightgcn_model")


def _comparable(value):
    """A report without what differs between two runs of the same computation: timings and
    the feature file's path (each run has its own ALIGNREC_HOME)."""
    if isinstance(value, dict):
        return {k: _comparable(v) for k, v in value.items()
                if "seconds" not in k and not k.startswith("alignrec_features")}  # fmt: skip
    if isinstance(value, list):
        return [_comparable(v) for v in value]
    return value


def _meta(materialization) -> dict:
    """A materialization's metadata as plain values."""
    return {k: v.value for k, v in materialization.metadata.items()}


def _steps(instance, run_id: str) -> dict[str, dict]:
    """Per step: the Celery worker that ran it (the executor's engine event names it), the
    process id and the start and end times the worker wrote to the event log."""
    steps: dict[str, dict] = {}
    for entry in instance.all_logs(run_id):
        e = entry.dagster_event
        if e is None or not e.step_key:
            continue
        step = steps.setdefault(e.step_key, {})
        worker = getattr(e.engine_event_data, "metadata", {}).get("Celery worker") if (
            e.is_engine_event) else None  # fmt: skip
        if worker is not None:
            step["worker"] = worker.value
        if e.is_step_start:
            step["start"], step["pid"] = entry.timestamp, e.pid
        elif e.is_step_success:
            step["end"] = entry.timestamp
    return steps


def test_steps_run_on_two_celery_workers_and_match_the_in_process_run(
    redis_url, postgres, mlflow_server, tmp_path, monkeypatch
):
    from tests.scale import celery_job

    home = servers.dagster_home(postgres, tmp_path / "dagster", "dagster_celery")
    celery_home, ref_home = tmp_path / "celery-home", tmp_path / "ref-home"
    celery_home.mkdir()
    ref_home.mkdir()
    env = {**os.environ, **home, "ALIGNREC_HOME": str(celery_home),
           "ALIGNREC_RESULTS": str(celery_home / "results"),
           "MLFLOW_TRACKING_URI": mlflow_server.url, "ALIGNREC_EXECUTOR": "celery",
           "ALIGNREC_CELERY_BROKER": redis_url, "ALIGNREC_CELERY_BACKEND": redis_url,
           "PYTHONPATH": str(servers.ROOT), "PATH": f"{servers.BIN}:{os.environ['PATH']}",
           "OMP_NUM_THREADS": "1"}  # fmt: skip
    cmd = [str(servers.BIN / "dagster-celery"), "worker", "start", "-A", "dagster_celery.app",
           "-y", str(servers.ROOT / "deploy" / "celery.yaml"), "--loglevel", "INFO"]  # fmt: skip
    workers = [servers.start(f"celery {n}", [*cmd, "-n", n, "--", "--concurrency", "1"],
                             tmp_path / f"{n}.log", env=env, cwd=servers.ROOT)
               for n in WORKERS]  # fmt: skip
    try:
        # The reference, in this process, while the workers start.
        monkeypatch.setenv("ALIGNREC_HOME", str(ref_home))
        monkeypatch.setenv("ALIGNREC_RESULTS", str(ref_home / "results"))  # its own runs
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'ref.db'}")
        monkeypatch.setenv("ALIGNREC_EXECUTOR", "in_process")
        t0 = time.monotonic()
        ref = celery_job.job().execute_in_process(run_config=celery_job.CONFIG,
                                                  partition_key="synthetic")  # fmt: skip
        assert ref.success
        expected = {n: _meta(ref.asset_materializations_for_node(n)[0]) for n in OUTPUTS}
        in_process_s = time.monotonic() - t0

        for w in workers:
            servers.wait_until(w, lambda w=w: " ready." in w.tail(100_000), "ready", 180)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        t0 = time.monotonic()
        with dg.DagsterInstance.get() as instance:
            assert type(instance.run_storage).__name__ == "PostgresRunStorage"
            with dg.execute_job(dg.reconstructable(celery_job.job), instance,
                                run_config=celery_job.CONFIG,
                                tags={"dagster/partition": "synthetic"}) as result:  # fmt: skip
                assert result.success, [w.tail() for w in workers]
                run_id = result.run_id
                got = {n: _meta(instance.get_latest_materialization_event(dg.AssetKey(n))
                                .asset_materialization) for n in OUTPUTS}  # fmt: skip
            steps = _steps(instance, run_id)
        celery_s = time.monotonic() - t0
    finally:
        for w in workers:
            w.stop()

    (tmp_path / "steps.json").write_text(json.dumps(steps, indent=1))
    print(f"in-process {in_process_s:.1f} s, celery {celery_s:.1f} s")
    print(json.dumps(steps, indent=1))
    models = {f"benchmark.benchmark_model[{m}]" for m in ("bpr", "lightgcn")}
    trained = {"bpr_model", "lightgcn_model"}
    assert models | trained <= set(steps), steps
    assert all(s.get("worker", "").split("@")[0] in WORKERS for s in steps.values()), steps
    host = {s["worker"].split("@")[0] for s in steps.values()}
    assert host == set(WORKERS), f"every step on one worker: {steps}"
    assert len({s["pid"] for s in steps.values()}) >= 2, steps
    overlapping = [
        (a, b) for a in steps for b in steps
        if a < b and steps[a]["worker"] != steps[b]["worker"]
        and steps[a]["start"] < steps[b]["end"] and steps[b]["start"] < steps[a]["end"]
    ]  # fmt: skip
    assert overlapping, f"no two steps on different workers overlapped: {steps}"

    # the report.json each run wrote (beside its report.md), under its own results folder
    report, want = (json.loads(Path(o["benchmark"]["report_path"]).with_suffix(".json")
                               .read_text()) for o in (got, expected))  # fmt: skip
    assert Path(got["benchmark"]["report_path"]).is_relative_to(celery_home)
    assert report["runs_trained"] == want["runs_trained"] == 4  # 2 models x 2 seeds
    assert _comparable(report) == _comparable(want)
    for node in ("bpr_model", "lightgcn_model"):  # the training assets' metrics, as metadata
        assert Path(got[node]["folder"]).is_relative_to(celery_home)
        scores = {k: v for k, v in got[node].items() if k.startswith(("valid/", "test/"))}
        assert scores and scores == {k: expected[node][k] for k in scores}, node
