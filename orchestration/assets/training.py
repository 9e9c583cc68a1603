"""The ``training`` group: one configurable, partitioned asset per baseline model.

Each asset trains through the library's ``run_train`` (the code path of ``alignrec
train``), logs an MLflow run with the parameters, per-epoch metrics and
``metrics.json``, and shows the run id and headline metrics as metadata.
"""

import dagster as dg

from orchestration.partitions import dataset_partitions
from orchestration.resources import ComputeResource, MLflowResource

GROUP = "training"
BASELINES = ("bpr", "lightgcn")


class TrainConfig(dg.Config):
    """Run-time knobs of a training asset; defaults come from the library's dataclasses."""

    seed: int = 0
    sets: dict[str, str] = {}  # config overrides, as ``alignrec train --set key=value``
    grid: dict[str, list[str]] = {}  # searched on validation, as ``--grid key=v1,v2``


def headline(record: dict) -> dict:
    """The metadata every training asset shows."""
    meta = {
        "best_epoch": record["best_epoch"],
        "epochs_run": record["epochs_run"],
        "train_seconds": dg.MetadataValue.float(float(record["train_seconds"])),
    }
    for split in ("valid", "test"):
        for key in ("recall@20", "ndcg@20", "recall@10", "ndcg@10"):
            value = (record.get(split) or {}).get(key)
            if value is not None:
                meta[f"{split}/{key}"] = dg.MetadataValue.float(float(value))
    return meta


def run_args(config: TrainConfig) -> dict:
    """``run_train``'s seed, ``--set`` and ``--grid`` arguments from an asset's config."""
    return {
        "seed": config.seed,
        "sets": [f"{k}={v}" for k, v in config.sets.items()],
        "grids": [f"{k}={','.join(v)}" for k, v in config.grid.items()],
    }


def train_run(context, config: TrainConfig, mlflow: MLflowResource, compute: ComputeResource,
              model: str, out, dataset: dict, tags: dict[str, str] | None = None,
              **kwargs) -> dict:
    """``run_train`` for a training asset on the tables the ``dataset`` asset wrote, logging
    one MLflow run per grid point (tagged with the Dagster run, the DVC stage, the run folder
    and ``tags``): in this process, or data-parallel in ``compute.processes`` processes
    (rank 0's record comes back). ``kwargs``: ``features``, ``export``."""
    from alignrec.commands.train import run_train
    from alignrec.training.distributed import launch
    from orchestration.paths import encoder_cache

    name = context.partition_key
    tags = {"model": model, "dataset": name, "dagster_run": context.run_id,
            **run_tags(context, out), **(tags or {})}
    loggers = mlflow.loggers(f"train-{name}", f"{model}-s{config.seed}", tags)
    return launch(compute.processes, run_train, model, name, out, **run_args(config),
                  device=compute.torch_device(), threads=compute.threads or None, quiet=True,
                  logger_factory=loggers, tables=dataset.get("folder"),
                  cache_dir=encoder_cache(context, name), **kwargs)


def run_tags(context, out) -> dict[str, str]:
    """What ties a training asset's MLflow run and registry version to its files and run:
    the run folder and, for a run of ``dvc repro``, its DVC stage."""
    from orchestration.paths import dvc_stage

    stage = dvc_stage(context)
    return {"run_folder": str(out), **({"dvc_stage": stage} if stage else {})}


def run_dir(dataset: str, model: str, root=None):
    """``<root>/runs/<dataset>/<model>``; ``root`` defaults to ``ALIGNREC_HOME`` (where a DVC
    stage writes; an asset passes :func:`orchestration.paths.output_root`)."""
    from pathlib import Path

    from alignrec.paths import artifacts_root

    return Path(root if root is not None else artifacts_root()) / "runs" / dataset / model


def make_training_asset(model: str) -> dg.AssetsDefinition:
    @dg.asset(
        name=f"{model}_model",
        group_name=GROUP,
        partitions_def=dataset_partitions,
        kinds={"pytorch", "mlflow"},
        description=f"{model} trained on the dataset: early-stopped on valid recall@20, tested once.",
    )
    def _train(
        context: dg.AssetExecutionContext,
        config: TrainConfig,
        dataset: dict,
        mlflow: MLflowResource,
        compute: ComputeResource,
    ) -> dict:
        from orchestration import provenance
        from orchestration.paths import output_root

        name = context.partition_key
        out = run_dir(name, model, output_root(context))
        record = train_run(context, config, mlflow, compute, model, out, dataset)
        provenance.record(context, f"{model}_model", name, out,
                          mlflow_run_id=record.get("mlflow_run_id"))
        context.add_output_metadata(
            {**headline(record), "mlflow_run_id": record.get("mlflow_run_id", ""),
             "folder": dg.MetadataValue.path(str(out))}
        )
        return {**record, "folder": str(out), "tables": dataset.get("folder")}

    return _train


assets = [make_training_asset(m) for m in BASELINES]


class AlignRecConfig(TrainConfig):
    """Stage-2 knobs: ``features`` is ``stage1`` (the upstream asset) or any feature-set name
    ``alignrec train --features`` accepts (``raw:concat`` for the raw-features ablation)."""

    features: str = "stage1"


def registered_name(dataset: str) -> str:
    """The MLflow registry name of a dataset's AlignRec models."""
    return f"alignrec-{dataset}"


@dg.asset(
    group_name=GROUP,
    partitions_def=dataset_partitions,
    kinds={"pytorch", "mlflow"},
    description="AlignRec stage 2 on the stage-1 features: early-stopped on valid recall@20, "
    "tested once, logged to MLflow and registered as `alignrec-<dataset>` (the challenger; "
    "the champion when its valid recall@20 beats the champion's).",
)
def alignrec_model(
    context: dg.AssetExecutionContext,
    config: AlignRecConfig,
    dataset: dict,
    stage1_features: dict,
    mlflow: MLflowResource,
    compute: ComputeResource,
) -> dict:
    from orchestration.paths import output_root

    name = context.partition_key
    if config.features == "stage1":
        if stage1_features.get("skipped"):
            context.add_output_metadata({"skipped": stage1_features["skipped"]})
            return {"name": name, "skipped": stage1_features["skipped"]}
        features = stage1_features["features"]
    else:
        features = config.features
    out = run_dir(name, "alignrec", output_root(context))
    record = train_run(context, config, mlflow, compute, "alignrec", out, dataset,
                       tags={"features": config.features}, features=features, export=True)
    from alignrec.registry import register_recommender
    from alignrec.training.checks import run_problems

    problems = run_problems(out, dataset["users"], dataset["items"])
    if problems:  # never registered, so never served: the champion stays
        raise dg.Failure("the trained model is unsound, not registered:\n" + "\n".join(problems),
                         metadata={"folder": dg.MetadataValue.path(str(out))})
    decision = register_recommender(out, record, registered_name(name), tracking_uri=mlflow.uri())
    tag_version(context, mlflow.uri(), registered_name(name), decision.challenger_version, out)
    from orchestration import provenance

    provenance.record(context, "alignrec_model", name, out, mlflow_run_id=record["mlflow_run_id"],
                      registered_model=registered_name(name), version=decision.challenger_version)
    context.add_output_metadata(
        {**headline(record), "mlflow_run_id": record["mlflow_run_id"],
         "registered_model": registered_name(name), "version": decision.challenger_version,
         "promoted": decision.accepted, "champion": str(decision.serving_version),
         "promotion": dg.MetadataValue.md(decision.markdown()),
         "features": config.features, "folder": dg.MetadataValue.path(str(out))}
    )
    return {**record, "folder": str(out), "tables": dataset.get("folder"),
            "registered_model": registered_name(name),
            "version": decision.challenger_version, "promoted": decision.accepted,
            "champion": decision.serving_version}


assets.append(alignrec_model)


def tag_version(context, tracking_uri: str, name: str, version: str, out) -> None:
    """Tag a registered version with the Dagster run that made it, its run folder and, from
    ``dvc repro``, its DVC stage, so that a version, its files and its run can be matched."""
    from alignrec.registry import registry_client

    client = registry_client(tracking_uri)
    for key, value in {"dagster_run": context.run_id, **run_tags(context, out)}.items():
        client.set_model_version_tag(name, str(version), key, value)


def make_model_check(asset: dg.AssetsDefinition) -> dg.AssetChecksDefinition:
    """A blocking check of a training asset's run folder (alignrec.training.checks)."""
    name = asset.key.path[-1]

    @dg.asset_check(asset=asset, name=f"{name}_valid", blocking=True,
                    partitions_def=dataset_partitions,
                    description="Epochs add up, every valid/test metric lies in [0, 1], every "
                    "weight is finite, an exported recommender has one row per user and item.")
    def _check(context: dg.AssetCheckExecutionContext, record: dict) -> dg.AssetCheckResult:
        import json
        from pathlib import Path

        from alignrec.paths import dataset_tables
        from alignrec.training.checks import run_problems

        if record.get("skipped"):
            return dg.AssetCheckResult(passed=True, metadata={"skipped": record["skipped"]})
        tables = record.get("tables") or dataset_tables(context.partition_key)  # the run's own
        meta = json.loads((Path(tables) / "meta.json").read_text())
        problems = run_problems(Path(record["folder"]), int(meta["users"]), int(meta["items"]))
        return dg.AssetCheckResult(
            passed=not problems,
            metadata={"problems": dg.MetadataValue.md("\n".join(f"- {p}" for p in problems) or "none")},
        )

    return _check


# alignrec_model runs the same checks itself, before it registers the model.
checks = [make_model_check(a) for a in assets if a is not alignrec_model]
