"""The ``features`` group (stage 1) and the ``evaluation`` group (the three feature protocols).

``encoder_outputs`` caches what the frozen encoders make of each item; the
fusion encoder is pretrained on it into ``stage1_features``. The protocol assets
judge every feature set the dataset has, stage 1 included, before stage 2 runs.
A dataset without content (``amazon-baby``) materializes these assets as skipped,
with the reason in their metadata.
"""

import dagster as dg

from orchestration.partitions import dataset_partitions
from orchestration.resources import ComputeResource, MLflowResource

GROUP = "features"
EVAL_GROUP = "evaluation"


def _dataset(ref: dict):
    from alignrec.data.dataset import read_dataset

    return read_dataset(ref["folder"], ref["name"])


def _has_content(ds) -> bool:
    return ds.has_text or ds.has_images or bool(ds.features)


def _skipped(context, name: str, reason: str) -> dict:
    context.log.warning("%s: %s", name, reason)
    context.add_output_metadata({"skipped": reason})
    return {"name": name, "skipped": reason}


@dg.asset(
    group_name=GROUP,
    partitions_def=dataset_partitions,
    kinds={"transformers", "numpy"},
    description="Frozen MiniLM token states and EfficientNet-Lite0 patch grids per item, cached by "
    "encoder version and input hash (a rerun reuses them).",
)
def encoder_outputs(context: dg.AssetExecutionContext, dataset: dict, compute: ComputeResource) -> dict:
    from alignrec.features.cache import extract
    from orchestration.paths import encoder_cache

    device = compute.torch_device()  # caps the threads too
    ds = _dataset(dataset)
    if not _has_content(ds):
        return _skipped(context, ds.name, "the dataset has no item content (text, images or vectors)")
    cache = encoder_cache(context, ds.name)
    outputs = extract(ds, cache, progress=True, device=device)
    context.add_output_metadata(
        {
            "modalities": ", ".join(outputs.modalities) if hasattr(outputs, "modalities") else "",
            "seconds": dg.MetadataValue.json({k: round(v, 2) for k, v in outputs.seconds.items()}),
            "cache": dg.MetadataValue.path(str(cache)),
        }
    )
    return {"name": ds.name, "cache_dir": str(cache)}


class Stage1Config(dg.Config):
    """Overrides of :class:`alignrec.features.fusion.FusionConfig` (its fields document each),
    values written as in YAML (``epochs: "3"``, ``contrastive: "true"``)."""

    overrides: dict[str, str] = {}


def parse_overrides(overrides: dict[str, str]) -> dict:
    import yaml

    return {k: yaml.safe_load(v) for k, v in overrides.items()}


@dg.asset(
    group_name=GROUP,
    partitions_def=dataset_partitions,
    kinds={"pytorch", "mlflow"},
    description="Stage 1 (ICA): a fusion transformer pretrained by masked text and image modelling "
    "and modality reconstruction over the cached encoder outputs; one multimodal feature per item. "
    "A pretext-difficulty check scores its masked predictions against interpolation, and the "
    "stage-1 features compete with the raw sets on validation for stage 2 (features.npy holds "
    "the winner; the choice is in the metadata, the MLflow run and choice.json).",
)
def stage1_features(
    context: dg.AssetExecutionContext,
    config: Stage1Config,
    dataset: dict,
    encoder_outputs: dict,
    mlflow: MLflowResource,
    compute: ComputeResource,
) -> dict:
    from alignrec import io
    from alignrec.features.fusion import FusionConfig, save_fusion
    from alignrec.features.pipeline import pretrain_features
    from alignrec.features.pretext import flagged, format_pretext
    from alignrec.features.provenance import stage1_fields, write_features
    from orchestration.paths import dataset_folder

    if encoder_outputs.get("skipped"):
        return _skipped(context, dataset["name"], encoder_outputs["skipped"])
    # float results depend on the thread count: the same one everywhere (torch_device caps it)
    device = compute.torch_device()
    ds = _dataset(dataset)
    fusion_cfg = FusionConfig.from_dict(parse_overrides(config.overrides))
    folder = dataset_folder(context, ds.name) / "stage1"
    with mlflow.logger(f"stage1-{ds.name}", "fusion-pretraining",
                       {"dataset": ds.name, "dagster_run": context.run_id}) as lg:
        lg.log_params({f"fusion.{k}": v for k, v in fusion_cfg.to_dict().items()})
        # pretraining, the pretext check (logged to lg) and the validation choice for stage 2
        res = pretrain_features(ds, encoder_outputs["cache_dir"], fusion_cfg, logger=lg,
                                progress=True, device=device)
        result, features, pretext, choice = res.train, res.features, res.pretext, res.choice
        bad = flagged(pretext)
        lg.set_tags({"pretext_flagged": ", ".join(bad) or "none"})
        if bad:
            context.log.warning("stage 1 does not beat interpolation on %s", ", ".join(bad))
        context.log.info(choice.summary())
        lg.set_tags({"stage2_features": choice.chosen})
        lg.log_metrics(choice.metrics())
        save_fusion(result.model, folder / "encoder")
        io.write_npy(folder / "stage1.npy", features)
        io.write_json(folder / "choice.json", {**choice.to_dict(),
                                               "pretext": [p.to_dict() for p in pretext]})
        # beside it, what decided it: the benchmark keys AlignRec's runs by that, so a run
        # made on another CPU (other last bits) is still found
        write_features(folder / "features.npy", res.stage2_features,
                       stage1_fields(ds, res.outputs, fusion_cfg.to_dict()), choice.chosen)
        io.write_json(folder / "history.json", result.history)
        lg.log_metrics({"time/pretrain_seconds": result.seconds})
        lg.log_artifact(folder / "history.json")
        lg.log_artifact(folder / "choice.json")
        run_id = lg.run_id
    from alignrec.serving import log_fusion_encoder

    log_fusion_encoder(folder / "encoder", folder / "stage1.npy", run_id, tracking_uri=mlflow.uri())
    from orchestration import provenance

    provenance.record(context, "stage1_features", ds.name, folder, mlflow_run_id=run_id)
    context.add_output_metadata(
        {
            "shape": str(features.shape),
            "stage2_features": choice.chosen,
            "choice": dg.MetadataValue.md(choice.table()),
            "pretext_check": dg.MetadataValue.md(f"```\n{format_pretext(pretext)}\n```"),
            "pretext_flagged": ", ".join(bad) or "none",
            "pretrain_seconds": dg.MetadataValue.float(result.seconds),
            "final_loss": dg.MetadataValue.float(float(result.history[-1].get("epoch/loss", float("nan"))))
            if result.history else dg.MetadataValue.float(float("nan")),
            "mlflow_run_id": run_id,
            "folder": dg.MetadataValue.path(str(folder)),
        }
    )
    return {"name": ds.name, "features": str(folder / "features.npy"),
            "stage1": str(folder / "stage1.npy"), "encoder": str(folder / "encoder"),
            "stage2_features": choice.chosen, "items": ds.n_items, "mlflow_run_id": run_id}


@dg.asset_check(asset=stage1_features, blocking=True, partitions_def=dataset_partitions,
                description="Stage-1 features are finite, one row per item, and not collapsed.")
def stage1_features_valid(stage1_features: dict) -> dg.AssetCheckResult:
    import numpy as np

    if stage1_features.get("skipped"):
        return dg.AssetCheckResult(passed=True, metadata={"skipped": stage1_features["skipped"]})
    feats = np.load(stage1_features["features"])
    spread = float(feats.std(axis=0).mean())
    ok_shape = feats.shape[0] == stage1_features["items"]
    finite = bool(np.isfinite(feats).all())
    return dg.AssetCheckResult(
        passed=ok_shape and finite and spread > 1e-6,
        metadata={"rows": feats.shape[0], "items": stage1_features["items"], "finite": finite,
                  "mean_feature_std": spread},
    )


def feature_set_names(outputs, stage1: dict) -> list[str]:
    """Every feature set the protocols compare: each raw modality, their concatenation, stage 1."""
    from alignrec.features.sets import raw_parts

    parts = raw_parts(outputs)
    names = [f"raw:{p.removeprefix('vec:')}" for p in parts]
    if len(parts) > 1:
        names.append("raw:concat")
    if not stage1.get("skipped"):
        names.append(f"fusion:{stage1['encoder']}")
    return names


def _label(name: str) -> str:
    return "stage1" if name.startswith("fusion:") else name


def _protocol_table(results: list[dict], protocol: str) -> str:
    keys = ["valid/recall@20", "test/recall@10", "test/recall@20", "test/ndcg@10", "test/ndcg@20"]
    if protocol == "mask-modality":
        keys = [f"{p}/test/recall@20" for p in ("zero-shot", "item-cf")]
    lines = ["| features | " + " | ".join(keys) + (" | loss of zero-shot R@20 |" if protocol == "mask-modality" else " |"),
             "|---" * (len(keys) + 1 + (protocol == "mask-modality")) + "|"]
    for r in results:
        row = [f"{r['metrics'].get(k, float('nan')):.4f}" for k in keys]
        if protocol == "mask-modality":
            loss = r.get("relative_loss", {}).get("zero-shot/test/recall@20")
            row.append("-" if loss is None else f"{100 * loss:.1f}%")
        lines.append(f"| {_label(r['features'])} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def make_protocol_asset(protocol: str) -> dg.AssetsDefinition:
    asset_name = protocol.replace("-", "_") + "_eval"

    @dg.asset(
        name=asset_name,
        group_name=EVAL_GROUP,
        partitions_def=dataset_partitions,
        kinds={"numpy"},
        description=f"The {protocol} protocol (docs §5) on every feature set of the dataset, "
        "stage 1 included; valid and test recall/ndcg at 10 and 20.",
    )
    def _protocol(context: dg.AssetExecutionContext, dataset: dict, encoder_outputs: dict,
                  stage1_features: dict) -> dict:
        from alignrec import io
        from alignrec.features.cache import extract
        from alignrec.features.pipeline import resolve_features
        from alignrec.features.protocols import run_protocol
        from orchestration.paths import dataset_folder

        if encoder_outputs.get("skipped"):
            return _skipped(context, dataset["name"], encoder_outputs["skipped"])
        ds = _dataset(dataset)
        outputs = extract(ds, encoder_outputs["cache_dir"], progress=False)
        kwargs = {}
        if protocol == "mask-modality":
            kwargs["modality"] = "image" if ds.has_images else ("text" if ds.has_text else next(iter(ds.features)))
        results = []
        for name in feature_set_names(outputs, stage1_features):
            fs = resolve_features(name, ds, encoder_outputs["cache_dir"], progress=False)
            mod = kwargs.get("modality")
            if mod and not {mod, f"vec:{mod}"} & set(fs.modalities):
                continue  # a set without that modality cannot lose it
            res = run_protocol(protocol, ds, fs, **kwargs).to_dict()
            res["features"] = _label(name)
            results.append(res)
        out = dataset_folder(context, ds.name) / "protocols" / f"{protocol}.json"
        io.write_json(out, results)
        table = _protocol_table(results, protocol)
        context.add_output_metadata({"results": dg.MetadataValue.md(table),
                                     "file": dg.MetadataValue.path(str(out))})
        return {"name": ds.name, "file": str(out), "results": results}

    return _protocol


assets = [encoder_outputs, stage1_features,
          *(make_protocol_asset(p) for p in ("zero-shot", "item-cf", "mask-modality"))]
checks = [stage1_features_valid]
