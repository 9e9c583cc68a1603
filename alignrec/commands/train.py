"""``alignrec train``: train one model (or a validation-selected grid) and write its metrics.

Writes into ``--out``:

* ``metrics.json`` — model, dataset, seed, best_epoch, epochs_run, train_seconds and
  ``valid`` / ``test`` objects keyed ``recall@K, ndcg@K, precision@K, map@K, hit@K``;
* ``per_user.npz`` — per-user valid and test metric arrays with their user indices,
  for paired significance tests across models and seeds;
* ``history.json`` — per-epoch loss, learning rate, timings and valid metrics;
* ``config.json`` — the resolved train and model configs;
* ``model.pt`` — the best weights (state dict);
* ``grid.json`` — with ``--grid``, every point's validation scores and the winner.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from alignrec import io


def _per_user_arrays(result) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    for split, ev in (("valid", result.valid), ("test", result.test)):
        if ev is None:
            continue
        arrays[f"{split}/users"] = ev.users
        for key, values in ev.per_user.items():
            arrays[f"{split}/{key}"] = values
    return arrays


def run_record(result, grid=None) -> dict[str, Any]:
    """The ``metrics.json`` record of a finished run (a grid search's winner with ``grid``)."""
    summary = result.summary()
    record = {
        k: summary[k]
        for k in ("model", "dataset", "seed", "best_epoch", "epochs_run", "train_seconds")
    }
    if summary.get("data_fingerprint"):
        record["data_fingerprint"] = summary["data_fingerprint"]
    if summary.get("processes", 1) > 1:
        record["processes"] = summary["processes"]  # data-parallel over torchrun processes
    record["stopped_early"] = summary["stopped_early"]
    record["stop_reason"] = summary["stop_reason"]
    if result.history:
        n = len(result.history)
        record["seconds_per_epoch"] = sum(h["time/epoch_seconds"] for h in result.history) / n
        record["seconds_per_eval"] = sum(h["time/eval_seconds"] for h in result.history) / n
    record["valid"] = summary["valid"]
    record["test"] = summary["test"]
    if grid is not None:
        record["selected_on"] = f"valid/{grid.metric}"
        record["grid_point"] = grid.points[grid.winner_index]
    return record


def write_run(out: str | Path, result, grid=None) -> dict[str, Any]:
    """Write a finished run's files into ``out`` and return the metrics record."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary = result.summary()
    record = run_record(result, grid)
    io.write_json(out / "metrics.json", record)
    io.write_json(
        out / "config.json",
        {"train": summary["train_config"], "model": summary["model_config"]},
    )
    io.write_json(out / "history.json", result.history)
    with io.atomic_path(out / "per_user.npz") as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, **_per_user_arrays(result))
    io.write_torch(out / "model.pt", result.model.state_dict())
    if grid is not None:
        io.write_json(out / "grid.json", grid.table())
    return record


def run_train(
    model: str,
    dataset: str,
    out: str | Path,
    seed: int = 0,
    sets: list[str] | None = None,
    grids: list[str] | None = None,
    device: str = "cpu",
    threads: int | None = None,
    quiet: bool = False,
    mlflow: bool = False,
    experiment: str | None = None,
    features: str | None = None,
    logger_factory: Any = None,
    export: bool = False,
) -> dict[str, Any]:
    """Train ``model`` on the registered ``dataset`` and write the run files into ``out``.

    ``sets`` are ``key=value`` overrides; ``grids`` are ``key=v1,v2`` lists whose
    Cartesian product is searched, the winner chosen on the validation split.
    ``features`` names the item feature table a content model uses (a ``.npy`` file,
    ``raw:concat``, ``fusion:<folder>`` ...; see ``alignrec evaluate-features``); it is
    handed to the model as ``dataset.features["content"]``. ``logger_factory(tag)``
    replaces the built-in loggers (the orchestration passes its MLflow resource's);
    the winner's logger's ``run_id``, when it has one, is returned as ``mlflow_run_id``.
    ``export`` also writes ``recommender.npz`` for serving (see :mod:`alignrec.serving`).

    Started by ``torchrun`` with several processes, it trains data-parallel
    (:mod:`alignrec.training.distributed`); only rank 0 logs and writes ``out``.
    """
    from alignrec.training import distributed

    group, device, created = distributed.join(device)
    try:
        record = _run_train(
            model, dataset, out, seed, sets, grids, device, threads, quiet or not group.is_main,
            mlflow, experiment, features, logger_factory, export, group,
        )
    finally:
        distributed.leave(created)
    return record


def _run_train(
    model, dataset, out, seed, sets, grids, device, threads, quiet, mlflow, experiment, features,
    logger_factory, export, group,
) -> dict[str, Any]:
    import torch

    from alignrec.data import load_dataset
    from alignrec.training import (
        ConsoleLogger,
        NullLogger,
        grid_search,
        parse_assignments,
        parse_grid,
        resolve_configs,
        train,
    )

    overrides: dict[str, Any] = parse_assignments(sets)
    if quiet:
        overrides.setdefault("quiet", "true")
    grid = parse_grid(grids)
    resolve_configs(model, overrides)  # unknown keys / bad values fail before loading data
    if grid:
        for key, values in grid.items():
            for v in values:
                resolve_configs(model, {**overrides, key: v})
    if threads:
        torch.set_num_threads(int(threads))
    with group.main_first():
        data = load_dataset(dataset)
        if features is not None:
            data = with_content_features(data, features)

    def make_logger(tag: str | None = None):
        if not group.is_main:
            return NullLogger()
        if logger_factory is not None:
            return logger_factory(tag)
        if not mlflow:
            return ConsoleLogger()
        from alignrec.tracking import MLflowLogger

        name = f"{model}-{dataset}-s{seed}" + (f"-{tag}" if tag else "")
        return MLflowLogger(experiment or f"train-{dataset}", run_name=name, tags={"model": model})

    if grid:
        loggers: list[Any] = []

        def factory(i: int, point: dict[str, Any]):
            lg = make_logger(f"g{i}")
            loggers.append(lg)
            return lg

        g = grid_search(
            model, data, grid, overrides, seed=seed, device=device, logger_factory=factory
        )
        result = g.best
        winner_logger = loggers[g.winner_index]
        if result.test is not None:
            winner_logger.log_metrics(
                {**result.test.prefixed("test"), "best_epoch": result.best_epoch},
                step=result.best_epoch,
            )
        record = write_run(out, result, g) if group.is_main else run_record(result, g)
        winner_logger.log_artifact(Path(out) / "metrics.json")
        winner_logger.log_artifact(Path(out) / "per_user.npz")
        if getattr(winner_logger, "run_id", None):
            record["mlflow_run_id"] = winner_logger.run_id
        for lg in loggers:
            getattr(lg, "close", lambda: None)()
    else:
        g = None
        lg = make_logger()
        result = train(model, data, overrides, lg, seed=seed, device=device)
        record = write_run(out, result) if group.is_main else run_record(result)
        lg.log_artifact(Path(out) / "metrics.json")
        lg.log_artifact(Path(out) / "per_user.npz")
        if getattr(lg, "run_id", None):
            record["mlflow_run_id"] = lg.run_id
        getattr(lg, "close", lambda: None)()
    if export and group.is_main:
        from alignrec.serving import export_recommender

        export_recommender(result.model, data, Path(out) / "recommender.npz")
    if features is not None:
        record["features"] = features
    return record


def with_content_features(data, spec: str):
    """``data`` with the feature set ``spec`` as ``features["content"]`` (what content models read)."""
    import dataclasses

    from alignrec.features.pipeline import resolve_features

    table = resolve_features(spec, data, progress=False).table
    return dataclasses.replace(data, features={**data.features, "content": table})


def format_record(record: dict[str, Any], ks: tuple[int, ...] = (10, 20)) -> str:
    """A short human summary of ``metrics.json``."""
    lines = [
        f"{record['model']} on {record['dataset']} (seed {record['seed']}): best epoch "
        f"{record['best_epoch']} of {record['epochs_run']}, {record['train_seconds']:.1f}s"
    ]
    for split in ("valid", "test"):
        m = record.get(split) or {}
        if m:
            lines.append(
                f"  {split:5s} "
                + "  ".join(
                    f"{name}@{k}={m[f'{name}@{k}']:.4f}" for name in ("recall", "ndcg") for k in ks
                )
            )
    return "\n".join(lines)


__all__ = ["format_record", "run_train", "write_run"]


def train_command(
    model: Annotated[
        str, typer.Argument(help="registered model name (see alignrec.models.MODELS)")
    ],
    dataset: Annotated[str, typer.Option("--dataset", help="registered dataset name")],
    out: Annotated[
        Path, typer.Option("--out", help="folder receiving metrics.json, per_user.npz ...")
    ],
    seed: Annotated[
        int, typer.Option("--seed", help="seeds the initialisation and the sampler")
    ] = 0,
    sets: Annotated[
        list[str] | None,
        typer.Option("--set", help="override a config key: key=value (repeatable)"),
    ] = None,
    grids: Annotated[
        list[str] | None,
        typer.Option("--grid", help="search key=v1,v2 (repeatable); the winner is chosen on VALID"),
    ] = None,
    device: Annotated[str, typer.Option(help="torch device")] = "cpu",
    threads: Annotated[int, typer.Option(help="torch intra-op threads (0: torch's default)")] = 0,
    quiet: Annotated[bool, typer.Option("--quiet", help="no progress bar")] = False,
    mlflow: Annotated[
        bool, typer.Option("--mlflow", help="log params and metrics to MLflow")
    ] = False,
    experiment: Annotated[
        str | None, typer.Option(help="MLflow experiment (default train-DATASET)")
    ] = None,
    features: Annotated[
        str | None,
        typer.Option(
            "--features",
            help="item features of a content model: a .npy [n_items, D], raw:text, raw:image, "
            "raw:concat, raw:<precomputed modality> or fusion:<saved fusion encoder folder>",
        ),
    ] = None,
) -> None:
    """Train MODEL on a dataset; validate every epoch, test once at the best epoch."""
    record = run_train(
        model, dataset, out, seed, sets, grids, device, threads or None, quiet, mlflow, experiment,
        features=features,
    )
    if os.environ.get("RANK", "0") == "0":  # torchrun's other processes wrote nothing
        typer.echo(format_record(record))
        typer.echo(f"wrote {Path(out) / 'metrics.json'}")
