"""The ``benchmark`` asset on the synthetic partition: AlignRec on the stage-1 features (here a
stand-in table), every run in MLflow under a summary run holding the report."""

from __future__ import annotations

import json

import dagster as dg
import numpy as np
import pytest

from orchestration.assets import benchmark, data
from orchestration.partitions import dataset_partitions
from orchestration.resources import ComputeResource, MLflowResource

pytestmark = pytest.mark.slow  # MLflow on SQLite and a Dagster run: tens of seconds

TINY = {"profile": "full", "models": ["bpr", "alignrec"], "seeds": 2, "sets": {"epochs": "2", "batch_size": "64"}}
DVC = {"alignrec/dvc_stage": "benchmark"}  # as `dvc repro` runs it: into dvc.yaml's folder


def _stage1(tmp_path, skipped: str | None):
    """A stand-in for the stage1_features asset: random features, or skipped."""

    @dg.asset(name="stage1_features", partitions_def=dataset_partitions)
    def stage1_features(dataset: dict) -> dict:
        if skipped:
            return {"name": dataset["name"], "skipped": skipped}
        path = tmp_path / "features.npy"
        np.save(
            path, np.random.default_rng(0).standard_normal((dataset["items"], 8), dtype=np.float32)
        )
        return {"name": dataset["name"], "features": str(path)}

    return stage1_features


@pytest.fixture
def resources(tmp_path, monkeypatch):
    import alignrec.tracking

    monkeypatch.setattr(alignrec.tracking, "MLRUNS_DIR", tmp_path / "mlruns")  # artifacts too
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    return {
        "mlflow": MLflowResource(tracking_uri=uri),
        "compute": ComputeResource(device="cpu", threads=1),
    }, uri


def _materialize(tmp_path, resources, skipped=None, config=TINY, ok=True, tags=None):
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [*data.assets, _stage1(tmp_path, skipped), benchmark.benchmark],
            partition_key="synthetic",
            instance=instance,
            resources=resources,
            run_config={"ops": {"benchmark": {"config": config}}},
            raise_on_error=ok,
            tags=tags,
        )
    assert result.success == ok
    return result


def test_benchmark_asset_reports_and_logs_to_mlflow(tmp_path, resources, isolated_home):
    from mlflow.tracking import MlflowClient

    from orchestration import provenance

    res, uri = resources
    result = _materialize(tmp_path, res, tags=DVC)
    out = result.output_for_node("benchmark")
    assert set(out["models"]) == {"bpr", "alignrec"} and out["alignrec_features"].endswith(
        "features.npy"
    )
    # One step per model, which a multiprocess or k8s executor runs in parallel.
    steps = {e.step_key for e in result.all_events if e.is_step_success}
    assert {"benchmark.benchmark_model[bpr]", "benchmark.benchmark_model[alignrec]"} <= steps
    meta = result.asset_materializations_for_node("benchmark")[0].metadata
    assert "| **alignrec** |" in meta["report"].value
    assert meta["runs_trained"].value == 4 and meta["runs_reused"].value == 0
    assert meta["compute_seconds"].value == pytest.approx(out["compute_seconds"]) and 0 < out[
        "compute_seconds"
    ] == pytest.approx(sum(m["compute_seconds"] for m in out["models"].values()))
    assert meta["report_path"].value == str(isolated_home / "benchmark/synthetic/report.md")
    record = provenance.read(isolated_home, "synthetic")["benchmark"]
    assert record["dagster_run_id"] == result.run_id and record["dvc_stage"] == "benchmark"
    assert record["mlflow_run_id"] == out["mlflow_run_id"] == meta["mlflow_run_id"].value

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("benchmark-synthetic")
    runs = client.search_runs([exp.experiment_id])
    summary = client.get_run(out["mlflow_run_id"])
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == summary.info.run_id]
    assert len(children) == len(runs) - 1 == (3 + 1) * 2  # each: a 3-point grid, then seed 1
    files = {a.path for a in client.list_artifacts(summary.info.run_id)}
    assert {"report.md", "report.json", "plots"} <= files
    assert "alignrec/test_recall_at_20_mean" in summary.data.metrics

    # cached_only: the report of what is finished; a model never trained is listed, not trained
    again = _materialize(
        tmp_path, res, config={**TINY, "models": ["bpr", "alignrec", "lightgcn"], "cached_only": True},
        tags=DVC,
    ).output_for_node("benchmark")
    assert again["runs_trained"] == 0 and again["runs_reused"] == 4
    for m in ("bpr", "alignrec"):
        assert again["models"][m]["test_recall_at_20_per_seed"] == (
            out["models"][m]["test_recall_at_20_per_seed"]
        )
    assert "0 of 2 runs finished" in again["skipped"]["lightgcn"]


def test_benchmark_asset_skips_alignrec_when_stage1_was_skipped(tmp_path, resources):
    res, _ = resources
    result = _materialize(
        tmp_path,
        res,
        skipped="the dataset has no item content",
        config={**TINY, "models": ["alignrec"]},
    )
    out = result.output_for_node("benchmark")
    assert out["models"] == {}
    assert out["skipped"] == {"alignrec": "stage 1 was skipped: the dataset has no item content"}
    meta = result.asset_materializations_for_node("benchmark")[0].metadata
    assert "skipped **alignrec**" in meta["report"].value


def test_a_failed_model_step_leaves_no_summary_run_open(tmp_path, resources, monkeypatch):
    from mlflow.tracking import MlflowClient

    from alignrec.benchmark import runner

    def broken(runs, *args, **kwargs):
        raise RuntimeError(f"{runs.model}: out of memory")

    monkeypatch.setattr(runner, "_run_model", broken)
    res, uri = resources
    result = _materialize(tmp_path, res, config={**TINY, "models": ["bpr"]}, ok=False)
    failed = [e for e in result.all_events if e.is_step_failure]
    assert [e.step_key for e in failed] == ["benchmark.benchmark_model[bpr]"]
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("benchmark-synthetic")
    [summary] = client.search_runs([exp.experiment_id], "tags.kind = 'summary'")
    assert summary.info.status == "FAILED"


def test_model_steps_run_in_parallel_under_the_multiprocess_executor(tmp_path, monkeypatch):
    from tests.benchmark import parallel_job

    monkeypatch.setenv("ALIGNREC_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    (tmp_path / "home").mkdir()
    (tmp_path / "dagster").mkdir()
    config = {**TINY, "models": ["bpr", "lightgcn"]}
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster")) as instance:
        with dg.execute_job(
            dg.reconstructable(parallel_job.job),
            instance,
            run_config={
                "ops": {"benchmark": {"config": config}},
                "execution": {"config": {"max_concurrent": 2}},
            },
            tags={"dagster/partition": "synthetic"},
        ) as result:
            assert result.success
            run_id = result.run_id
        spans = {}
        for entry in instance.all_logs(run_id):
            e = entry.dagster_event
            if e is not None and (e.step_key or "").startswith("benchmark.benchmark_model["):
                if e.is_step_start:
                    spans.setdefault(e.step_key, [0.0, 0.0])[0] = entry.timestamp
                elif e.is_step_success:
                    spans[e.step_key][1] = entry.timestamp
    (a0, a1), (b0, b1) = spans.values()
    assert a0 < b1 and b0 < a1, f"the two model steps did not overlap: {spans}"
    # not a DVC stage: the run writes the results folder, never dvc.yaml's benchmark/synthetic/
    assert not (tmp_path / "home/benchmark").exists()
    from alignrec.paths import results_root

    report = json.loads((results_root() / "benchmark/synthetic/full/report.json").read_text())
    assert set(report["models"]) == {"bpr", "lightgcn"} and report["runs_trained"] == 4


def test_a_dvc_run_copies_the_runs_results_keeps(tmp_path, resources, isolated_home):
    """A UI run writes results/benchmark/<dataset>/<profile>/; a `dvc repro` run, which owns
    its own folder, copies those finished runs instead of training them again."""
    res, _ = resources
    config = {**TINY, "models": ["bpr"]}
    ui = _materialize(tmp_path, res, config=config).output_for_node("benchmark")
    assert ui["runs_trained"] == 2
    assert (isolated_home / "results/benchmark/synthetic/full/runs/bpr/s1").is_dir()
    dvc = _materialize(tmp_path, res, config=config, tags=DVC).output_for_node("benchmark")
    assert dvc["runs_trained"] == 0 and dvc["runs_reused"] == 2
    assert (isolated_home / "benchmark/synthetic/runs/bpr/s1/metrics.json").is_file()
    assert dvc["models"]["bpr"]["test_recall_at_20_per_seed"] == (
        ui["models"]["bpr"]["test_recall_at_20_per_seed"]
    )


def test_the_profiles_seeds_report_the_later_seeds_the_folder_holds(tmp_path, resources):
    """With the profile's seeds (config seeds 0: one for quick), the report keeps the later
    seeds every model has already finished in the folder instead of shrinking to one."""
    res, _ = resources
    config = {**TINY, "profile": "quick", "models": ["bpr"]}
    first = _materialize(tmp_path, res, config=config).output_for_node("benchmark")
    assert first["runs_trained"] == 2
    again = _materialize(tmp_path, res, config={**config, "seeds": 0}).output_for_node("benchmark")
    assert again["runs_trained"] == 0 and again["runs_reused"] == 2
    assert again["models"]["bpr"]["test_recall_at_20_per_seed"] == (
        first["models"]["bpr"]["test_recall_at_20_per_seed"]
    )
    dvc = _materialize(tmp_path, res, config={**config, "seeds": 0}, tags=DVC)
    dvc = dvc.output_for_node("benchmark")  # its own folder: both seeds copied from results/
    assert dvc["runs_trained"] == 0 and dvc["runs_reused"] == 2
    assert dvc["models"]["bpr"]["test_recall_at_20_per_seed"] == (
        first["models"]["bpr"]["test_recall_at_20_per_seed"]
    )
