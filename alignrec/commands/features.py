"""CLI commands of stage 1 and of the feature protocols (registered in :mod:`alignrec.cli`).

- ``alignrec evaluate-features --dataset NAME --features FEATURES --protocol P [--out F.json|DIR]``
- ``alignrec pretrain-features --dataset NAME --out F.npy [--model-dir DIR] [--config F.json]``
"""

from __future__ import annotations

import json
import os
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
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            help="where to write the item features stage 2 reads (.npy): the stage-1 output, "
            "or the raw set that beats it on validation (see --select)",
        ),
    ],
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
    select: Annotated[
        bool,
        typer.Option(
            help="compare the stage-1 features with every raw set on validation and write the "
            "winner to --out (the stage-1 output always goes to OUT.stage1.npy); "
            "--no-select writes the stage-1 output to --out"
        ),
    ] = True,
    cache_dir: Annotated[Path | None, typer.Option(help=CACHE_HELP)] = None,
    device: Annotated[
        str, typer.Option(help="torch device of the encoders and the fusion training (or auto)")
    ] = "cpu",
    progress: Annotated[bool, typer.Option(help="show progress bars")] = True,
    record: Annotated[
        bool,
        typer.Option(
            help="keep a small record (timings, pretext check, the choice and its table) in "
            "results/stage1/NAME/, the folder the README's tables are generated from"
        ),
    ] = True,
) -> None:
    """Stage 1: extract encoder outputs (cached), pretrain the fusion encoder, write features."""
    from alignrec.data import load_dataset
    from alignrec.env import torch_device
    from alignrec.features.fusion import save_fusion
    from alignrec.features.pipeline import pretrain_features as run
    from alignrec.features.pretext import format_pretext
    from alignrec.features.provenance import stage1_fields, write_features
    from alignrec.io import write_json, write_npy

    cfg = fusion_config(config, set_)
    torch_device(device)  # a device this machine lacks stops here, before any work
    stage1_out = Path(out).with_suffix(".stage1.npy")
    check_outputs(out, model_dir)
    t0 = time.perf_counter()
    ds = load_dataset(dataset)
    res = run(ds, cache_dir, cfg, progress=progress, device=device, choose=select)
    # beside OUT, what decided it: the benchmark keys AlignRec's runs by it, not by its bytes
    fields = stage1_fields(ds, res.outputs, cfg.to_dict())
    if select:
        write_features(out, res.stage2_features, fields, res.choice.chosen)
        write_npy(stage1_out, res.features)
    else:
        write_features(out, res.features, fields, "stage1")
    summary = {
        "dataset": dataset,
        "features": str(out),
        "stage1_features": str(stage1_out if select else out),
        "shape": list(res.features.shape),
        "config": cfg.to_dict(),
        "device": device,
        **res.summary(),
        "total_seconds": time.perf_counter() - t0,
        "history": res.train.history,
    }
    write_json(Path(out).with_suffix(".json"), summary)
    if model_dir is not None:
        save_fusion(res.train.model, model_dir)
        typer.echo(f"fusion encoder: {model_dir}")
    typer.echo("pretext check (masked targets: the model against interpolation):")
    typer.echo(format_pretext(res.pretext))
    if res.choice is not None:
        typer.echo(res.choice.summary())
    if record:
        folder = record_stage1(dataset, cfg, res, device)
        typer.echo(f"record: {folder}")
    typer.echo(
        f"features {res.features.shape} -> {stage1_out if select else out} "
        f"(extraction {sum(res.extraction_seconds.values()):.1f}s, "
        f"training {res.train.seconds:.1f}s)"
    )
    if select:
        typer.echo(f"stage 2 features ({res.choice.chosen}) -> {out}")


def record_stage1(dataset: str, cfg, res, device: str) -> Path:
    """Write ``results/stage1/<dataset>/pretrain.json`` and ``choice.md`` (small, committed)."""
    from alignrec.features.pretext import format_pretext
    from alignrec.io import write_json, write_text
    from alignrec.paths import results_root

    folder = results_root() / "stage1" / dataset
    write_json(folder / "pretrain.json", {"dataset": dataset, "config": cfg.to_dict(),
                                           "device": device, "shape": list(res.features.shape),
                                           **res.summary()})
    lines = [f"# Stage 1 on {dataset}", ""]
    if res.choice is not None:
        lines.append(res.choice.table())
    secs = sum(res.extraction_seconds.values())
    lines += ["", f"Stage 1 took {res.train.seconds:.0f} s of fusion training after "
              f"{secs:.0f} s of encoder extraction (0 when cached), on {device}.", "",
              "Pretext check (masked targets, the model against interpolation):", "", "```",
              format_pretext(res.pretext), "```"]
    write_text(folder / "choice.md", "\n".join(lines) + "\n")
    return folder


def fusion_config(config: Path | None, sets: list[str] | None):
    """A FusionConfig from a JSON file and KEY=VALUE overrides (JSON values)."""
    from alignrec.features.fusion import FusionConfig

    values: dict[str, Any] = {}
    if config is not None:
        try:
            values.update(json.loads(Path(config).read_text()))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{config}: not a readable JSON object ({exc})") from exc
    for item in sets or []:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE")
        try:
            values[key] = json.loads(raw)
        except ValueError:
            values[key] = raw
    return FusionConfig.from_dict(values)


def check_outputs(out: Path, model_dir: Path | None) -> None:
    """Refuse, before any work, outputs that would overwrite each other or cannot be written:
    the encoder folder replaces itself whole, so it may not hold or sit inside --out."""
    out = Path(out).resolve()
    if model_dir is not None:
        folder = Path(model_dir).resolve()
        if folder == out or folder in out.parents or out in folder.parents:
            raise ConfigError(
                f"--model-dir {model_dir} and --out {out} overlap: the encoder folder is "
                "replaced whole when it is written; give them separate places"
            )
    for target in [out, *([Path(model_dir).resolve()] if model_dir is not None else [])]:
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot write {target}: {exc.strerror or exc}") from None
        if not os.access(target.parent, os.W_OK):
            raise ConfigError(f"cannot write {target}: {target.parent} is not writable")


def pretext_check_command(
    dataset: Annotated[str, typer.Option("--dataset", help="registered dataset name")],
    model_dir: Annotated[Path, typer.Option(help="a saved fusion encoder (pretrain-features)")],
    items: Annotated[int, typer.Option(help="items sampled for the check")] = 1024,
    seed: Annotated[int, typer.Option(help="seed of the sample and the masks")] = 0,
    cache_dir: Annotated[Path | None, typer.Option(help=CACHE_HELP)] = None,
) -> None:
    """Score a fusion encoder's masked predictions against neighbour interpolation.

    Exits 1 when some target does not beat interpolation (the model is flagged)."""
    from alignrec.data import load_dataset
    from alignrec.features.cache import extract
    from alignrec.features.fusion import load_fusion
    from alignrec.features.pipeline import default_cache_dir
    from alignrec.features.pretext import flagged, format_pretext, pretext_check

    model = load_fusion(model_dir)
    ds = load_dataset(dataset)
    outputs = extract(ds, cache_dir or default_cache_dir(ds.name), progress=False)
    scores = pretext_check(model, outputs, seed=seed, max_items=items)
    typer.echo(format_pretext(scores))
    bad = flagged(scores)
    if bad:
        typer.echo(f"flagged: the model does not beat interpolation on {', '.join(bad)}")
        raise typer.Exit(1)


def stage1_sweep_command(
    dataset: Annotated[str, typer.Option("--dataset", help="registered dataset name")],
    out: Annotated[
        Path | None,
        typer.Option(help="folder of the sweep's records (default results/stage1-sweep/NAME)"),
    ] = None,
    only: Annotated[
        list[str] | None, typer.Option("--only", help="run only these sweep points; repeatable")
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", help="JSON object of base FusionConfig fields")
    ] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="base FusionConfig field, KEY=VALUE")
    ] = None,
    cache_dir: Annotated[Path | None, typer.Option(help=CACHE_HELP)] = None,
    device: Annotated[str, typer.Option(help="torch device of the fusion training")] = "cpu",
) -> None:
    """Sweep the documented stage-1 settings; score each on validation (never test).

    Each point is trained once and read at several fused-readout weights; finished points
    are reused, so the same command resumes. Writes OUT/<point>.json and OUT/sweep.md."""
    from alignrec.data import load_dataset
    from alignrec.data.readers import read_labels
    from alignrec.data.registry import get_spec
    from alignrec.features.cache import extract
    from alignrec.features.pipeline import default_cache_dir
    from alignrec.features.selection import (
        RULE,
        SWEEP,
        best_setting,
        raw_candidates,
        run_sweep,
        score_on_validation,
        sweep_table,
    )
    from alignrec.io import write_text
    from alignrec.paths import results_root

    base = fusion_config(config, set_).to_dict()
    settings = SWEEP
    if only:
        unknown = sorted(set(only) - set(SWEEP))
        if unknown:
            raise ConfigError(f"unknown sweep point(s) {unknown}; known: {sorted(SWEEP)}")
        settings = {k: v for k, v in SWEEP.items() if k in only}
    out = out or results_root() / "stage1-sweep" / dataset
    ds = load_dataset(dataset)
    spec = get_spec(dataset)
    labels = read_labels(spec, ds.items["item_id"])[1] if spec.labels is not None else None
    outputs = extract(ds, cache_dir or default_cache_dir(ds.name), progress=True)

    def report(point) -> None:
        w, s = point.best()
        typer.echo(f"{point.name}: best at fused weight {w}: zero-shot {s.zero_shot:.4f}, "
                   f"item-CF {s.item_cf:.4f}, score {s.score:.4f} ({point.train_seconds:.0f} s)")

    points = run_sweep(ds, outputs, base, out, settings=settings, labels=labels,
                       device=device, on_point=report)
    refs = [score_on_validation(ds, t, n, labels) for n, t in raw_candidates(outputs).items()]
    winner, weight = best_setting(points)
    table = sweep_table(points, refs)
    text = (f"# Stage-1 sweep on {dataset}\n\nValidation only; rule: {RULE}.\n"
            f"Command: `alignrec stage1-sweep --dataset {dataset}`.\n\n{table}\n\n"
            f"Chosen: `{winner.name}` with `fused_weight: {weight}`.\n")
    write_text(out / "sweep.md", text)
    typer.echo(table)
    typer.echo(f"chosen: {winner.name}, fused_weight {weight} -> {out / 'sweep.md'}")
