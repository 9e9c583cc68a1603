"""Filtering and splitting, as in MMRec and the AlignRec paper (docs §4)."""

from __future__ import annotations

import logging
from collections import Counter

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)


def dedupe(inter: pd.DataFrame, fallbacks: Counter) -> pd.DataFrame:
    """Drop repeated (user, item) pairs, keeping the earliest.

    A pair shipped in train and also in valid or test is kept in train only.
    """
    order = {"train": 0, "valid": 1, "test": 2}
    key = inter["split"].map(order).fillna(0) if inter["split"].notna().any() else 0
    sorted_ = inter.assign(_k=key).sort_values(["_k", "timestamp"], kind="stable", na_position="last")
    dup = sorted_.duplicated(["user_id", "item_id"], keep="first")
    if dup.any():
        n = int(dup.sum())
        fallbacks["duplicate_interactions_dropped"] += n
        log.warning("%d repeated (user, item) interactions dropped", n)
    return sorted_[~dup].drop(columns="_k").sort_index()


def k_core(inter: pd.DataFrame, k: int) -> pd.DataFrame:
    """Keep the largest subset where every user and item has at least ``k`` interactions."""
    if k <= 1:
        return inter
    while True:
        uc = inter["user_id"].map(inter["user_id"].value_counts())
        ic = inter["item_id"].map(inter["item_id"].value_counts())
        keep = (uc >= k) & (ic >= k)
        if keep.all():
            return inter
        inter = inter[keep]


def random_split(user: np.ndarray, seed: int) -> np.ndarray:
    """Per-user random split labels (0 train, 1 valid, 2 test).

    Users with fewer than 10 interactions get exactly one validation and one test
    item. The others put ``v = int(0.2 n)`` aside: ``v // 2`` to validation and the
    rest to test. Deterministic for a seed and independent of row order within a user.
    """
    n = len(user)
    rng = np.random.default_rng(seed)
    keys = rng.random(n)
    order = np.lexsort((keys, user))
    u_sorted = user[order]
    starts = np.r_[0, np.flatnonzero(np.diff(u_sorted)) + 1]
    counts = np.diff(np.r_[starts, n])
    rank = np.arange(n) - np.repeat(starts, counts)
    cnt = np.repeat(counts, counts)
    v = np.where(cnt < 10, 2, (0.2 * cnt).astype(np.int64))
    n_valid = np.where(cnt < 10, 1, v // 2)
    labels_sorted = np.where(rank < n_valid, 1, np.where(rank < v, 2, 0))
    labels = np.empty(n, dtype=np.int8)
    labels[order] = labels_sorted
    return labels
