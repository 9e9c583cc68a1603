"""The run folder: what one training run (``alignrec train``, a benchmark run, a Dagster
training asset) writes, and how the rest of the library reads it back.

A finished run's folder holds:

* ``metrics.json`` — model, dataset, seed, best_epoch, epochs_run, train_seconds and
  ``valid`` / ``test`` objects keyed ``recall@K, ndcg@K, precision@K, map@K, hit@K``;
* ``per_user.npz`` — per-user valid and test metric arrays with their user indices
  (``<split>/users``, ``<split>/<metric>``), for paired significance tests across models
  and seeds;
* ``history.json`` — per-epoch loss, learning rate, timings and valid metrics;
* ``config.json`` — the resolved train and model configs (``{"train": ..., "model": ...}``);
* ``model.pt`` — the best weights (state dict);
* ``grid.json`` — after a grid search, every point's validation scores and the winner;
* ``recommender.npz`` — with ``export``, the servable recommender (:mod:`alignrec.serving`);
* ``status.json`` — ``running`` (pid, host, start, epoch reached) while it trains, then
  ``finished``, ``interrupted`` (a signal) or ``failed``;
* ``checkpoint.pt`` (``checkpoint-g<i>.pt`` per grid point) while it trains, and after a
  signal: the next run with the same config resumes from it
  (:mod:`alignrec.training.checkpoint`); removed once the run has finished.

This module is the one place that knows these names and formats: the CLI, the benchmark,
the orchestration and the registry write and read run folders through it.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import numpy as np

from alignrec import io

METRICS = "metrics.json"
PER_USER = "per_user.npz"
HISTORY = "history.json"
CONFIG = "config.json"
WEIGHTS = "model.pt"
GRID = "grid.json"
EXPORT = "recommender.npz"  # alignrec.serving.EXPORT_FILE
STATUS = "status.json"  # alignrec.training.checkpoint.RunStatus
LOCK = "status.lock"  # held by the process training into the folder (git-ignored)
CHECKPOINT = "checkpoint.pt"  # checkpoint-g<i>.pt per grid point (alignrec.training.checkpoint)
# The files every finished run has (the benchmark checks them before reusing a run).
RUN_FILES = (METRICS, PER_USER, HISTORY)
# The fields of a ``metrics.json`` record copied from the training result's summary.
RECORD_FIELDS = ("model", "dataset", "seed", "best_epoch", "epochs_run", "train_seconds")


def per_user_arrays(result) -> dict[str, np.ndarray]:
    """The arrays of ``per_user.npz``: ``<split>/users`` and ``<split>/<metric>``."""
    arrays: dict[str, np.ndarray] = {}
    for split, ev in (("valid", result.valid), ("test", result.test)):
        if ev is None:
            continue
        arrays[f"{split}/users"] = ev.users
        for key, values in ev.per_user.items():
            arrays[f"{split}/{key}"] = values
    return arrays


def signal_name(signum: int) -> str:
    """``SIGTERM`` for 15; the number for a signal Python does not name."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return str(signum)


def run_record(result, grid=None) -> dict[str, Any]:
    """The ``metrics.json`` record of a finished run (a grid search's winner with ``grid``)."""
    summary = result.summary()
    record = {k: summary[k] for k in RECORD_FIELDS}
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
    signum = grid.stop_signal if grid is not None and grid.interrupted else result.stop_signal
    if signum:  # the run, or the search, was cut short: the next run resumes it
        record["stop_signal"] = signal_name(signum)
    return record


def write_run(out: str | Path, result, grid=None) -> dict[str, Any]:
    """Write a finished run's files into ``out`` and return the metrics record."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary = result.summary()
    record = run_record(result, grid)
    io.write_json(out / METRICS, record)
    io.write_json(
        out / CONFIG,
        {"train": summary["train_config"], "model": summary["model_config"]},
    )
    io.write_json(out / HISTORY, result.history)
    with io.atomic_path(out / PER_USER) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, **per_user_arrays(result))
    io.write_torch(out / WEIGHTS, result.model.state_dict())
    if grid is not None:
        io.write_json(out / GRID, grid.table())
    return record


def read_metrics(folder: str | Path) -> dict[str, Any]:
    """A run's ``metrics.json`` record."""
    return json.loads((Path(folder) / METRICS).read_text())


def read_history(folder: str | Path) -> list[dict[str, Any]]:
    """A run's ``history.json``: one dict per epoch."""
    return json.loads((Path(folder) / HISTORY).read_text())


def read_config(folder: str | Path) -> dict[str, Any]:
    """A run's ``config.json``: ``{"train": ..., "model": ...}``."""
    return json.loads((Path(folder) / CONFIG).read_text())


def has_run_files(folder: str | Path) -> bool:
    """Whether ``folder`` holds every file of a finished run (:data:`RUN_FILES`)."""
    return all((Path(folder) / f).is_file() for f in RUN_FILES)


def per_user_test(folder: Path, metric: str = "recall@20") -> tuple[np.ndarray, np.ndarray]:
    """(users, values) of a run's per-user test ``metric`` from its ``per_user.npz``."""
    with np.load(Path(folder) / PER_USER) as z:
        return z["test/users"], z[f"test/{metric}"]


__all__ = [
    "CHECKPOINT",
    "LOCK",
    "CONFIG",
    "EXPORT",
    "GRID",
    "HISTORY",
    "METRICS",
    "PER_USER",
    "RECORD_FIELDS",
    "RUN_FILES",
    "STATUS",
    "WEIGHTS",
    "has_run_files",
    "per_user_arrays",
    "per_user_test",
    "read_config",
    "read_history",
    "read_metrics",
    "run_record",
    "signal_name",
    "write_run",
]
