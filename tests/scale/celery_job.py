"""The benchmark (bpr and lightgcn, one step per model) and the two baseline training assets
on the synthetic partition, on the executor ALIGNREC_EXECUTOR selects in
orchestration.definitions; importable by the Celery workers, which rebuild the job from
``job`` (see test_celery.py).

Its stand-in ``stage1_features`` (tests/benchmark/parallel_job.py) writes random features under
``ALIGNREC_HOME``; MLflow logs to ``MLFLOW_TRACKING_URI``; the test sets both."""

import os

import dagster as dg

from orchestration.assets import benchmark, data, training
from orchestration.definitions import _executor
from orchestration.partitions import dataset_partitions
from orchestration.resources import ComputeResource, MLflowResource
from tests.benchmark.parallel_job import stage1_features

CONFIG = {
    "ops": {
        "benchmark": {"config": {"models": ["bpr", "lightgcn"], "seeds": 2,
                                 "sets": {"epochs": "2", "batch_size": "64"}}},
        "bpr_model": {"config": {"sets": {"epochs": "2"}}},
        "lightgcn_model": {"config": {"sets": {"epochs": "2"}}},
    }
}  # fmt: skip


def job() -> dg.JobDefinition:
    baselines = [a for a in training.assets if a.key.path[-1] in ("bpr_model", "lightgcn_model")]
    defs = dg.Definitions(
        assets=[*data.assets, stage1_features, *baselines, benchmark.benchmark],
        resources={
            "mlflow": MLflowResource(tracking_uri=os.environ["MLFLOW_TRACKING_URI"]),
            "compute": ComputeResource(device="cpu", threads=1),
        },
        jobs=[dg.define_asset_job("scale", partitions_def=dataset_partitions)],
        executor=_executor(),
    )
    return defs.resolve_job_def("scale")
