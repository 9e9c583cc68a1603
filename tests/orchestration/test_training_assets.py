"""Training assets: data-parallel training, and no registration of an unsound model."""

from __future__ import annotations

import dagster as dg
import pytest

pytestmark = pytest.mark.slow


def test_training_asset_trains_in_two_processes(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    from orchestration.assets import data, training
    from orchestration.resources import ComputeResource, MLflowResource

    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [*data.assets, *(a for a in training.assets if a.key.path == ["bpr_model"])],
            partition_key="synthetic", instance=instance,
            resources={"mlflow": MLflowResource(),
                       "compute": ComputeResource(device="cpu", threads=1, processes=2)},
            run_config={"ops": {"bpr_model": {"config": {"sets": {"epochs": "2"}}}}},
        )  # fmt: skip
    assert result.success
    record = result.output_for_node("bpr_model")
    assert record["processes"] == 2 and record["epochs_run"] == 2 and record["mlflow_run_id"]

    from mlflow.tracking import MlflowClient

    run = MlflowClient(uri).get_run(record["mlflow_run_id"])
    assert run.data.tags["dagster_run"] == result.run_id and run.info.status == "FINISHED"
    assert "valid/recall_at_20" in run.data.metrics and "test/recall_at_20" in run.data.metrics
    experiment = MlflowClient(uri).get_experiment(run.info.experiment_id)
    assert len(MlflowClient(uri).search_runs([experiment.experiment_id])) == 1  # rank 0's only


def test_an_unsound_alignrec_model_is_not_registered(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    import alignrec.training.checks
    from alignrec.data import load_dataset
    from orchestration.assets.training import AlignRecConfig, alignrec_model
    from orchestration.resources import ComputeResource, MLflowResource

    fault = "model.pt: item_emb has non-finite values"
    monkeypatch.setattr(alignrec.training.checks, "run_problems", lambda *a: [fault])
    summary = load_dataset("synthetic").summary()
    context = dg.build_asset_context(partition_key="synthetic")
    config = AlignRecConfig(features="raw:concat", sets={"epochs": "1"})
    with pytest.raises(dg.Failure, match="not registered") as failure:
        alignrec_model(context=context, config=config, dataset=summary, stage1_features={},
                       mlflow=MLflowResource(), compute=ComputeResource(device="cpu", threads=1))
    assert fault in failure.value.description

    from mlflow.tracking import MlflowClient

    assert MlflowClient(uri, registry_uri=uri).search_registered_models() == []


def test_stage1_runs_at_the_compute_resources_threads_and_device(tmp_path, monkeypatch):
    """Float results depend on torch's thread count: stage 1 follows ALIGNREC_THREADS like
    the training assets (it used to keep the process default), and ALIGNREC_DEVICE. The
    ``meta`` device is only handed on here, never computed on."""
    import torch

    import alignrec.features.cache
    import alignrec.features.pipeline
    from alignrec.data import load_dataset
    from orchestration.assets.features import Stage1Config, encoder_outputs, stage1_features
    from orchestration.resources import ComputeResource, MLflowResource

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    seen = []

    def record(step):
        def call(*args, **kwargs):
            seen.append((step, torch.get_num_threads(), str(kwargs.get("device"))))
            raise RuntimeError("stop here")

        return call

    data = load_dataset("synthetic")
    ref = {"name": data.name, "folder": data.meta["folder"]}
    compute = ComputeResource(device="meta", threads=1)
    context = dg.build_asset_context(partition_key="synthetic")
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        monkeypatch.setattr(alignrec.features.cache, "extract", record("extract"))
        with pytest.raises(RuntimeError, match="stop here"):
            encoder_outputs(context=context, dataset=ref, compute=compute)
        torch.set_num_threads(2)
        # stage 1 runs through the library's pretrain_features, which holds its own names
        monkeypatch.setattr(alignrec.features.pipeline, "extract", lambda *a, **k: None)
        monkeypatch.setattr(alignrec.features.pipeline, "pretrain_fusion", record("pretrain"))
        with pytest.raises(RuntimeError, match="stop here"):
            stage1_features(context=context, config=Stage1Config(), dataset=ref,
                            encoder_outputs={"cache_dir": "unused"}, mlflow=MLflowResource(),
                            compute=compute)  # fmt: skip
    finally:
        torch.set_num_threads(before)
    assert seen == [("extract", 1, "meta"), ("pretrain", 1, "meta")]
