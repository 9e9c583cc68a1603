"""DualGNN (Wang et al., IEEE TMM 2021): modality graphs fused per user, then a user-user graph.

Single-modal representation learning, per modality m: ``x = normalize([P_m ; MLP_m(f_m)])``
(P_m a trained user preference table, MLP_m two linear layers with a leaky ReLU)
propagated over the symmetric-normalised user-item graph Â, keeping
``x + Âx + … + Â^L x``. Multi-modal fusion: a user is ``Σ_m w_um x_m`` with trained
per-user modality weights (softmax-initialised), an item ``Σ_m x_m``. User
co-occurrence graph: each user adds the softmax-weighted sum of its ``user_knn_k``
users with the most train items in common. Scores are inner products; the loss is
MMRec's BPR in base 2 plus an L2 penalty on the batch's preferences and on the fusion
weights.

Differences from MMRec's code, on purpose: the user graph is built from the train
split here (MMRec reads a file made by a separate script) and is not resampled, so a
user with fewer than k neighbours weights the ones it has instead of random repeats;
each modality keeps its own representation in the fusion (MMRec adds the text one
into the image one in place first); MMRec's per-item weights and modality-dropped
edge lists never reach the scores and are left out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn
from torch.nn import functional as F

from alignrec.data.dataset import Dataset
from alignrec.errors import ConfigError
from alignrec.models.base import (
    ModelConfig,
    binary_interactions,
    bpr_loss,
    normalized_adjacency,
    part,
)
from alignrec.models.gnn_ops import rows_product
from alignrec.models.multimodal import MultimodalModel
from alignrec.models.sparse import EdgeGraph, layer_sum
from alignrec.similarity import BLOCK_FLOATS


@dataclass
class DualGNNConfig(ModelConfig):
    """Hyperparameters of DualGNN.

    MMRec searches reg_weight ∈ {0.1, 0.01, 1e-3, 1e-4, 1e-5} and learning_rate
    ∈ {0.1, 0.01, 1e-3, 1e-4, 1e-5}.
    """

    n_layers: int = 2  # propagation steps over the user-item graph (x + Âx + Â²x)
    user_knn_k: int = 40  # co-occurring users each user aggregates (MMRec: 40)
    reg_weight: float = 1e-4  # weight of the squared batch preferences and user fusion weights

    def __post_init__(self) -> None:
        if self.n_layers < 0 or self.user_knn_k < 1 or self.reg_weight < 0:
            raise ConfigError(
                "dualgnn config: need n_layers >= 0, user_knn_k >= 1 and reg_weight >= 0"
            )


def user_cooccurrence_graph(
    train: sp.spmatrix, k: int, block_size: int | None = None
) -> sp.csr_matrix:
    """Row-stochastic user-user graph [U, U]: each user's top-``k`` co-occurring users.

    ``train`` is the binary user x item matrix (:func:`binary_interactions`). The count
    of user v for user u is the number of train items they share (u itself excluded);
    the ``k`` largest counts are kept (ties to the lower user index) and weighted by
    their softmax. A user who shares no item has an empty row. R Rᵀ is computed in row
    blocks, so memory is O(block × U + U × k).
    """
    r = sp.csr_matrix(train, dtype=np.float32)
    n = r.shape[0]
    rt = r.T.tocsr()
    if block_size is None:
        block_size = max(1, BLOCK_FLOATS // max(n, 1))
    rows, cols, counts = [], [], []
    for start in range(0, n, block_size):
        block = (r[start : start + block_size] @ rt).tocoo()
        row, col, count = block.row.astype(np.int64) + start, block.col.astype(np.int64), block.data
        keep = (row != col) & (count > 0)
        row, col, count = row[keep], col[keep], count[keep]
        order = np.lexsort((col, -count, row))  # by user, then count descending, then index
        row, col, count = row[order], col[order], count[order]
        rank = np.arange(len(row)) - np.searchsorted(row, row, side="left")
        top = rank < k
        rows.append(row[top])
        cols.append(col[top])
        counts.append(count[top].astype(np.float64))
    row, col, count = np.concatenate(rows), np.concatenate(cols), np.concatenate(counts)
    first = np.searchsorted(row, row, side="left")  # each row's largest count comes first
    e = np.exp(count - count[first])
    weights = e / np.bincount(row, weights=e, minlength=n)[row]
    return sp.csr_matrix((weights.astype(np.float32), (row, col)), shape=(n, n))


class DualGNNBranch(nn.Module):
    """Single-modal representation learning for one modality."""

    def __init__(self, features: torch.Tensor, n_users: int, dim: int, n_layers: int) -> None:
        super().__init__()
        self.n_layers = n_layers
        self.register_buffer("features", features, persistent=False)
        self.preference = nn.Parameter(nn.init.xavier_normal_(torch.empty(n_users, dim)))
        self.mlp = nn.Linear(features.shape[1], 4 * dim)
        self.mlp_out = nn.Linear(4 * dim, dim)

    def forward(self, adjacency: EdgeGraph) -> torch.Tensor:
        """This modality's representation [U + I, dim]: x + Âx + … + Â^L x."""
        with part("content"):
            content = self.mlp_out(F.leaky_relu(self.mlp(self.features)))
            x = F.normalize(torch.cat([self.preference, content], dim=0), dim=1)
        with part("graph"):
            return layer_sum(adjacency, x, self.n_layers)


class DualGNN(MultimodalModel):
    """Per-modality graph branches, fused with per-user weights, smoothed over co-occurring users."""

    config_class = DualGNNConfig

    def __init__(self, dataset: Dataset, config: DualGNNConfig | None = None) -> None:
        super().__init__(dataset, config)
        cfg = self.config
        tables = self.modality_tables(dataset)
        self.branches = nn.ModuleList(
            DualGNNBranch(table, self.n_users, cfg.embedding_size, cfg.n_layers)
            for table in tables.values()
        )
        init = nn.init.xavier_normal_(torch.empty(self.n_users, len(tables)))
        self.user_weight = nn.Parameter(torch.softmax(init, dim=1))  # w_um
        self.adjacency = EdgeGraph(normalized_adjacency(dataset))
        self.user_graph = EdgeGraph(
            user_cooccurrence_graph(binary_interactions(dataset), cfg.user_knn_k)
        )

    def fused(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Users [U, d] and items [I, d] after the multi-modal fusion, before the user graph."""
        reps = torch.stack([branch(self.adjacency) for branch in self.branches], dim=2)
        users, items = self.split_nodes(reps)
        return (users * self.user_weight[:, None, :]).sum(2), items.sum(2)

    def embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        users, items = self.fused()
        with part("graph"):
            return users + self.user_graph(users), items

    def loss(self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        user_all, item_all = self.fused()
        with part("graph"):  # the user graph on the batch's users only
            batch_users, inverse = torch.unique(users, return_inverse=True)
            smoothed = F.embedding(batch_users, user_all) + rows_product(
                self.user_graph, batch_users, user_all
            )
        with part("loss"):
            return self._loss(F.embedding(inverse, smoothed), item_all, users, pos, neg)

    def _loss(
        self,
        u: torch.Tensor,
        item_all: torch.Tensor,
        users: torch.Tensor,
        pos: torch.Tensor,
        neg: torch.Tensor,
    ) -> torch.Tensor:
        p, n = F.embedding(pos, item_all), F.embedding(neg, item_all)
        # MMRec's -mean log2 σ(s⁺ - s⁻): the usual BPR loss over ln 2.
        mf = bpr_loss((u * p).sum(1), (u * n).sum(1)) / math.log(2)
        reg = sum(F.embedding(users, b.preference).square().mean() for b in self.branches)
        reg = reg + self.user_weight.square().mean()
        return mf + self.config.reg_weight * reg
