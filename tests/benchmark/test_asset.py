"""The ``benchmark`` asset on the synthetic partition: AlignRec on the stage-1 features (here a
stand-in table), every run in MLflow under a summary run holding the report."""

from __future__ import annotations

import dagster as dg
import numpy as np
import pytest

from orchestration.assets import benchmark, data
from orchestration.partitions import dataset_partitions
from orchestration.resources import ComputeResource, MLflowResource

pytestmark = pytest.mark.slow  # MLflow on SQLite and a Dagster run: tens of seconds

TINY = {"models": ["bpr", "alignrec"], "seeds": 2, "sets": {"epochs": "2", "batch_size": "64"}}


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


def _materialize(tmp_path, resources, skipped=None, config=TINY):
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [*data.assets, _stage1(tmp_path, skipped), benchmark.benchmark],
            partition_key="synthetic",
            instance=instance,
            resources=resources,
            run_config={"ops": {"benchmark": {"config": config}}},
        )
    assert result.success
    return result


def test_benchmark_asset_reports_and_logs_to_mlflow(tmp_path, resources):
    from mlflow.tracking import MlflowClient

    res, uri = resources
    result = _materialize(tmp_path, res)
    out = result.output_for_node("benchmark")
    assert set(out["models"]) == {"bpr", "alignrec"} and out["alignrec_features"].endswith(
        "features.npy"
    )
    meta = result.asset_materializations_for_node("benchmark")[0].metadata
    assert "| **alignrec** |" in meta["report"].value
    assert meta["report_path"].value.endswith("benchmark/synthetic/report.md")

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("benchmark-synthetic")
    runs = client.search_runs([exp.experiment_id])
    summary = client.get_run(out["mlflow_run_id"])
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == summary.info.run_id]
    assert len(children) == len(runs) - 1 == (3 + 1) * 2  # each: a 3-point grid, then seed 1
    files = {a.path for a in client.list_artifacts(summary.info.run_id)}
    assert {"report.md", "report.json", "plots"} <= files
    assert "alignrec/test_recall_at_20_mean" in summary.data.metrics


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
