"""Sanity of a finished run folder (what ``alignrec train`` wrote): the checks a trained
model must pass before anything downstream uses it."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from alignrec.runs import EXPORT, METRICS, WEIGHTS, read_metrics


def run_problems(folder: str | Path, n_users: int, n_items: int) -> list[str]:
    """What is wrong with the run in ``folder``, as readable lines (empty: nothing).

    Checked: the epochs add up; every valid/test metric is a number in [0, 1]; every saved
    weight is finite; an exported recommender (``recommender.npz``) has one finite
    embedding row per user and per item of the dataset (``n_users`` × ``n_items``).
    """
    import torch

    folder = Path(folder)
    problems: list[str] = []
    record = read_metrics(folder)
    epochs, best = record.get("epochs_run", 0), record.get("best_epoch", -1)
    if not 0 <= best < epochs:
        problems.append(f"{METRICS}: best_epoch {best} is not within the {epochs} epochs run")
    for split in ("valid", "test"):
        for key, value in (record.get(split) or {}).items():
            if not (isinstance(value, int | float) and math.isfinite(value) and 0 <= value <= 1):
                problems.append(f"{METRICS}: {split}/{key} = {value!r} is not in [0, 1]")
    state = torch.load(folder / WEIGHTS, map_location="cpu", weights_only=True)
    for name, tensor in state.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            problems.append(f"{WEIGHTS}: {name} has non-finite values")
    export = folder / EXPORT
    if export.is_file():
        with np.load(export, allow_pickle=False) as z:
            for key, rows in (("user_emb", n_users), ("item_emb", n_items)):
                shape = z[key].shape
                if shape[0] != rows:
                    problems.append(f"{EXPORT}: {key} has {shape[0]} rows, the dataset {rows}")
                if not np.isfinite(z[key]).all():
                    problems.append(f"{EXPORT}: {key} has non-finite values")
    return problems
