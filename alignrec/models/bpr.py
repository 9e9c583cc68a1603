"""BPR-MF: matrix factorisation trained with the BPR pairwise loss (Rendle et al., UAI 2009)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from alignrec.data.dataset import Dataset
from alignrec.models.base import InnerProductModel, ModelConfig, bpr_loss, embedding_reg, part


@dataclass
class BPRConfig(ModelConfig):
    """Hyperparameters of BPR-MF (MMRec searches reg_weight over 2.0 … 1e-5)."""

    reg_weight: float = 1e-4  # weight of the L2 penalty on the batch's embeddings
    reg_squared: bool = False  # False: MMRec's Σ||E||/B; True: Σ||E||²/2/B


class BPR(InnerProductModel):
    """User and item ID embeddings; the score is their dot product."""

    config_class = BPRConfig

    def __init__(self, dataset: Dataset, config: BPRConfig | None = None) -> None:
        super().__init__(dataset, config)
        d = self.config.embedding_size
        self.user_embedding = nn.Embedding(self.n_users, d)
        self.item_embedding = nn.Embedding(self.n_items, d)
        nn.init.xavier_normal_(self.user_embedding.weight)
        nn.init.xavier_normal_(self.item_embedding.weight)

    def loss(self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        with part("loss"):
            u = self.user_embedding(users)
            p = self.item_embedding(pos)
            n = self.item_embedding(neg)
            mf = bpr_loss((u * p).sum(1), (u * n).sum(1))
            reg = embedding_reg(u, p, n, squared=self.config.reg_squared)
            return mf + self.config.reg_weight * reg

    def embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.user_embedding.weight, self.item_embedding.weight
