"""Building blocks shared by the multimodal recommenders.

:class:`MultimodalModel` is the base of every model that reads the item modality
tables, and :class:`BranchModel` the frame that MMGCN and GRCN share. AlignRec's
stage 2 is MGCN with its modality channels merged, and LATTICE, FREEDOM, BM3 and
SLMRec reuse the same pieces: the modality tables as parameters with a linear map
each, the block-built top-k item-item graph, MGCN's content-gated ID branch over
it, and InfoNCE with in-batch negatives.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn
from torch.nn import functional as F

from alignrec.data.dataset import Dataset
from alignrec.models.base import InnerProductModel, ModelConfig, bpr_loss, modality_features
from alignrec.models.gnn_ops import rows_product
from alignrec.models.sparse import EdgeGraph, Propagate
from alignrec.similarity import sym_normalize_rows, topk_similarity


def item_item_graph(
    features: np.ndarray, k: int = 10, block_size: int | None = None
) -> sp.csr_matrix:
    """Top-k cosine graph of the item features, directed, with symmetric degree normalisation.

    Row i keeps its k most similar items (itself included) with their cosine weights;
    then ``w_ij / sqrt(rowsum_i * rowsum_j)``. This is MGCN's, LATTICE's original and
    AlignRec's item graph, built in row blocks (never a dense I x I matrix).
    """
    return sym_normalize_rows(topk_similarity(features, k=k, shrink=0.0, block_size=block_size))


def modality_parameters(
    tables: dict[str, torch.Tensor], dim: int, trainable: bool
) -> tuple[nn.ParameterDict, nn.ModuleDict]:
    """The modality tables as parameters, and one linear map from each to ``dim``.

    The tables are trainable (as in MMRec) or frozen, and saved with the model; both
    containers are keyed by modality name, like ``tables``.
    """
    features = nn.ParameterDict(
        {
            name: nn.Parameter(table.clone(), requires_grad=trainable)
            for name, table in tables.items()
        }
    )
    projections = nn.ModuleDict({name: nn.Linear(t.shape[1], dim) for name, t in tables.items()})
    return features, projections


def content_gate(item_emb: torch.Tensor, content: torch.Tensor, gate: nn.Module) -> torch.Tensor:
    """MGCN's behaviour-guided purifier: ``E_i ⊙ sigmoid(gate(content))``.

    The content (a modality projected to d) decides which ID dimensions pass.
    """
    return item_emb * torch.sigmoid(gate(content))


def item_graph_view(
    h: torch.Tensor,
    item_graph: Propagate,
    user_items: EdgeGraph,
    hops: int = 1,
    nodes: torch.Tensor | None = None,
) -> torch.Tensor:
    """MGCN's item-item view: ``hops`` steps of the item graph, users as ``R̂ h``.

    Returns ``[R̂ h; h]`` ([U + I, d]), in the node order of the user-item graph; with
    ``nodes`` (sorted node ids) only those rows, the users' from their rows of ``R̂``.
    """
    for _ in range(hops):
        h = item_graph(h)
    if nodes is None:
        return torch.cat([user_items(h), h], dim=0)
    n_users = user_items.shape[0]
    split = int(torch.searchsorted(nodes, n_users))
    users = rows_product(user_items, nodes[:split], h)
    return torch.cat([users, h.index_select(0, nodes[split:] - n_users)], dim=0)


def info_nce(view1: torch.Tensor, view2: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean InfoNCE with in-batch negatives; both views L2-normalised, the positive in the denominator."""
    v1, v2 = F.normalize(view1, dim=1), F.normalize(view2, dim=1)
    logits = v1 @ v2.T / temperature
    return (torch.logsumexp(logits, dim=1) - logits.diagonal()).mean()


def info_nce_by_id(
    table1: torch.Tensor, table2: torch.Tensor, ids: torch.Tensor, temperature: float
) -> torch.Tensor:
    """``info_nce(table1[ids], table2[ids])``, computed over the distinct ids only.

    A batch repeats ids (2,048 positives drawn from a small catalogue repeat a lot), and
    a repeated id contributes identical rows and columns. Weighting each distinct id by
    its count (a ``log count`` offset inside the log-sum-exp, a count weight on its row)
    gives exactly the same loss and gradient on a U x U matrix instead of B x B.
    """
    uniq, counts = torch.unique(ids, return_counts=True)
    v1 = F.normalize(table1[uniq], dim=1)
    v2 = F.normalize(table2[uniq], dim=1)
    return _WeightedInfoNCE.apply(v1, v2, counts.to(v1.dtype), temperature)


class _WeightedInfoNCE(torch.autograd.Function):
    """``Σ_i w_i (log Σ_j w_j exp(l_ij) - l_ii) / Σ w`` for ``l = v1 v2ᵀ / t``.

    The forward runs torch's log-sum-exp step by step in one U x U buffer (the same
    operations, so the same value) and keeps the exponentials; the backward is then
    ``G = diag(c) (P - I)`` with ``P`` the weighted softmax and ``c_i = g w_i / (t Σ w)``,
    and ``G v2``, ``Gᵀ v1``: one U x U pass instead of autograd's five.
    """

    @staticmethod
    def forward(ctx, v1: torch.Tensor, v2: torch.Tensor, w: torch.Tensor, temperature: float):  # type: ignore[override]
        logits = v1 @ v2.T
        logits.div_(temperature)
        diag = logits.diagonal().clone()
        logits.add_(w.log()[None, :])
        shift = logits.amax(dim=1, keepdim=True)
        shift.masked_fill_(shift.abs() == torch.inf, 0.0)  # as torch.logsumexp does
        e = logits.sub_(shift).exp_()  # w_j exp(l_ij - shift_i), in place
        denom = e.sum(dim=1)
        per_row = denom.log().add_(shift.squeeze(1)) - diag
        total = w.sum()
        ctx.temperature = temperature
        ctx.save_for_backward(v1, v2, w, total, e, denom)
        return (per_row * w).sum() / total

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        v1, v2, w, total, e, denom = ctx.saved_tensors
        coef = grad * w / (total * ctx.temperature)  # c_i
        g = e * (coef / denom)[:, None]
        g.diagonal().sub_(coef)
        grad_v1 = g @ v2 if ctx.needs_input_grad[0] else None
        grad_v2 = g.T @ v1 if ctx.needs_input_grad[1] else None
        return grad_v1, grad_v2, None, None


def user_item_info_nce(
    view1: torch.Tensor,
    view2: torch.Tensor,
    users: torch.Tensor,
    items: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """InfoNCE between two views of the batch's positive items plus that of its users.

    MGCN's and AlignRec's contrastive term; ``users`` and ``items`` are row ids in the
    tables ``view1`` and ``view2`` (node tables, users then items, with item ids offset
    by U; or the rows of a batch's nodes only).
    """
    item_term = info_nce_by_id(view1, view2, items, temperature)
    return item_term + info_nce_by_id(view1, view2, users, temperature)


class MultimodalModel(InnerProductModel):
    """An inner-product model that reads the item modality tables."""

    uses_modalities: ClassVar[bool] = True

    def modality_tables(self, dataset: Dataset) -> dict[str, torch.Tensor]:
        """The dataset's modality tables (:func:`modality_features`); their names go to ``modalities``."""
        tables = modality_features(dataset, type(self).__name__)
        self.modalities = list(tables)
        return tables


def paired_square_mean(
    table: torch.Tensor, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor
) -> torch.Tensor:
    """MMRec's ``(E[u, u]² + E[i⁺, i⁻]²).mean()`` over a batch, by gathers.

    MMGCN and GRCN repeat each user for its positive and its negative item; the mean
    over those 2B rows is ``mean(E_u²) + (mean(E_i⁺²) + mean(E_i⁻²)) / 2``. ``pos`` and
    ``neg`` index ``table`` directly (offset them by U for a user-then-item table).
    """
    u, p, n = F.embedding(users, table), F.embedding(pos, table), F.embedding(neg, table)
    return u.square().mean() + (p.square().mean() + n.square().mean()) / 2


class BranchModel(MultimodalModel):
    """MMGCN's and GRCN's frame: one branch module per modality beside node ID embeddings.

    :meth:`forward` gives every user and item vector as one node table [U + I, D]
    (users first). The loss is BPR on it plus ``reg_weight`` times MMRec's squared ID
    embeddings of the batch (:func:`paired_square_mean`) and :meth:`preference_reg`.
    """

    def __init__(self, dataset: Dataset, config: ModelConfig | None = None) -> None:
        super().__init__(dataset, config)
        tables = self.modality_tables(dataset)
        n_nodes = self.n_users + self.n_items
        self.id_embedding = nn.Parameter(
            nn.init.xavier_normal_(torch.empty(n_nodes, self.config.embedding_size))
        )
        self.branches = nn.ModuleList(self.make_branch(table) for table in tables.values())

    def make_branch(self, features: torch.Tensor) -> nn.Module:
        """The branch module of one modality table [I, D_m]."""
        raise NotImplementedError

    def preference_reg(self, users: torch.Tensor) -> torch.Tensor:
        """The squared user preferences of the branches that the loss penalises."""
        raise NotImplementedError

    def forward(self) -> torch.Tensor:
        """The node table [U + I, D] of every user and item vector."""
        raise NotImplementedError

    def loss(self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        u, p, n = self.node_rows(self.forward(), users, pos, neg)
        mf = bpr_loss((u * p).sum(1), (u * n).sum(1))
        reg = paired_square_mean(self.id_embedding, users, pos + self.n_users, neg + self.n_users)
        return mf + self.config.reg_weight * (reg + self.preference_reg(users))

    def embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.split_nodes(self.forward())
