"""The ``data`` group: raw tables read from a dataset's files, then the canonical tables.

Both are partitioned by dataset and guarded by blocking Great Expectations checks,
so nothing downstream runs on data that failed validation.
"""


import dagster as dg

from orchestration.partitions import dataset_partitions

GROUP = "data"


def _outcome_result(outcome, extra: dict | None = None) -> dg.AssetCheckResult:
    metadata = {
        "expectations": outcome.evaluated,
        "failed": len(outcome.failed),
        "details": dg.MetadataValue.md(outcome.as_markdown()),
        **(extra or {}),
    }
    return dg.AssetCheckResult(
        passed=outcome.success,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata=metadata,
    )


@dg.asset(
    group_name=GROUP,
    partitions_def=dataset_partitions,
    description="A dataset's files read and checked by its YAML spec, before filtering and splitting.",
    kinds={"pandas", "parquet"},
)
def raw_data(context: dg.AssetExecutionContext) -> dict:
    from alignrec.data.prepare import RAW_DIR, ensure_generated, fingerprint, write_raw
    from alignrec.data.readers import read_raw
    from alignrec.data.registry import get_spec
    from orchestration.paths import dataset_folder

    name = context.partition_key
    spec = get_spec(name)
    ensure_generated(spec)
    raw = read_raw(spec)
    folder = dataset_folder(context, name) / RAW_DIR
    write_raw(raw, folder)
    context.add_output_metadata(
        {
            "interactions": len(raw.interactions),
            "users": int(raw.interactions["user_id"].nunique()),
            "items": len(raw.items),
            "features": ", ".join(f"{m} {a.shape[1]}-d" for m, (_, a) in raw.features.items()) or "none",
            "fallbacks": dg.MetadataValue.json(dict(raw.fallbacks)),
            "folder": dg.MetadataValue.path(str(folder)),
        }
    )
    return {"name": name, "folder": str(folder), "fingerprint": fingerprint(spec)}


@dg.asset_check(asset=raw_data, blocking=True, partitions_def=dataset_partitions,
                description="Raw ids are present and non-empty; shipped split labels are valid.")
def raw_interactions_valid(context: dg.AssetCheckExecutionContext, raw_data: dict) -> dg.AssetCheckResult:
    import pandas as pd

    from orchestration.validation import raw_interactions_suite, run_suite

    frame = pd.read_parquet(f"{raw_data['folder']}/interactions.parquet")
    outcome = run_suite(f"raw_interactions-{raw_data['name']}", *raw_interactions_suite(frame))
    return _outcome_result(outcome, {"rows": len(frame)})


@dg.asset(
    group_name=GROUP,
    partitions_def=dataset_partitions,
    description="Canonical tables: 5-core where needed, user/item indices, the train/valid/test split, "
    "item text and images, one matrix per precomputed modality.",
    kinds={"pandas", "parquet"},
)
def dataset(context: dg.AssetExecutionContext, raw_data: dict) -> dict:
    from pathlib import Path

    from alignrec.data.prepare import build_dataset, read_raw_tables, write_dataset
    from alignrec.data.registry import get_spec
    from orchestration.paths import dataset_folder

    name = context.partition_key
    spec = get_spec(name)
    ds = build_dataset(read_raw_tables(Path(raw_data["folder"]), spec), spec)
    folder = dataset_folder(context, name) / "tables"
    write_dataset(ds, folder, raw_data["fingerprint"])
    summary = ds.summary()
    context.add_output_metadata(
        {
            **{k: dg.MetadataValue.int(v) for k, v in summary.items()},
            "split_method": ds.meta["split_method"],
            "texts": ds.meta["texts"],
            "images": ds.meta["images"],
            "features": dg.MetadataValue.json(ds.meta["features"]),
            "fallbacks": dg.MetadataValue.json(ds.meta["fallbacks"]),
            "folder": dg.MetadataValue.path(str(folder)),
        }
    )
    return {"name": name, "folder": str(folder), "fingerprint": raw_data["fingerprint"], **summary}


def _load(ref: dict):
    from alignrec.data.dataset import read_dataset

    return read_dataset(ref["folder"], ref["name"])


@dg.asset_check(asset=dataset, blocking=True, partitions_def=dataset_partitions,
                description="Ids in range, valid split labels, no repeated pair within a split, "
                "no validation/test pair in train, every evaluated user in train.")
def interactions_valid(dataset: dict) -> dg.AssetCheckResult:
    from orchestration.validation import canonical_interactions_suite, run_suite

    ds = _load(dataset)
    frame, exps = canonical_interactions_suite(ds.interactions, ds.n_users, ds.n_items)
    return _outcome_result(run_suite(f"interactions-{ds.name}", frame, exps))


@dg.asset_check(asset=dataset, blocking=True, partitions_def=dataset_partitions,
                description="Every feature matrix is finite with one row per item.")
def features_valid(dataset: dict) -> dg.AssetCheckResult:
    from orchestration.validation import features_suite, run_suite

    ds = _load(dataset)
    frame, exps = features_suite(ds.features, ds.n_items)
    return _outcome_result(run_suite(f"features-{ds.name}", frame, exps),
                           {"modalities": ", ".join(ds.features) or "none"})


@dg.asset_check(asset=dataset, blocking=True, partitions_def=dataset_partitions,
                description="Every item image decodes.")
def images_decode(dataset: dict) -> dg.AssetCheckResult:
    from orchestration.validation import images_suite, run_suite

    ds = _load(dataset)
    frame, exps = images_suite(ds.items)
    return _outcome_result(run_suite(f"images-{ds.name}", frame, exps), {"images": len(frame)})


assets = [raw_data, dataset]
checks = [raw_interactions_valid, interactions_valid, features_valid, images_decode]
