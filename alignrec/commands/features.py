"""CLI commands of stage 1 and of the feature protocols (registered in :mod:`alignrec.cli`).

- ``alignrec evaluate-features --dataset NAME --features FEATURES --protocol P [--out F.json|DIR]``
- ``alignrec pretrain-features --dataset NAME --out F.npy [--model-dir DIR] [--config F.json]``
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from alignrec.errors import ConfigError

PROTOCOL_HELP = "zero-shot | item-cf | mask-modality"
CACHE_HELP = "encoder-output cache (default artifacts/datasets/NAME/encoders)"
FEATURES_HELP = (
    "a .npy table [n_items, D], raw:text, raw:image, raw:concat, raw:<precomputed modality> "
    "or fusion:<folder of a saved fusion encoder>"
)


def _table_rows(result: dict[str, Any]) -> list[tuple[str, ...]]:
    """(protocol, split, recall@10, ndcg@10, recall@20, ndcg@20) rows of a result dict."""
    metrics = result["metrics"]
    groups = sorted({k.rsplit("/", 2)[0] if k.count("/") == 2 else "" for k in metrics})
    rows = []
    for g in groups:
        for split in ("valid", "test"):
            prefix = f"{g}/{split}" if g else split
            vals = [
                metrics.get(f"{prefix}/{m}")
                for m in ("recall@10", "ndcg@10", "recall@20", "ndcg@20")
            ]
            if all(v is None for v in vals):
                continue
            label = g or result["protocol"]
            rows.append((label, split, *("-" if v is None else f"{v:.4f}" for v in vals)))
            if "relative_loss" in result:
                loss = result["relative_loss"].get(f"{prefix}/recall@20")
                rows[-1] = (*rows[-1], "-" if loss is None else f"{100 * loss:.1f}%")
    return rows


def evaluate_features(
    dataset: Annotated[str, typer.Option("--dataset", help="registered dataset name")],
    features: Annotated[str, typer.Option("--features", help=FEATURES_HELP)],
    protocol: Annotated[str, typer.Option("--protocol", help=PROTOCOL_HELP)],
    out: Annotated[
        Path | None,
        typer.Option("--out", help="write the result as JSON here (a folder: FOLDER/PROTOCOL.json)"),
    ] = None,
    modality: Annotated[str, typer.Option(help="mask-modality: the modality to remove")] = "image",
    fraction: Annotated[
        float, typer.Option(help="mask-modality: fraction of items that lose it")
    ] = 0.5,
    seed: Annotated[int, typer.Option(help="mask-modality: seed of the item permutation")] = 0,
    knn_k: Annotated[int, typer.Option("--k", help="item-cf: neighbours kept per item")] = 10,
    shrink: Annotated[float, typer.Option(help="item-cf: similarity shrink term")] = 10.0,
    cache_dir: Annotated[Path | None, typer.Option(help=CACHE_HELP)] = None,
) -> None:
    """Judge an item feature table with a training-free protocol (valid and test R/N@10,20)."""
    from alignrec.cli import _print_table
    from alignrec.data import load_dataset
    from alignrec.features.pipeline import resolve_features
    from alignrec.features.protocols import PROTOCOLS, run_protocol
    from alignrec.io import write_json

    if protocol not in PROTOCOLS:
        raise ConfigError(f"unknown protocol {protocol!r}; expected one of {', '.join(PROTOCOLS)}")
    if out is not None and out.is_dir():
        out = out / f"{protocol}.json"  # a folder: the result goes inside, named after the protocol
        if out.is_dir():
            raise ConfigError(f"--out: {out} is a folder; give a file name")
    ds = load_dataset(dataset)
    fs = resolve_features(features, ds, cache_dir)
    kwargs: dict[str, Any] = {}
    if protocol in ("item-cf", "mask-modality"):
        kwargs.update(k=knn_k, shrink=shrink)
    if protocol == "mask-modality":
        kwargs.update(modality=modality, fraction=fraction, seed=seed)
    result = run_protocol(protocol, ds, fs, **kwargs).to_dict()
    result["dataset"] = dataset
    header = ("protocol", "split", "R@10", "N@10", "R@20", "N@20")
    if protocol == "mask-modality":
        header = (*header, "R@20 loss")
    _print_table(_table_rows(result), header=header)
    if out is not None:
        write_json(out, result)
        typer.echo(f"wrote {out}")


def pretrain_features(
    dataset: Annotated[str, typer.Option("--dataset", help="registered dataset name")],
    out: Annotated[Path, typer.Option("--out", help="where to write the item features (.npy)")],
    model_dir: Annotated[
        Path | None, typer.Option(help="also save the fusion encoder here")
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", help="JSON object of FusionConfig fields")
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set", help="override a FusionConfig field, KEY=VALUE (JSON value); repeatable"
        ),
    ] = None,
    cache_dir: Annotated[Path | None, typer.Option(help=CACHE_HELP)] = None,
    device: Annotated[
        str, typer.Option(help="torch device of the encoders and the fusion training (or auto)")
    ] = "cpu",
    progress: Annotated[bool, typer.Option(help="show progress bars")] = True,
) -> None:
    """Stage 1: extract encoder outputs (cached), pretrain the fusion encoder, write features."""
    from alignrec.data import load_dataset
    from alignrec.env import torch_device
    from alignrec.features.fusion import FusionConfig, save_fusion
    from alignrec.features.pipeline import pretrain_features as run
    from alignrec.io import write_json, write_npy

    values: dict[str, Any] = {}
    if config is not None:
        try:
            values.update(json.loads(Path(config).read_text()))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{config}: not a readable JSON object ({exc})") from exc
    for item in set_ or []:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE")
        try:
            values[key] = json.loads(raw)
        except ValueError:
            values[key] = raw
    cfg = FusionConfig.from_dict(values)
    torch_device(device)  # a device this machine lacks stops here, before any work
    t0 = time.perf_counter()
    ds = load_dataset(dataset)
    res = run(ds, cache_dir, cfg, progress=progress, device=device)
    write_npy(out, res.features)
    summary = {
        "dataset": dataset,
        "features": str(out),
        "shape": list(res.features.shape),
        "config": cfg.to_dict(),
        "device": device,
        "extraction_seconds": res.extraction_seconds,
        "training_seconds": res.train.seconds,
        "total_seconds": time.perf_counter() - t0,
        "history": res.train.history,
    }
    write_json(Path(out).with_suffix(".json"), summary)
    if model_dir is not None:
        save_fusion(res.train.model, model_dir)
        typer.echo(f"fusion encoder: {model_dir}")
    typer.echo(
        f"features {res.features.shape} -> {out} (extraction {sum(res.extraction_seconds.values()):.1f}s,"
        f" training {res.train.seconds:.1f}s)"
    )
