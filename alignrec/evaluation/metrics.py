"""Top-K ranking metrics over a hit matrix, one small function per metric.

Every metric takes ``hits`` — a boolean matrix [n_users, K_max] whose cell
``(u, r)`` says whether the item ranked ``r + 1`` for user ``u`` is relevant —
together with ``n_rel`` (the number of relevant items of each user) and a cut-off
``k``, and returns one float64 value per user. The definitions follow RecBole and
MMRec (alignrec.md §4):

* ``recall@K``    = hits in the top K / |relevant|
* ``precision@K`` = hits in the top K / K
* ``hit@K``       = 1 if any relevant item is in the top K, else 0
* ``ndcg@K``      = Σ_r hit_r / log2(r + 1), divided by the same sum over the
  first min(|relevant|, K) ranks (binary gain)
* ``map@K``       = Σ over hit ranks r of precision@r, divided by min(|relevant|, K)
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

MetricFn = Callable[[np.ndarray, np.ndarray, int], np.ndarray]


def _check(hits: np.ndarray, n_rel: np.ndarray, k: int) -> np.ndarray:
    if hits.ndim != 2 or hits.shape[0] != n_rel.shape[0]:
        raise ValueError(f"hits {hits.shape} and n_rel {n_rel.shape} do not align")
    if not 1 <= k <= hits.shape[1]:
        raise ValueError(f"k={k} outside 1..{hits.shape[1]} (the ranked list length)")
    if (n_rel <= 0).any():
        raise ValueError("every evaluated user needs at least one relevant item")
    return hits[:, :k].astype(np.float64)


def recall(hits: np.ndarray, n_rel: np.ndarray, k: int) -> np.ndarray:
    """Fraction of the user's relevant items found in the top ``k``."""
    h = _check(hits, n_rel, k)
    return h.sum(axis=1) / n_rel


def precision(hits: np.ndarray, n_rel: np.ndarray, k: int) -> np.ndarray:
    """Fraction of the top ``k`` that is relevant."""
    h = _check(hits, n_rel, k)
    return h.sum(axis=1) / k


def hit(hits: np.ndarray, n_rel: np.ndarray, k: int) -> np.ndarray:
    """1.0 where at least one relevant item is in the top ``k``."""
    h = _check(hits, n_rel, k)
    return (h.sum(axis=1) > 0).astype(np.float64)


def _discounts(k: int) -> np.ndarray:
    return 1.0 / np.log2(np.arange(2, k + 2, dtype=np.float64))


def ndcg(hits: np.ndarray, n_rel: np.ndarray, k: int) -> np.ndarray:
    """Binary-gain NDCG; the ideal list holds min(|relevant|, k) hits on top."""
    h = _check(hits, n_rel, k)
    disc = _discounts(k)
    dcg = h @ disc
    ideal = np.concatenate([[0.0], np.cumsum(disc)])
    idcg = ideal[np.minimum(n_rel, k)]
    return dcg / idcg


def average_precision(hits: np.ndarray, n_rel: np.ndarray, k: int) -> np.ndarray:
    """AP@k as in RecBole/MMRec: Σ_{hit ranks r} precision@r / min(|relevant|, k)."""
    h = _check(hits, n_rel, k)
    prec_at_r = np.cumsum(h, axis=1) / np.arange(1, k + 1, dtype=np.float64)
    return (prec_at_r * h).sum(axis=1) / np.minimum(n_rel, k)


# Registry: metric name (as used in keys like ``recall@20``) -> per-user function.
METRICS: dict[str, MetricFn] = {
    "recall": recall,
    "ndcg": ndcg,
    "precision": precision,
    "map": average_precision,
    "hit": hit,
}


def per_user_metrics(
    hits: np.ndarray,
    n_rel: np.ndarray,
    ks: tuple[int, ...] | list[int],
    names: list[str] | None = None,
) -> dict[str, np.ndarray]:
    """Every metric at every cut-off, keyed ``name@k``, one value per user."""
    n_rel = np.asarray(n_rel, dtype=np.int64)
    out: dict[str, np.ndarray] = {}
    for name in names or list(METRICS):
        if name not in METRICS:
            raise ValueError(f"unknown metric {name!r}; known: {sorted(METRICS)}")
        for k in ks:
            out[f"{name}@{k}"] = METRICS[name](hits, n_rel, int(k))
    return out
