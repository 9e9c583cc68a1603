"""The ``benchmark`` group: every model on the dataset, validation-selected, over seeds.

Calls :func:`alignrec.benchmark.run_benchmark` (the code path of ``alignrec
benchmark``) with AlignRec on the stage-1 features, logs each training run to the
MLflow experiment ``benchmark-<dataset>`` under a summary run holding the report,
and shows the report's table as metadata. Finished runs under
``artifacts/benchmark/<dataset>/runs/`` are reused, so a rerun resumes.
"""

import dagster as dg

from orchestration.partitions import dataset_partitions
from orchestration.resources import ComputeResource, MLflowResource

GROUP = "benchmark"


class BenchmarkConfig(dg.Config):
    """Which models, how many seeds, and config keys set for every run (``{"epochs": "100"}``)."""

    models: list[str] = []  # registered model names; empty: every model
    seeds: int = 3  # seed 0 searches the grid, seeds 1.. retrain its winner
    sets: dict[str, str] = {}  # as ``alignrec benchmark --set key=value``


@dg.asset(
    group_name=GROUP,
    partitions_def=dataset_partitions,
    kinds={"pytorch", "mlflow"},
    description="Every registered model, its grid selected on validation (seed 0), the winner "
    "over seeds; test metrics mean ± std, AlignRec's gain and paired p-values, plots.",
)
def benchmark(
    context: dg.AssetExecutionContext,
    config: BenchmarkConfig,
    dataset: dict,
    stage1_features: dict,
    mlflow: MLflowResource,
    compute: ComputeResource,
) -> dict:
    from alignrec.benchmark import OURS, run_benchmark
    from alignrec.benchmark.report import results_table
    from alignrec.benchmark.tracking import BenchmarkTracking
    from alignrec.data.dataset import read_dataset

    ds = read_dataset(dataset["folder"], dataset["name"])
    skip, features = {}, None
    if stage1_features.get("skipped"):
        skip[OURS] = f"stage 1 was skipped: {stage1_features['skipped']}"
    else:
        features = stage1_features["features"]
    device = compute.torch_device()
    tracking = BenchmarkTracking(ds.name, mlflow.logger, {"dagster_run": context.run_id})
    try:
        result = run_benchmark(
            ds,
            config.models or None,
            config.seeds,
            features=features,
            threads=compute.threads or None,
            device=device,
            logger_factory=tracking.logger_factory,
            progress=False,
            overrides=dict(config.sets),
            skip=skip,
        )
    except BaseException:
        tracking.fail()
        raise
    tracking.log_report(result)
    table = results_table(result.report)
    if result.skipped:
        table += "\n\n" + "\n".join(f"- skipped **{m}**: {r}" for m, r in result.skipped.items())
    context.add_output_metadata(
        {
            "report": dg.MetadataValue.md(table),
            "report_path": dg.MetadataValue.path(str(result.report_md)),
            "mlflow_run_id": tracking.run_id,
            "runs_trained": result.report["runs_trained"],
            "runs_reused": result.report["runs_reused"],
            "wall_seconds": dg.MetadataValue.float(result.wall_seconds),
        }
    )
    return {
        **result.report,
        "folder": str(result.out),
        "report_md": str(result.report_md),
        "mlflow_run_id": tracking.run_id,
    }


assets = [benchmark]
