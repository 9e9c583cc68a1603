"""GRCN (Wei et al., ACM MM 2020): ID embeddings propagated over a graph refined by content.

Graph refining layer, per modality m: item content ``f_i = normalize(leaky(W_m x_i + b))``
and a user prototype ``p_u`` (a trained preference table) refined by ``n_layers``
routing iterations, ``p_u ← normalize(p_u + Σ_{i∈N(u)} α_ui f_i)`` with α the softmax
over the user's items of ``p_uᵀf_i``. Every node's content representation is then
``x + Σ_{j∈N} α_xj x_j`` over the whole graph, and the attention α^m of each edge
(softmax over the receiver's neighbours) is its affinity in modality m.

Graph convolution: the edge r ← s gets the weight
``relu(max_m α^m_rs c^m_s)`` (c: a trained confidence per node and modality; relu is
the soft pruning), and the normalised ID embeddings are propagated ``id_layers``
times with those weights, summing the layers. The final vector of a node is
``[ID part ; content part of each modality]``; scores are inner products.

Difference from MMRec's code, on purpose: MMRec's routing sends messages from users
to items under today's PyG edge convention, so user prototypes never move; here they
attend over their items as the paper describes. The confidence of the sending node
scales each edge, as in MMRec. Only the batch's rows of the user prototypes are
regularised (MMRec adds the whole image table once more).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import scipy.sparse as sp
import torch
from torch import nn
from torch.nn import functional as F

from alignrec.data.dataset import Dataset
from alignrec.errors import ConfigError
from alignrec.models.base import ModelConfig, bpr_loss, interaction_graph, part
from alignrec.models.edge_values import normalize_rows, sddmm, weighted_matmul
from alignrec.models.gnn_ops import gather_senders, rows_product
from alignrec.models.multimodal import BranchModel, paired_square_mean
from alignrec.models.sparse import EdgeGraph, layer_sum


@dataclass
class GRCNConfig(ModelConfig):
    """Hyperparameters of GRCN.

    MMRec searches reg_weight ∈ {0.1, 0.01, 1e-3, 1e-4, 1e-5} and learning_rate
    ∈ {1, 0.1, 0.01, 1e-3, 1e-4}.
    """

    latent_embedding: int = 64  # dimension of each modality's content representation (dim_C)
    n_layers: int = 3  # routing iterations that refine the user prototypes
    id_layers: int = 2  # weighted propagation layers of the ID embeddings (MMRec: 2)
    reg_weight: float = 1e-4  # weight of the squared ID embeddings and user prototypes of the batch

    def __post_init__(self) -> None:
        if self.latent_embedding < 1 or self.n_layers < 0 or self.id_layers < 0:
            raise ConfigError(
                "grcn config: need latent_embedding >= 1, n_layers >= 0 and id_layers >= 0"
            )
        if self.reg_weight < 0:
            raise ConfigError(f"grcn config: 'reg_weight' must be >= 0, got {self.reg_weight}")


class GRCNBranch(nn.Module):
    """The graph refining layer of one modality."""

    def __init__(self, features: torch.Tensor, n_users: int, config: GRCNConfig) -> None:
        super().__init__()
        dim = config.latent_embedding
        self.n_routing = config.n_layers
        self.register_buffer("features", features, persistent=False)
        self.preference = nn.Parameter(nn.init.xavier_normal_(torch.empty(n_users, dim)))
        self.mlp = nn.Linear(features.shape[1], dim)
        nn.init.xavier_normal_(self.mlp.weight)

    def refine(self, user_items: EdgeGraph, graph: EdgeGraph) -> tuple[torch.Tensor, torch.Tensor]:
        """Node features x [U + I, dim] and the attention [E] of every edge of ``graph``.

        ``graph`` is ``[[0, R], [Rᵀ, 0]]`` and ``user_items`` its block R: the affinity
        ``<x_r, x_s>`` of an edge is that of its reverse, so it is computed once per
        user-item pair (user rows come first in CSR order, then item rows in R's
        transposed order).
        """
        content = normalize_rows(F.leaky_relu(self.mlp(self.features)))
        prototype = normalize_rows(self.preference)
        for _ in range(self.n_routing):
            alpha = user_items.row_softmax(sddmm(user_items, prototype, content))
            prototype = normalize_rows(prototype + weighted_matmul(user_items, alpha, content))
        affinity = sddmm(user_items, prototype, content)
        affinity = torch.cat([affinity, affinity.index_select(0, user_items.t_perm)])
        return torch.cat([prototype, content], dim=0), graph.row_softmax(affinity)

    def forward(self, user_items: EdgeGraph, graph: EdgeGraph) -> tuple[torch.Tensor, torch.Tensor]:
        """Content representation [U + I, dim] and per-edge attention [E] of ``graph``."""
        x, alpha = self.refine(user_items, graph)
        return x + weighted_matmul(graph, alpha, x), alpha


class GRCN(BranchModel):
    """ID graph convolution over the content-refined graph, beside the content views."""

    config_class = GRCNConfig

    def __init__(self, dataset: Dataset, config: GRCNConfig | None = None) -> None:
        super().__init__(dataset, config)
        n_nodes = self.n_users + self.n_items
        self.confidence = nn.Parameter(
            nn.init.xavier_normal_(torch.empty(n_nodes, len(self.modalities)))
        )
        adjacency = interaction_graph(dataset)
        self.graph = EdgeGraph(adjacency)
        self.user_items = EdgeGraph(sp.csr_matrix(adjacency[: self.n_users, self.n_users :]))

    def make_branch(self, features: torch.Tensor) -> GRCNBranch:
        return GRCNBranch(features, self.n_users, self.config)

    def preference_reg(self, users: torch.Tensor) -> torch.Tensor:
        return sum(
            F.embedding(users, branch.preference).square().mean() for branch in self.branches
        )

    def edge_weights(self, alphas: list[torch.Tensor]) -> torch.Tensor:
        """Refined weight [E] of every edge: relu(max_m α^m · confidence^m of the sender)."""
        confidence = gather_senders(self.graph, self.confidence)
        return torch.relu((torch.stack(alphas, dim=1) * confidence).max(dim=1).values)

    def forward(self) -> torch.Tensor:
        """Representations [U + I, d + M · dim_C]."""
        reps, alphas = zip(*(b(self.user_items, self.graph) for b in self.branches), strict=True)
        weights = self.edge_weights(list(alphas))
        x = normalize_rows(self.id_embedding)
        ids = layer_sum(partial(weighted_matmul, self.graph, weights), x, self.config.id_layers)
        return torch.cat([ids, *reps], dim=1)

    def loss(self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        """:class:`BranchModel`'s loss, with the last product of each propagation computed
        on the batch's nodes only (the rows the loss reads)."""
        batch = torch.cat([users, pos + self.n_users, neg + self.n_users])
        nodes, inverse = torch.unique(batch, return_inverse=True)
        with part("content"):
            refined = [b.refine(self.user_items, self.graph) for b in self.branches]
            reps = [
                F.embedding(nodes, x) + rows_product(self.graph, nodes, x, alpha)
                for x, alpha in refined
            ]
            weights = self.edge_weights([alpha for _, alpha in refined])
        with part("graph"):
            ids = self._id_rows(nodes, weights)
        with part("loss"):
            u, p, n = F.embedding(inverse, torch.cat([ids, *reps], dim=1)).split(len(users))
            mf = bpr_loss((u * p).sum(1), (u * n).sum(1))
            reg = paired_square_mean(
                self.id_embedding, users, pos + self.n_users, neg + self.n_users
            )
            return mf + self.config.reg_weight * (reg + self.preference_reg(users))

    def _id_rows(self, nodes: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """The rows ``nodes`` of the ID part of :meth:`forward` (its layer sum)."""
        x = normalize_rows(self.id_embedding)
        if self.config.id_layers == 0:
            return F.embedding(nodes, x)
        total = F.embedding(nodes, x)
        for _ in range(self.config.id_layers - 1):
            x = weighted_matmul(self.graph, weights, x)
            total = total + F.embedding(nodes, x)
        return total + rows_product(self.graph, nodes, x, weights)
