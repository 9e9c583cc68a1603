"""``alignrec train``: train one model (or a validation-selected grid) and write its metrics.

Writes into ``--out`` the run folder of :mod:`alignrec.runs`:

* ``metrics.json`` — model, dataset, seed, best_epoch, epochs_run, train_seconds and
  ``valid`` / ``test`` objects keyed ``recall@K, ndcg@K, precision@K, map@K, hit@K``;
* ``per_user.npz`` — per-user valid and test metric arrays with their user indices,
  for paired significance tests across models and seeds;
* ``history.json`` — per-epoch loss, learning rate, timings and valid metrics;
* ``config.json`` — the resolved train and model configs;
* ``model.pt`` — the best weights (state dict);
* ``grid.json`` — with ``--grid``, every point's validation scores and the winner;
* ``status.json`` — ``running`` (pid, host, start, epoch reached) while it trains, then
  ``finished``, ``interrupted`` (a signal) or ``failed``;
* ``checkpoint.pt`` (``checkpoint-g<i>.pt`` per grid point) while it trains, and after a
  signal: the next run with the same config resumes from it
  (:mod:`alignrec.training.checkpoint`); removed once the run has finished.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from alignrec.features.sets import with_content_features
from alignrec.runs import METRICS, PER_USER, run_record, signal_name, write_run


def exit_code(record: dict[str, Any]) -> int:
    """The exit status of a run: 128 + the signal's number when a signal stopped it, else 0."""
    name = record.get("stop_signal")
    if not name:
        return 0
    try:
        return 128 + int(signal.Signals[name])
    except KeyError:
        return 128 + int(name) if str(name).isdigit() else 1


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
    resume: bool = True,
    on_mismatch: str = "fresh",
    say: Callable[[str], Any] | None = None,
    tables: str | Path | None = None,
    cache_dir: str | Path | None = None,
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
    ``tables`` reads the dataset's canonical tables from that folder (what a Dagster asset
    upstream wrote) instead of preparing them in ``ALIGNREC_HOME``; ``cache_dir`` is the
    encoder cache a ``raw:``/``fusion:`` feature set is read from (default the dataset's
    under ``ALIGNREC_HOME``).

    ``out`` keeps a checkpoint while the run trains and a ``status.json``. With ``resume``
    a checkpoint left there by a run that died or was stopped by a signal is resumed from,
    when it was written with the same configs, seed and data; one written with others is
    discarded (``on_mismatch="fresh"``) or refused with a :class:`ConfigError`
    (``"refuse"``, what ``alignrec train`` does). Without ``resume`` every checkpoint in
    ``out`` is deleted first. A run still training into ``out`` (``status.json`` names a
    live process on this host) is refused. ``say`` receives what is said about an earlier
    run and resuming (default: logged). A run stopped by a signal has ``stop_signal`` in
    its record and keeps its checkpoint.

    Started by ``torchrun`` with several processes, it trains data-parallel
    (:mod:`alignrec.training.distributed`); only rank 0 logs and writes ``out``.
    """
    from alignrec.training import distributed

    group, device, created = distributed.join(device)
    try:
        record = _run_train(
            model, dataset, out, seed, sets, grids, device, threads, quiet or not group.is_main,
            mlflow, experiment, features, logger_factory, export, group, resume, on_mismatch,
            say, tables=tables, cache_dir=cache_dir,
        )
    finally:
        distributed.leave(created)
    return record


def _run_train(
    model, dataset, out, seed, sets, grids, device, threads, quiet, mlflow, experiment, features,
    logger_factory, export, group, resume=True, on_mismatch="fresh", say=None, *, tables=None,
    cache_dir=None,
) -> dict[str, Any]:
    import logging

    import torch

    from alignrec.training import parse_assignments, parse_grid, resolve_configs
    from alignrec.training.checkpoint import (
        CHECKPOINT,
        Checkpointing,
        RunStatus,
        checkpoint_files,
        remove_checkpoints,
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
    out = Path(out)
    tell = say or logging.getLogger(__name__).warning
    status = RunStatus(out) if group.is_main else None
    if status is not None:
        previous = status.check_previous()  # refuses while another run trains into out
        left = checkpoint_files(out)
        if previous:
            if not resume:
                tell(f"{previous}; starting afresh (--no-resume)")
            elif left:
                tell(f"{previous}; resuming")
            else:
                tell(f"{previous}; it left no checkpoint, so training starts afresh")
        if left and not resume:
            remove_checkpoints(out)
        status.start(command="train", model=model, dataset=dataset, seed=seed)

    def checkpointing(name: str = CHECKPOINT, **fields: Any) -> Checkpointing:
        return Checkpointing(
            out / name, resume=resume, on_mismatch=on_mismatch, status=status, say=tell,
            status_fields=fields,
        )

    try:
        record, result = _train_and_write(
            model, dataset, out, seed, overrides, grid, device, mlflow, experiment, features,
            logger_factory, export, group, checkpointing, tables=tables, cache_dir=cache_dir,
        )
    except BaseException as exc:
        if status is not None:
            state = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
            status.finish(state, error=f"{type(exc).__name__}: {exc}")
        raise
    if status is not None:
        if record.get("stop_signal"):  # the checkpoint stays: the next run resumes from it
            status.finish("interrupted", signal=record["stop_signal"], resumable=True)
        else:
            remove_checkpoints(out)
            status.finish(
                "finished",
                stop_reason=record["stop_reason"],
                best_epoch=record["best_epoch"],
                epochs_run=record["epochs_run"],
                resumed_from=result.resumed_from,
            )
    return record


def _train_and_write(
    model, dataset, out, seed, overrides, grid, device, mlflow, experiment, features,
    logger_factory, export, group, checkpointing, *, tables=None, cache_dir=None,
):
    """Load the data, train (or search the grid) and write ``out``; (record, result)."""
    from alignrec.data import load_dataset, read_dataset
    from alignrec.training import ConsoleLogger, NullLogger, grid_search, train

    with group.main_first():
        data = read_dataset(tables, dataset) if tables is not None else load_dataset(dataset)
        if features is not None:
            data = with_content_features(data, features, cache_dir)

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
            model, data, grid, overrides, seed=seed, device=device, logger_factory=factory,
            checkpoints=lambda i: checkpointing(f"checkpoint-g{i}.pt", point=i),
        )
        result = g.best
        winner_logger = loggers[g.winner_index]
        if result.test is not None:
            winner_logger.log_metrics(
                {**result.test.prefixed("test"), "best_epoch": result.best_epoch},
                step=result.best_epoch,
            )
        record = write_run(out, result, g) if group.is_main else run_record(result, g)
        winner_logger.log_artifact(Path(out) / METRICS)
        winner_logger.log_artifact(Path(out) / PER_USER)
        if getattr(winner_logger, "run_id", None):
            record["mlflow_run_id"] = winner_logger.run_id
        for lg in loggers:
            getattr(lg, "close", lambda: None)()
    else:
        g = None
        lg = make_logger()
        result = train(model, data, overrides, lg, seed=seed, device=device,
                       checkpoint=checkpointing())
        record = write_run(out, result) if group.is_main else run_record(result)
        lg.log_artifact(Path(out) / METRICS)
        lg.log_artifact(Path(out) / PER_USER)
        if getattr(lg, "run_id", None):
            record["mlflow_run_id"] = lg.run_id
        getattr(lg, "close", lambda: None)()
    if export and group.is_main:
        from alignrec.serving import EXPORT_FILE, export_recommender

        export_recommender(result.model, data, Path(out) / EXPORT_FILE)
    if features is not None:
        record["features"] = features
    return record, result


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


__all__ = [
    "exit_code",
    "format_record",
    "run_record",
    "run_train",
    "signal_name",
    "with_content_features",
    "write_run",
]


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
    resume: Annotated[
        bool,
        typer.Option(
            "--resume/--no-resume",
            help="resume from the checkpoint a killed or stopped run left in --out (refused when "
            "its config or data differ); --no-resume deletes it and trains from the start",
        ),
    ] = True,
) -> None:
    """Train MODEL on a dataset; validate every epoch, test once at the best epoch.

    A run stopped by SIGINT/SIGTERM writes its best epoch's results and exits with 128 + the
    signal's number (143 for SIGTERM); rerun the same command to resume it.
    """
    main = os.environ.get("RANK", "0") == "0"  # torchrun's other processes write nothing
    record = run_train(
        model, dataset, out, seed, sets, grids, device, threads or None, quiet, mlflow, experiment,
        features=features, resume=resume, on_mismatch="refuse",
        say=(lambda line: typer.echo(line, err=True)) if main else None,
    )
    if main:
        typer.echo(format_record(record))
        typer.echo(f"wrote {Path(out) / 'metrics.json'}")
    code = exit_code(record)
    if code:
        if main:
            typer.echo(
                f"stopped by {record['stop_signal']} before the last epoch: the results are the "
                f"best epoch's so far; rerun the same command to resume from {out}",
                err=True,
            )
        raise typer.Exit(code)
