"""The three intermediate protocols that judge an item feature table without training.

- :func:`zero_shot`: a user's vector is the mean of their training items' (L2-normalised)
  features; items are ranked by cosine similarity to it.
- :func:`item_cf`: an item-item similarity from the features, sparsified to the top-k
  neighbours of each item (MMRec's ItemKNNCBF: ``x_i.x_j / (|x_i||x_j| + shrink)``,
  k = 10, shrink = 10, the item itself included), built in row blocks so no I x I dense
  matrix ever exists; ``s(u, j) = sum_{i in train(u)} sim(i, j)``.
- :func:`mask_modality`: remove one modality from a fixed, seeded fraction of the items,
  rebuild the features from what remains and rerun the two protocols above.

Every protocol returns validation and test Recall and NDCG at 10 and 20 from
:func:`alignrec.evaluation.evaluate` (full ranking, training items masked). Metric
keys carry the split: ``valid/recall@20``, ``test/ndcg@10``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from alignrec.errors import ConfigError
from alignrec.features.sets import FeatureSet, check_table, l2_normalize
from alignrec.similarity import topk_similarity

PROTOCOLS = ("zero-shot", "item-cf", "mask-modality")
DEFAULT_KS = (10, 20)
DEFAULT_SPLITS = ("valid", "test")
Scorer = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class ProtocolResult:
    """Metrics of one protocol on one feature set.

    Attributes:
        protocol: ``zero-shot``, ``item-cf`` or ``mask-modality``.
        features: name of the feature set.
        metrics: ``<split>/<metric>@<k>`` -> value; for mask-modality the keys are
            prefixed with the inner protocol (``zero-shot/test/recall@20``) and hold
            the masked results.
        seconds: wall time of the protocol.
        details: protocol-specific extras (for mask-modality: the unmasked metrics,
            the relative loss per key, the modality, the fraction and masked count).
    """

    protocol: str
    features: str
    metrics: dict[str, float]
    seconds: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "protocol": self.protocol,
            "features": self.features,
            "metrics": self.metrics,
            "seconds": self.seconds,
            **self.details,
        }


def _evaluate(scorer: Scorer, dataset, split: str, ks: Sequence[int]) -> dict[str, float]:
    from alignrec.evaluation import evaluate

    return dict(evaluate(scorer, dataset, split=split, ks=tuple(ks)).metrics)


def _metrics(scorer: Scorer, dataset, ks: Sequence[int], splits: Sequence[str]) -> dict[str, float]:
    out: dict[str, float] = {}
    for split in splits:
        res = _evaluate(scorer, dataset, split, ks)
        for k in ks:
            for name in ("recall", "ndcg"):
                key = f"{name}@{k}"
                if key not in res:
                    raise ConfigError(f"the evaluator returned no {key!r} (got {sorted(res)})")
                out[f"{split}/{key}"] = float(res[key])
    return out


def user_profiles(features: np.ndarray, train: sp.csr_matrix) -> np.ndarray:
    """Mean of the L2-normalised features of each user's training items, float32 [n_users, D].

    A user with no training item gets a zero vector (and therefore all-zero scores).
    """
    f = l2_normalize(features)
    counts = np.asarray(train.sum(axis=1)).ravel()
    prof = np.asarray(train @ f, dtype=np.float32)
    np.divide(prof, counts[:, None], out=prof, where=counts[:, None] > 0)
    return prof


def zero_shot_scorer(features: np.ndarray, dataset) -> Scorer:
    """Scores = cosine(user profile, item feature) for a batch of users."""
    f = torch.from_numpy(l2_normalize(check_table(features, dataset.n_items)))
    u = torch.from_numpy(l2_normalize(user_profiles(features, dataset.matrix("train"))))

    def score(users: torch.Tensor) -> torch.Tensor:
        return u[users.long()] @ f.T

    return score


def knn_similarity(
    features: np.ndarray,
    k: int = 10,
    shrink: float = 10.0,
    block_size: int | None = None,
) -> sp.csr_matrix:
    """Top-k item-item similarity as a sparse [I, I] CSR, computed in row blocks.

    ``sim(i, j) = x_i.x_j / (|x_i| |x_j| + shrink)`` (MMRec ItemKNNCBF); each row keeps its
    k largest entries, the item itself included, unsymmetrised. ``block_size`` rows are
    scored at a time (default: blocks of about 64 MB), so memory stays
    O(block_size x I + I x k). Shares :func:`alignrec.similarity.topk_similarity` with
    AlignRec's item-item graph.
    """
    x = check_table(features, len(features))
    mat = topk_similarity(x, k=k, shrink=shrink, block_size=block_size)
    mat.eliminate_zeros()
    return mat


def item_cf_scorer(
    features: np.ndarray,
    dataset,
    k: int = 10,
    shrink: float = 10.0,
    block_size: int | None = None,
) -> Scorer:
    """Scores = (R_train @ S)[users] with S the top-k similarity (sparse matmul)."""
    sim = knn_similarity(check_table(features, dataset.n_items), k, shrink, block_size)
    scores = (dataset.matrix("train").astype(np.float32) @ sim).tocsr()

    def score(users: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(scores[users.long().numpy()].toarray())

    return score


def _as_table(features: np.ndarray | FeatureSet, dataset) -> tuple[np.ndarray, str]:
    if isinstance(features, FeatureSet):
        return check_table(features.table, dataset.n_items, features.name), features.name
    return check_table(features, dataset.n_items), "features"


def zero_shot(
    dataset,
    features: np.ndarray | FeatureSet,
    *,
    ks: Sequence[int] = DEFAULT_KS,
    splits: Sequence[str] = DEFAULT_SPLITS,
) -> ProtocolResult:
    """Zero-shot protocol: rank by cosine to the mean of the user's training items."""
    t0 = time.perf_counter()
    table, name = _as_table(features, dataset)
    metrics = _metrics(zero_shot_scorer(table, dataset), dataset, ks, splits)
    return ProtocolResult("zero-shot", name, metrics, time.perf_counter() - t0)


def item_cf(
    dataset,
    features: np.ndarray | FeatureSet,
    *,
    k: int = 10,
    shrink: float = 10.0,
    block_size: int | None = None,
    ks: Sequence[int] = DEFAULT_KS,
    splits: Sequence[str] = DEFAULT_SPLITS,
) -> ProtocolResult:
    """Item-CF protocol: sum of top-k feature similarities to the user's training items."""
    t0 = time.perf_counter()
    table, name = _as_table(features, dataset)
    scorer = item_cf_scorer(table, dataset, k, shrink, block_size)
    metrics = _metrics(scorer, dataset, ks, splits)
    return ProtocolResult(
        "item-cf", name, metrics, time.perf_counter() - t0, {"k": k, "shrink": shrink}
    )


def masked_items(n_items: int, fraction: float, seed: int = 0) -> np.ndarray:
    """Bool [n_items]: the first ``round(fraction * n_items)`` items of a seeded permutation."""
    if not 0.0 <= fraction <= 1.0:
        raise ConfigError(f"mask fraction must be in [0, 1], got {fraction}")
    perm = np.random.default_rng(seed).permutation(n_items)
    flags = np.zeros(n_items, bool)
    flags[perm[: int(round(fraction * n_items))]] = True
    return flags


def mask_modality(
    dataset,
    features: FeatureSet,
    *,
    modality: str = "image",
    fraction: float = 0.5,
    seed: int = 0,
    k: int = 10,
    shrink: float = 10.0,
    ks: Sequence[int] = DEFAULT_KS,
    splits: Sequence[str] = DEFAULT_SPLITS,
) -> ProtocolResult:
    """Mask-modality protocol: drop ``modality`` from a seeded ``fraction`` of the items.

    The masked items' features are rebuilt from what they still have (``features.without``),
    then zero-shot and item-CF run on the rebuilt table. ``details`` holds the unmasked
    metrics and ``relative_loss`` = 1 - masked / unmasked per metric.
    """
    t0 = time.perf_counter()
    if not isinstance(features, FeatureSet):
        raise ConfigError(
            "mask-modality needs a FeatureSet that can be rebuilt (raw:<set> or fusion)"
        )
    flags = masked_items(dataset.n_items, fraction, seed)
    table = check_table(features.without({modality: flags}), dataset.n_items, features.name)
    full = check_table(features.table, dataset.n_items, features.name)
    metrics: dict[str, float] = {}
    unmasked: dict[str, float] = {}
    for proto, fn in (("zero-shot", zero_shot_scorer), ("item-cf", None)):
        for src, dst in ((table, metrics), (full, unmasked)):
            scorer = fn(src, dataset) if fn else item_cf_scorer(src, dataset, k, shrink)
            for key, v in _metrics(scorer, dataset, ks, splits).items():
                dst[f"{proto}/{key}"] = v
    loss = {key: (1.0 - metrics[key] / unmasked[key]) if unmasked[key] else 0.0 for key in metrics}
    details = {
        "modality": modality,
        "fraction": fraction,
        "seed": seed,
        "masked_items": int(flags.sum()),
        "unmasked": unmasked,
        "relative_loss": loss,
    }
    return ProtocolResult(
        "mask-modality", features.name, metrics, time.perf_counter() - t0, details
    )


def run_protocol(name: str, dataset, features: FeatureSet, **kwargs: Any) -> ProtocolResult:
    """Dispatch by protocol name (``zero-shot``, ``item-cf``, ``mask-modality``)."""
    if name == "zero-shot":
        return zero_shot(dataset, features, **kwargs)
    if name == "item-cf":
        return item_cf(dataset, features, **kwargs)
    if name == "mask-modality":
        return mask_modality(dataset, features, **kwargs)
    raise ConfigError(f"unknown protocol {name!r}; expected one of {', '.join(PROTOCOLS)}")
