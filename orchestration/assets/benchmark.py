"""The ``benchmark`` group: every model on the dataset, validation-selected, over seeds.

The asset is a graph with one step per model, so that models train in parallel on
whatever executor the deployment runs (``ALIGNREC_EXECUTOR=multiprocess`` locally, or a
k8s/celery executor), and in turn under the default in-process executor:

- ``benchmark_plan`` checks the config, opens the MLflow summary run in the experiment
  ``benchmark-<dataset>`` and fans out one dynamic step per model;
- ``benchmark_model`` trains that model's grid and seeds with
  :func:`alignrec.benchmark.run_benchmark` (the code path of ``alignrec benchmark``)
  into the run cache ``runs/`` of the benchmark folder: ``results/benchmark/<dataset>/<profile>/``
  (the repository keeps it, so every run, in any checkout, resumes and reuses what is there),
  or ``artifacts/benchmark/<dataset>/`` for ``dvc repro`` (the folder ``dvc.yaml`` declares);
  each training run an MLflow run nested under the summary;
- ``benchmark_report`` collects them, reuses every finished run, writes the report, logs
  it to the summary run and shows its table as metadata.

AlignRec reads the stage-1 features. Finished runs in that folder are reused, so a rerun of
the DVC stage, or a re-execution of a Dagster run, resumes.
"""

import time

import dagster as dg

from orchestration.partitions import dataset_partitions
from orchestration.resources import ComputeResource, MLflowResource

GROUP = "benchmark"


class BenchmarkConfig(dg.Config):
    """The profile, which models, how many seeds, and config keys set for every run
    (``{"epochs": "100"}``)."""

    # quick (one seed, pinned points) or full (grids, 3 seeds); empty: $ALIGNREC_BENCHMARK
    # (what `BENCHMARK=full make pipeline` sets), else quick
    profile: str = ""
    models: list[str] = []  # registered model names; empty: every model
    seeds: int = 0  # seed 0 searches the grid, seeds 1.. retrain its winner; 0: the profile's
    sets: dict[str, str] = {}  # as ``alignrec benchmark --set key=value``
    # model -> key -> values, replacing those keys in the model's grid (``--grid MODEL.KEY=V1,V2``)
    grids: dict[str, dict[str, list[str]]] = {}
    # train nothing: report the runs already finished, listing the rest as skipped
    # (``alignrec benchmark --cached-only``)
    cached_only: bool = False


def _read(dataset: dict):
    from alignrec.data.dataset import read_dataset

    return read_dataset(dataset["folder"], dataset["name"])


def _tracking(context, dataset: str, mlflow: MLflowResource, summary_run_id: str | None = None):
    from alignrec.benchmark.tracking import BenchmarkTracking

    summary = mlflow.attach(summary_run_id) if summary_run_id else None
    return BenchmarkTracking(dataset, mlflow.logger, {"dagster_run": context.run_id}, summary)


def _run(
    plan: dict,
    dataset: dict,
    models: list[str],
    tracking,
    compute: ComputeResource,
    report: bool = False,
):
    """:func:`run_benchmark` of ``models`` with the plan's settings; no report written.

    ``report``: the call that gathers every model's runs for the report; with the profile's
    seeds it adds the later seeds every model has finished in the folder."""
    from alignrec.benchmark import run_benchmark

    return run_benchmark(
        _read(dataset),
        models,
        plan["seeds"],
        features=plan["features"],
        threads=compute.threads or None,
        device=compute.torch_device(),
        logger_factory=tracking.logger_factory,
        progress=False,
        grids=plan["grids"],
        overrides=plan["sets"],
        skip=plan["skip"],
        write=False,
        cached_only=plan["cached_only"],
        out=plan["out"],
        reuse_from=plan.get("reuse_from"),
        cache_dir=plan["cache_dir"],
        profile=plan["profile"],
        finished_seeds=report and plan.get("finished_seeds", False),
    )


@dg.op(out={"plan": dg.Out(dict), "models": dg.DynamicOut(dict)})
def benchmark_plan(
    context: dg.OpExecutionContext,
    config: BenchmarkConfig,
    dataset: dict,
    stage1_features: dict,
    mlflow: MLflowResource,
):
    """Check the models and settings, open the summary run, fan out one step per model."""
    from alignrec.benchmark import OURS
    from alignrec.benchmark.grids import get_profile, with_grid_changes
    from alignrec.benchmark.runner import default_out, plan_models
    from orchestration.paths import dvc_stage, encoder_cache, output_root

    if config.seeds < 0:
        raise dg.Failure(f"benchmark: seeds must be >= 1 (0: the profile's), got {config.seeds}")
    profile = get_profile(config.profile or None)
    seeds = config.seeds or profile.seeds
    grids = with_grid_changes(config.grids, profile.grids)
    # A DVC run owns its outputs under the artifacts folder; it copies the runs the repository
    # keeps in results/ when their key (code, configuration, data, seed) matches.
    home = default_out(dataset["name"], profile.name)
    out = output_root(context) / "benchmark" / dataset["name"] if dvc_stage(context) else home
    models = list(plan_models(config.models or None, dict(config.sets), grids))
    skip, features = {}, None
    if stage1_features.get("skipped"):
        skip[OURS] = f"stage 1 was skipped: {stage1_features['skipped']}"
    else:
        features = stage1_features["features"]
    tracking = _tracking(context, dataset["name"], mlflow)
    plan = {
        "models": models,
        "profile": profile.name,
        "seeds": seeds,
        "finished_seeds": not config.seeds,  # the profile's: the report adds finished ones
        "sets": dict(config.sets),
        "grids": grids,
        "features": features,
        "skip": skip,
        "cached_only": config.cached_only,
        "out": str(out),
        "reuse_from": str(home) if out != home else None,
        "cache_dir": str(encoder_cache(context, dataset["name"])),
        "summary_run_id": tracking.run_id,
        "started": time.time(),
    }
    context.log.info(
        f"benchmark {dataset['name']} ({profile.name}): {len(models)} models, {seeds} seeds, "
        f"into {out}"
    )
    yield dg.Output(plan, "plan")
    for m in models:
        if m not in skip:
            yield dg.DynamicOutput({**plan, "model": m}, output_name="models", mapping_key=m)


@dg.op
def benchmark_model(
    context: dg.OpExecutionContext,
    item: dict,
    dataset: dict,
    mlflow: MLflowResource,
    compute: ComputeResource,
) -> dict:
    """One model's grid (seed 0) and retrains (seeds 1..), into the shared run cache."""
    from alignrec.benchmark.runner import run_line

    model = item["model"]
    tracking = _tracking(context, dataset["name"], mlflow, item["summary_run_id"])
    result = _run(item, dataset, [model], tracking, compute)
    runs = result.models.get(model)
    if runs is None:
        context.log.warning(f"{model} skipped: {result.skipped.get(model)}")
        return {"model": model, "reused": [], "skipped": result.skipped.get(model)}
    for record, reused in zip(runs.records, runs.reused, strict=True):
        context.log.info(run_line(model, record, reused))
    return {"model": model, "reused": list(runs.reused), "skipped": None}


@dg.op
def benchmark_report(
    context: dg.OpExecutionContext,
    done: list[dict],
    plan: dict,
    dataset: dict,
    mlflow: MLflowResource,
    compute: ComputeResource,
) -> dict:
    """Every model's runs (all finished by now), the report, the summary run."""
    from alignrec.benchmark.report import results_table, write_report

    tracking = _tracking(context, dataset["name"], mlflow, plan["summary_run_id"])
    try:
        result = _run(plan, dataset, plan["models"], tracking, compute, report=True)
        for step in done:  # trained in the model steps, not reused from an earlier benchmark
            if step["model"] in result.models:
                runs = result.models[step["model"]]
                runs.reused[: len(step["reused"])] = step["reused"]
        result.wall_seconds = time.time() - plan["started"]
        write_report(result)
    except BaseException:
        tracking.fail()
        raise
    tracking.log_report(result)
    from orchestration import provenance

    provenance.record(context, "benchmark", dataset["name"], result.out,
                      mlflow_run_id=tracking.run_id)
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
            # every run's training time, reused runs and grid points included (None: not known)
            "compute_seconds": dg.MetadataValue.float(result.report["compute_seconds"])
            if result.report["compute_seconds"] is not None
            else dg.MetadataValue.null(),
        }
    )
    return {
        **result.report,
        "folder": str(result.out),
        "report_md": str(result.report_md),
        "mlflow_run_id": tracking.run_id,
    }


@dg.failure_hook(required_resource_keys={"mlflow"})
def close_summary_run(context: dg.HookContext) -> None:
    """A failed step leaves no summary run open: the run's summary is marked FAILED."""
    from mlflow.tracking import MlflowClient

    from alignrec.benchmark.tracking import SUMMARY_TAGS

    client = MlflowClient(tracking_uri=context.resources.mlflow.uri())
    tags = " and ".join(
        f"tags.{k} = '{v}'" for k, v in {**SUMMARY_TAGS, "dagster_run": context.run_id}.items()
    )
    for exp in client.search_experiments(filter_string="name LIKE 'benchmark-%'"):
        for run in client.search_runs(
            [exp.experiment_id], f"{tags} and attributes.status = 'RUNNING'"
        ):
            client.set_terminated(run.info.run_id, status="FAILED")


@dg.config_mapping
def _config(config: BenchmarkConfig) -> dict:
    """The asset's config (``ops: {benchmark: {config: ...}}``) is the plan step's."""
    return {
        "benchmark_plan": {
            "config": {
                "profile": config.profile,
                "models": config.models,
                "seeds": config.seeds,
                "sets": config.sets,
                "grids": config.grids,
                "cached_only": config.cached_only,
            }
        }
    }


@dg.graph_asset(
    group_name=GROUP,
    partitions_def=dataset_partitions,
    kinds={"pytorch", "mlflow"},
    config=_config,
    hooks={close_summary_run},
    description="Every registered model: the quick profile (one seed, each model at its pinned "
    "point) or the full one (grid selected on validation on seed 0, the winner over 3 seeds); "
    "test metrics mean ± std, AlignRec's gain and paired p-values, plots, into "
    "`results/benchmark/<dataset>/<profile>/`. One step per model: they run in parallel under a "
    "multiprocess or k8s/celery executor.",
)
def benchmark(dataset: dict, stage1_features: dict) -> dict:
    plan, models = benchmark_plan(dataset, stage1_features)
    done = models.map(lambda item: benchmark_model(item, dataset))
    return benchmark_report(done.collect(), plan, dataset)


assets = [benchmark]
