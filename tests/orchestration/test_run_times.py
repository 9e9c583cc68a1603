"""``python -m orchestration.run_times``: a pipeline run's step times, read from Dagster."""

from __future__ import annotations

import json

import dagster as dg
import pytest

from orchestration import run_times


def _step(key: str, start: float, seconds: float) -> dict:
    return {"key": key, "start": start, "seconds": seconds, "status": "SUCCESS"}


def test_the_benchmark_model_steps_become_one_row_in_start_order():
    steps = [
        _step("benchmark.benchmark_report", 50.0, 1.5),
        _step("benchmark.benchmark_model[bpr]", 20.0, 7.0),
        _step("stage1_features", 1.0, 300.0),
        _step("benchmark.benchmark_model[mgcn]", 30.0, 190.0),
        _step("dataset", 0.0, 0.25),
    ]
    rows = run_times.summarize(steps, {"runs_trained": 1, "runs_reused": 1})
    assert [r["step"] for r in rows] == [
        "dataset",
        "stage1_features",
        "benchmark: 2 model steps (1 runs trained, 1 reused from results/)",
        "benchmark.benchmark_report",
    ]
    assert rows[2]["seconds"] == pytest.approx(197.0)
    md = run_times.markdown(
        {"partition": "d", "label": "cold", "rows": rows, "run_id": "abcdef123", "run_seconds": 500.0,
         "wall_seconds": 510.0, "commit": "c0ffee"}
    )
    assert "| stage1_features | 300.0 |" in md
    assert "| 1 other steps (data, checks, plan), under 1 s each | 0.2 |" in md
    assert "8 min 20.0 s from its start" in md and "8 min 30.0 s wall" in md and "c0ffee" in md


@dg.op
def _work() -> int:
    return 1


@dg.op(name="benchmark_report")
def _report(x: int) -> int:
    return x


@dg.graph(name="benchmark")
def _benchmark_graph() -> int:
    return _report(_work())


@dg.job(name="pipeline_job", tags={"dagster/partition": "tiny"})
def _pipeline():
    _benchmark_graph()  # steps keyed "benchmark.<op>", as the benchmark asset's


def test_the_record_of_a_real_run_names_its_steps():
    job = _pipeline
    with dg.DagsterInstance.ephemeral() as instance:
        result = job.execute_in_process(instance=instance)
        assert result.success
        run = run_times.find_run(instance, "tiny")  # the newest run that reached the report
        assert run.run_id == result.run_id
        record = run_times.collect(instance, run)
        assert {s["key"] for s in record["steps"]} == {"benchmark._work", run_times.REPORT_STEP}
        assert all(s["seconds"] is not None and s["seconds"] >= 0 for s in record["steps"])
        assert record["partition"] == "tiny" and record["run_seconds"] >= 0
        json.dumps(record)  # what main writes
        with pytest.raises(SystemExit, match="no successful pipeline run of 'other'"):
            run_times.find_run(instance, "other")
        with pytest.raises(SystemExit, match="no Dagster run 'nope'"):
            run_times.find_run(instance, "tiny", "nope")
