"""LightGCN (He et al., SIGIR 2020): ID embeddings smoothed over the user-item graph."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

from alignrec.data.dataset import Dataset
from alignrec.models.base import (
    InnerProductModel,
    ModelConfig,
    bpr_loss,
    embedding_reg,
    id_embeddings,
    normalized_adjacency,
    part,
)
from alignrec.models.sparse import EdgeGraph, mean_propagation


@dataclass
class LightGCNConfig(ModelConfig):
    """Hyperparameters of LightGCN (MMRec searches n_layers 1–4, reg_weight 1e-2 … 1e-6)."""

    n_layers: int = 2  # propagation layers L; the final embedding is the mean of layers 0..L
    reg_weight: float = 1e-4  # weight of the L2 penalty on the batch's layer-0 (ego) embeddings
    reg_squared: bool = False  # False: MMRec's Σ||E||/B; True: the paper's Σ||E||²/2/B


class LightGCN(InnerProductModel):
    """Users and items propagated ``n_layers`` times over D^-1/2 A D^-1/2 of the train graph."""

    config_class = LightGCNConfig

    def __init__(self, dataset: Dataset, config: LightGCNConfig | None = None) -> None:
        super().__init__(dataset, config)
        if self.config.n_layers < 0:
            raise ValueError(f"n_layers must be >= 0, got {self.config.n_layers}")
        d = self.config.embedding_size
        self.user_emb, self.item_emb = id_embeddings(self.n_users, self.n_items, d)
        # Â, not a parameter and not in the state dict (rebuilt from the data).
        self.adj = EdgeGraph(normalized_adjacency(dataset))

    def propagate(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Final (user, item) embeddings: the mean of layers 0..L."""
        x = torch.cat([self.user_emb, self.item_emb], dim=0)
        return self.split_nodes(mean_propagation(self.adj, x, self.config.n_layers))

    def loss(self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        # F.embedding gathers: their backward is deterministic with several threads,
        # unlike advanced indexing's accumulate-put.
        with part("graph"):
            user_all, item_all = self.propagate()
        with part("loss"):
            return self._loss(user_all, item_all, users, pos, neg)

    def _loss(
        self,
        user_all: torch.Tensor,
        item_all: torch.Tensor,
        users: torch.Tensor,
        pos: torch.Tensor,
        neg: torch.Tensor,
    ) -> torch.Tensor:
        u = F.embedding(users, user_all)
        p, n = F.embedding(pos, item_all), F.embedding(neg, item_all)
        mf = bpr_loss((u * p).sum(1), (u * n).sum(1))
        reg = embedding_reg(
            F.embedding(users, self.user_emb),
            F.embedding(pos, self.item_emb),
            F.embedding(neg, self.item_emb),
            squared=self.config.reg_squared,
        )
        return mf + self.config.reg_weight * reg

    def embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.propagate()
