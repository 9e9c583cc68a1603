"""The contract every recommender model fulfils.

A model is built from a :class:`~alignrec.data.dataset.Dataset` (it takes the
tensors it needs from it, never reads files) and a typed config dataclass. The
shared trainer only calls :meth:`RecModel.loss` on batches of (user, positive,
negative) and :meth:`RecModel.full_scores` on batches of users, plus the hooks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn
from torch.nn import functional as F

from alignrec.data.dataset import Dataset
from alignrec.similarity import sym_normalize_rows


@dataclass
class ModelConfig:
    """Base of every model config; subclasses add their own typed, documented fields."""

    embedding_size: int = 64  # dimension d of the user and item ID embeddings


class RecModel(nn.Module):
    """Base class of the recommenders.

    Subclasses set ``config_class`` and implement :meth:`loss` and
    :meth:`full_scores`. The hooks are optional.
    """

    config_class: ClassVar[type[ModelConfig]] = ModelConfig
    # Trainer settings this model's reference uses instead of TrainConfig's defaults.
    train_defaults: ClassVar[dict] = {}
    # True for models that read the item modality tables (:func:`modality_features`);
    # the benchmark skips them, saying why, on a dataset without content.
    uses_modalities: ClassVar[bool] = False

    def __init__(self, dataset: Dataset, config: ModelConfig | None = None) -> None:
        super().__init__()
        config = config if config is not None else self.config_class()
        if not isinstance(config, self.config_class):
            raise TypeError(
                f"{type(self).__name__} needs a {self.config_class.__name__}, got {type(config).__name__}"
            )
        self.config = config
        self.n_users = int(dataset.n_users)
        self.n_items = int(dataset.n_items)

    def loss(self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        """Scalar training loss of a batch of (user, positive item, negative item)."""
        raise NotImplementedError

    def full_scores(self, users: torch.Tensor) -> torch.Tensor:
        """Scores [B, n_items] of every item for a batch of users."""
        raise NotImplementedError

    def on_epoch_start(self, epoch: int) -> None:
        """Called before each training epoch (0-based)."""

    def on_eval_start(self) -> None:
        """Called (under no_grad, in eval mode) before a full evaluation; cache here."""

    def on_eval_end(self) -> None:
        """Called after a full evaluation; drop what :meth:`on_eval_start` cached."""

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device


class InnerProductModel(RecModel):
    """A model whose score is ``<user vector, item vector>``.

    Subclasses implement :meth:`embeddings`; evaluation computes them once and
    caches them, and serving exports them (:mod:`alignrec.serving`).
    """

    _cache: tuple[torch.Tensor, torch.Tensor] | None = None

    def embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Final user [U, d] and item [I, d] vectors."""
        raise NotImplementedError

    def export_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.embeddings()

    def on_epoch_start(self, epoch: int) -> None:
        self._cache = None

    def on_eval_start(self) -> None:
        with torch.no_grad():
            self._cache = self.embeddings()

    def on_eval_end(self) -> None:
        self._cache = None

    def full_scores(self, users: torch.Tensor) -> torch.Tensor:
        user_all, item_all = self._cache if self._cache is not None else self.embeddings()
        return user_all[users] @ item_all.T

    def split_nodes(self, table: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The user rows [U, ...] and item rows [I, ...] of a users-then-items node table."""
        return table[: self.n_users], table[self.n_users :]

    def node_rows(
        self, table: torch.Tensor, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The rows of a batch's users, positive and negative items in a node table.

        ``table`` is users-then-items ([U + I, ...]); ``pos`` and ``neg`` are item ids.
        Gathered by ``F.embedding``: its backward is deterministic with several threads,
        unlike advanced indexing's accumulate-put (a batch repeats ids).
        """
        return (
            F.embedding(users, table),
            F.embedding(pos + self.n_users, table),
            F.embedding(neg + self.n_users, table),
        )


def id_embeddings(n_users: int, n_items: int, dim: int) -> tuple[nn.Parameter, nn.Parameter]:
    """User [U, dim] and item [I, dim] ID embeddings, Xavier-uniform as in LightGCN and MMRec."""
    return (
        nn.Parameter(nn.init.xavier_uniform_(torch.empty(n_users, dim))),
        nn.Parameter(nn.init.xavier_uniform_(torch.empty(n_items, dim))),
    )


MODALITY_PREFIX = "mm:"


def modality_features(dataset: Dataset, model: str = "this model") -> dict[str, torch.Tensor]:
    """The item modality tables a multimodal model consumes, by modality name.

    They are the ``dataset.features`` entries keyed ``"mm:<name>"`` (``mm:text``,
    ``mm:image``, ``mm:vec:vggish`` ...; see
    :func:`alignrec.features.pipeline.with_modalities`), each float32 [n_items, D_m],
    in sorted name order. A dataset without any raises a :class:`ConfigError` that
    says so, which the benchmark turns into a skipped row.
    """
    from alignrec.errors import ConfigError

    tables = {
        key.removeprefix(MODALITY_PREFIX): torch.as_tensor(np.asarray(value, dtype=np.float32))
        for key, value in sorted(dataset.features.items())
        if key.startswith(MODALITY_PREFIX)
    }
    if not tables:
        raise ConfigError(
            f"{model} needs item modality features (dataset.features['mm:<name>']); "
            f"dataset {dataset.name!r} has none"
        )
    for name, table in tables.items():
        if table.ndim != 2 or table.shape[0] != dataset.n_items:
            raise ConfigError(
                f"modality {name!r}: expected [{dataset.n_items}, D], got {tuple(table.shape)}"
            )
    return tables


# The pieces of a training step that ``alignrec bench-speed --profile`` reports. A model wraps
# each piece of its ``loss`` in ``with part(NAME):``; backward and the optimiser step are timed
# by the profiler itself. Unlabelled time is reported as "other".
PARTS = ("graph", "content", "loss")


def part(name: str) -> torch.profiler.record_function:
    """Label a piece of a training step for the profile: ``graph`` (user-item propagation),
    ``content`` (item features: projections, item-item graphs, modality branches) or ``loss``
    (the loss terms). A ``torch.profiler.record_function``: a few microseconds when no profiler
    runs, so models keep the labels in their code."""
    if name not in PARTS:
        raise ValueError(f"unknown part {name!r}; expected one of {', '.join(PARTS)}")
    return torch.profiler.record_function(f"part:{name}")


def bpr_loss(pos_scores: torch.Tensor, neg_scores: torch.Tensor) -> torch.Tensor:
    """Mean of -log σ(s⁺ - s⁻), computed stably."""
    return -nn.functional.logsigmoid(pos_scores - neg_scores).mean()


def embedding_reg(*embeddings: torch.Tensor, squared: bool = False) -> torch.Tensor:
    """L2 penalty on batch embeddings, divided by the batch size.

    ``squared=False`` is MMRec's ``EmbLoss``: Σ ||E||_F / B. ``squared=True`` is the
    LightGCN paper's form: Σ ||E||_F² / 2 / B.
    """
    batch = embeddings[-1].shape[0]
    if squared:
        total = sum(e.pow(2).sum() for e in embeddings) / 2
    else:
        total = sum(torch.linalg.vector_norm(e) for e in embeddings)
    return total / batch


def binary_interactions(dataset: Dataset) -> sp.csr_matrix:
    """The TRAIN user x item matrix R, float32, with every observed pair set to 1 (duplicates collapse)."""
    r = dataset.matrix("train")
    r.sum_duplicates()
    r.data[:] = 1.0
    return r


def interaction_graph(dataset: Dataset) -> sp.csr_matrix:
    """Binary symmetric user-item graph A = [[0, R], [Rᵀ, 0]] of the TRAIN pairs.

    Nodes are users ``0..U-1`` then items ``U..U+I-1``; no self-loops. Every user-item
    graph of the models is a normalisation of this one.
    """
    r = binary_interactions(dataset)
    return sp.bmat([[None, r], [r.T, None]], format="csr", dtype=np.float32)


def normalized_adjacency(dataset: Dataset) -> sp.csr_matrix:
    """Symmetric-normalised bipartite adjacency D^-1/2 A D^-1/2 of the TRAIN pairs.

    A is :func:`interaction_graph`; isolated nodes get zero rows.
    """
    return sym_normalize_rows(interaction_graph(dataset))


def mean_aggregation(adjacency: sp.spmatrix) -> sp.csr_matrix:
    """D⁻¹ A: each node's mean over its neighbours (PyG ``aggr='mean'``); isolated rows stay 0."""
    deg = np.asarray(adjacency.sum(axis=1)).ravel()
    with np.errstate(divide="ignore"):
        inv = np.where(deg > 0, 1.0 / deg, 0.0).astype(np.float32)
    return (sp.diags(inv) @ adjacency).tocsr().astype(np.float32)


def to_torch_sparse(matrix: sp.spmatrix, device: str | torch.device = "cpu") -> torch.Tensor:
    """A scipy matrix as a coalesced torch sparse COO tensor."""
    coo = matrix.tocoo()
    idx = torch.from_numpy(np.vstack([coo.row, coo.col]).astype(np.int64))
    val = torch.from_numpy(coo.data.astype(np.float32))
    return torch.sparse_coo_tensor(
        idx, val, coo.shape, device=device, check_invariants=False
    ).coalesce()
