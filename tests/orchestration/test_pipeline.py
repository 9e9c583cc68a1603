"""The whole asset graph materializes on the synthetic partition, with MLflow runs and a
registered AlignRec model."""

from __future__ import annotations

import dagster as dg
import pytest

from alignrec.features.selection import RULE

pytestmark = pytest.mark.slow


def test_whole_pipeline_on_synthetic(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    from orchestration.definitions import defs

    fast = {"sets": {"epochs": "2", "patience": "2"}}
    run_config = {
        "ops": {
            "bpr_model": {"config": fast},
            "lightgcn_model": {"config": fast},
            "alignrec_model": {"config": fast},
            "benchmark": {"config": {"models": ["bpr", "vbpr", "alignrec"], "seeds": 2, **fast}},
            "stage1_features": {"config": {"overrides": {"epochs": "1", "min_steps": "0", "num_layers": "1",
                                                         "codebook_size": "8", "codebook_sample": "500"}}},
        }
    }
    job = defs.resolve_job_def("pipeline_job")
    with dg.instance_for_test() as instance:
        result = job.execute_in_process(partition_key="synthetic", instance=instance, run_config=run_config)
    assert result.success
    evals = result.get_asset_check_evaluations()
    assert evals and all(e.passed for e in evals)
    # alignrec_model checks its run itself, before registering (test_training_assets.py)
    assert {"bpr_model_valid", "lightgcn_model_valid"} <= {e.check_name for e in evals}
    materialized = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    assert {"dataset", "stage1_features", "alignrec_model", "zero_shot_eval", "item_cf_eval",
            "mask_modality_eval", "bpr_model", "lightgcn_model", "benchmark"} <= materialized

    bench = result.output_for_node("benchmark")
    assert set(bench["models"]) == {"bpr", "vbpr", "alignrec"} and not bench["skipped"]
    assert bench["alignrec_features"] == result.output_for_node("stage1_features")["features"]
    assert 0.0 <= bench["models"]["bpr"]["p_wilcoxon_vs_alignrec"] <= 1.0

    ar = result.output_for_node("alignrec_model")
    assert ar["registered_model"] == "alignrec-synthetic" and ar["version"] is not None
    assert 0.0 <= ar["test"]["recall@20"] <= 1.0 and ar["mlflow_run_id"]
    assert ar["promoted"] and ar["champion"] == ar["version"] == "1"  # the first is the champion
    [mat] = [e.materialization for e in result.get_asset_materialization_events()
             if e.asset_key.to_user_string() == "alignrec_model"]
    assert "| challenger | v1 |" in mat.metadata["promotion"].value
    zs = result.output_for_node("zero_shot_eval")["results"]
    assert {r["features"] for r in zs} >= {"raw:text", "raw:image", "raw:tags", "raw:concat", "stage1"}

    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    run = client.get_run(ar["mlflow_run_id"])
    fingerprint = result.output_for_node("dataset")["fingerprint"]
    assert ar["data_fingerprint"] == fingerprint
    assert client.get_model_version("alignrec-synthetic", "1").tags["data_fingerprint"] == fingerprint
    assert "valid/recall_at_20" in run.data.metrics
    stage1 = result.output_for_node("stage1_features")
    import mlflow
    import pandas as pd

    enc = mlflow.pyfunc.load_model(f"runs:/{stage1['mlflow_run_id']}/encoder")
    assert enc.predict(pd.DataFrame({"item": [0, 3]})).shape[0] == 2
    s1_run = client.get_run(stage1["mlflow_run_id"])
    assert "epoch/loss" in s1_run.data.metrics
    # The pretext check and the choice of stage 2's features are never silent: MLflow,
    # the asset's metadata and choice.json all state them.
    assert "pretext/mim/model" in s1_run.data.metrics and "pretext/flagged" in s1_run.data.metrics
    assert s1_run.data.tags["pretext_flagged"]
    assert s1_run.data.tags["stage2_features"] == stage1["stage2_features"]
    meta = result.asset_materializations_for_node("stage1_features")[0].metadata
    assert meta["stage2_features"].value == stage1["stage2_features"]
    assert f"Rule: {RULE}" in meta["choice"].value
    assert "interp." in meta["pretext_check"].value
    import json
    from pathlib import Path

    choice = json.loads(Path(stage1["features"]).with_name("choice.json").read_text())
    assert choice["chosen"] == stage1["stage2_features"]
    # and beside the features, what decided them, which the benchmark keys AlignRec's runs by
    import numpy as np

    from alignrec.features.provenance import content_source, sidecar

    assert json.loads(sidecar(stage1["features"]).read_text())["chosen"] == choice["chosen"]
    assert content_source(stage1["features"], np.load(stage1["features"]))
    versions = client.search_model_versions("name='alignrec-synthetic'")
    assert [v.run_id for v in versions] == [ar["mlflow_run_id"]]
