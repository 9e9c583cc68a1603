"""Full-ranking evaluation: score every item for every user, mask, rank, measure.

For each evaluated user (one with at least one interaction in the split) the
scorer's scores over *all* items are ranked after setting the user's *training*
items to ``-inf`` — and only those: validation items stay rankable during test
and vice versa, as in MMRec. Ranking is canonical: ties are broken by the lower
item index, so results do not depend on the batch size or on how ``torch.topk``
orders equal values.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from alignrec.data.dataset import Dataset
from alignrec.evaluation.metrics import per_user_metrics

DEFAULT_KS: tuple[int, ...] = (5, 10, 20, 50)

# Most score cells [users x items] ranked at once on a CPU. A block this small (8 MiB of
# float32) stays near the cache and is reused from the heap even where glibc's allocator is
# left untuned (alignrec.env.tune_allocator): there a block of 1,024 users x 18k items is
# mapped and zero-filled by the OS at every batch, and scoring runs 2-3x slower per user.
CPU_BLOCK_CELLS = 2**21

# A scorer maps user indices [B] to scores [B, n_items]. The evaluator masks the
# returned tensor in place, so a scorer must return a fresh tensor (a matmul or an
# indexing result), not a view of state it keeps.
Scorer = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class EvalResult:
    """Metrics of one evaluation.

    Attributes:
        metrics: mean over evaluated users, keyed ``recall@20``, ``ndcg@10`` ...
        per_user: the same keys -> float64 array of per-user values, aligned with ``users``.
        users: the evaluated user indices, ascending.
        split: the split the relevant items came from.
        seconds: wall time of the evaluation.
    """

    metrics: dict[str, float]
    per_user: dict[str, np.ndarray]
    users: np.ndarray
    split: str = "valid"
    seconds: float = 0.0

    def prefixed(self, prefix: str | None = None) -> dict[str, float]:
        """Metrics keyed ``<prefix>/<name>@<k>``; the prefix defaults to the split."""
        p = prefix or self.split
        return {f"{p}/{k}": v for k, v in self.metrics.items()}


@dataclass
class _CSR:
    """Rows of a CSR matrix restricted to an ordered list of users (torch, CPU)."""

    indptr: torch.Tensor
    indices: torch.Tensor

    @classmethod
    def of(cls, matrix: sp.csr_matrix, users: np.ndarray) -> _CSR:
        sub = matrix[users]
        sub.sort_indices()
        return cls(
            torch.from_numpy(sub.indptr.astype(np.int64)),
            torch.from_numpy(sub.indices.astype(np.int64)),
        )

    def block(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(row within block, column) pairs of rows ``start:stop``."""
        a, b = int(self.indptr[start]), int(self.indptr[stop])
        counts = self.indptr[start + 1 : stop + 1] - self.indptr[start:stop]
        rows = torch.repeat_interleave(torch.arange(stop - start), counts)
        return rows, self.indices[a:b]

    def lengths(self) -> torch.Tensor:
        return self.indptr[1:] - self.indptr[:-1]


def canonical_topk(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top ``k`` (values, indices) of each row, ties broken by the lower index.

    ``torch.topk`` alone leaves the order of equal scores unspecified. Ties inside
    the top ``k`` are reordered by index; rows whose k-th value is tied with the
    (k+1)-th are re-ranked with a stable full sort (rare with learned scores).
    """
    n = scores.shape[1]
    k = min(k, n)
    extra = min(k + 1, n)
    vals, idx = torch.topk(scores, extra, dim=1, largest=True, sorted=True)
    amb = torch.nonzero(vals[:, k - 1] == vals[:, extra - 1]).flatten() if extra > k else None
    vals, idx = vals[:, :k], idx[:, :k]
    # order ties inside the top k by index: sort by index, then stably by value
    order = torch.argsort(idx, dim=1)
    idx = idx.gather(1, order)
    vals = vals.gather(1, order)
    vals, order = torch.sort(vals, dim=1, descending=True, stable=True)
    idx = idx.gather(1, order)
    if amb is not None and amb.numel():
        sub_vals, sub_idx = torch.sort(scores[amb], dim=1, descending=True, stable=True)
        vals[amb] = sub_vals[:, :k]
        idx[amb] = sub_idx[:, :k]
    return vals, idx


class Evaluator:
    """Full-ranking evaluator bound to one dataset and split.

    Builds the per-user masks once, so that evaluating every epoch costs only the
    scoring, masking and top-K of each batch. With ``group`` (a
    :class:`alignrec.training.distributed.Group`) each process ranks every
    ``world_size``-th batch of users and the hits are gathered, so all processes return
    the same result.
    """

    def __init__(
        self,
        dataset: Dataset,
        split: str = "valid",
        ks: tuple[int, ...] | list[int] = DEFAULT_KS,
        batch_size: int = 1024,
        device: str | torch.device = "cpu",
        group: Any = None,
    ) -> None:
        if split == "train":
            raise ValueError("evaluate on 'valid' or 'test'; training items are what gets masked")
        if not ks or any(int(k) <= 0 for k in ks):
            raise ValueError(f"ks must be positive integers, got {ks!r}")
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.split = split
        self.group = group  # a distributed Group: each process ranks its share of the batches
        self.ks = tuple(int(k) for k in ks)
        self.batch_size = int(batch_size)
        self.device = torch.device(device)
        self.n_items = dataset.n_items
        relevant = dataset.matrix(split)
        relevant.sum_duplicates()
        n_rel = np.diff(relevant.indptr)
        self.users = np.flatnonzero(n_rel > 0).astype(np.int64)
        self.n_rel = n_rel[self.users].astype(np.int64)
        self._relevant = _CSR.of(relevant, self.users)
        self._train = _CSR.of(dataset.matrix("train"), self.users)

    def block_size(self) -> int:
        """Users scored at once: ``batch_size``, on a CPU at most :data:`CPU_BLOCK_CELLS` scores."""
        if self.device.type != "cpu":
            return self.batch_size
        return max(1, min(self.batch_size, CPU_BLOCK_CELLS // max(self.n_items, 1)))

    def ranked_hits(self, scorer: Scorer) -> np.ndarray:
        """Boolean [n_users, K_max]: is the item at each rank relevant."""
        k_max = min(max(self.ks), self.n_items)
        out = np.zeros((len(self.users), k_max), dtype=bool)
        users_t = torch.from_numpy(self.users)
        block = self.block_size()
        starts = range(0, len(self.users), block)
        if self.group is not None:
            starts = starts[self.group.rank :: self.group.world_size]
        for start in starts:
            stop = min(start + block, len(self.users))
            scores = scorer(users_t[start:stop].to(self.device))
            if scores.shape != (stop - start, self.n_items):
                raise ValueError(
                    f"scorer returned shape {tuple(scores.shape)}, expected {(stop - start, self.n_items)}"
                )
            scores = scores.detach().float()  # masked in place: see ``Scorer``
            dev = scores.device
            rows, cols = self._train.block(start, stop)
            scores[rows.to(dev), cols.to(dev)] = -torch.inf
            vals, top = canonical_topk(scores, k_max)
            if torch.isnan(vals).any():  # topk ranks NaN above everything
                raise ValueError("scorer returned NaN scores")
            # relevant (row, item) pairs as sorted keys row * n_items + item; look the
            # ranked ones up instead of building a dense [block, n_items] mask
            rows, cols = self._relevant.block(start, stop)
            relevant = (rows * self.n_items + cols).to(dev)
            ranked = torch.arange(stop - start, device=dev)[:, None] * self.n_items + top
            found = torch.searchsorted(relevant, ranked).clamp_(max=len(relevant) - 1)
            hits = (relevant[found] == ranked) & (vals > -torch.inf)  # masked never count
            out[start:stop] = hits.cpu().numpy()
        if self.group is not None:
            out = self.group.merge_rows(out, self.device)
        return out

    @torch.no_grad()
    def evaluate(self, scorer: Scorer) -> EvalResult:
        """Rank all items for every evaluated user and compute every metric at every K."""
        t0 = time.perf_counter()
        hits = self.ranked_hits(scorer)
        if hits.shape[1] < max(self.ks):  # fewer items than the largest K: pad with misses
            hits = np.pad(hits, ((0, 0), (0, max(self.ks) - hits.shape[1])))
        per_user = per_user_metrics(hits, self.n_rel, self.ks)
        metrics = {k: float(v.mean()) if len(v) else 0.0 for k, v in per_user.items()}
        return EvalResult(
            metrics=metrics,
            per_user=per_user,
            users=self.users.copy(),
            split=self.split,
            seconds=time.perf_counter() - t0,
        )


def evaluate(
    scorer: Scorer,
    dataset: Dataset,
    split: str = "valid",
    ks: tuple[int, ...] | list[int] = DEFAULT_KS,
    batch_size: int = 1024,
    device: str | torch.device = "cpu",
) -> EvalResult:
    """Full-ranking evaluation of ``scorer`` on one split of ``dataset``.

    Args:
        scorer: maps a LongTensor of user indices [B] to scores [B, n_items].
        dataset: provides the training items (masked) and the split's relevant items.
        split: ``"valid"`` or ``"test"``.
        ks: cut-offs.
        batch_size: users scored at once; results do not depend on it.
        device: where the user index tensors are sent before calling ``scorer``.
    """
    return Evaluator(dataset, split, ks, batch_size, device).evaluate(scorer)


def evaluate_scores(
    scores: np.ndarray | torch.Tensor,
    dataset: Dataset,
    split: str = "valid",
    ks: tuple[int, ...] | list[int] = DEFAULT_KS,
    batch_size: int = 1024,
) -> EvalResult:
    """Evaluate a precomputed dense score matrix [n_users, n_items]."""
    table = torch.as_tensor(scores)
    if table.shape != (dataset.n_users, dataset.n_items):
        raise ValueError(f"scores {tuple(table.shape)} != {(dataset.n_users, dataset.n_items)}")
    return evaluate(lambda u: table[u.cpu()], dataset, split, ks, batch_size)


__all__ = ["DEFAULT_KS", "EvalResult", "Evaluator", "canonical_topk", "evaluate", "evaluate_scores"]
