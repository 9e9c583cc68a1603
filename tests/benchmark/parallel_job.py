"""A job with the ``benchmark`` asset on the synthetic partition and the multiprocess executor,
importable by the step processes that ``dg.reconstructable`` starts (see test_asset.py).

Its stand-in ``stage1_features`` writes random features under ``ALIGNREC_HOME``; MLflow logs to
``MLFLOW_TRACKING_URI``; both are set by the test before the run."""

import os

import dagster as dg
import numpy as np

from orchestration.assets import benchmark, data
from orchestration.partitions import dataset_partitions
from orchestration.resources import ComputeResource, MLflowResource


@dg.asset(name="stage1_features", partitions_def=dataset_partitions)
def stage1_features(dataset: dict) -> dict:
    path = os.path.join(os.environ["ALIGNREC_HOME"], "stand_in_features.npy")
    rng = np.random.default_rng(0)
    np.save(path, rng.standard_normal((dataset["items"], 8), dtype=np.float32))
    return {"name": dataset["name"], "features": path}


def job() -> dg.JobDefinition:
    defs = dg.Definitions(
        assets=[*data.assets, stage1_features, benchmark.benchmark],
        resources={
            "mlflow": MLflowResource(tracking_uri=os.environ["MLFLOW_TRACKING_URI"]),
            "compute": ComputeResource(device="cpu", threads=1),
        },
        jobs=[dg.define_asset_job("parallel", partitions_def=dataset_partitions)],
        executor=dg.multiprocess_executor,
    )
    return defs.resolve_job_def("parallel")
