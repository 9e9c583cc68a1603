"""VBPR (He & McAuley, AAAI 2016): BPR-MF with a content factor projected from item features.

As in MMRec's "recommended version": the item vector is ``[γ_i ; E f_i + b]`` with
``f_i`` every modality table of the item concatenated, and the user vector
``[γ_u ; θ_u]`` is twice as wide, so ``score(u, i) = γ_uᵀγ_i + θ_uᵀ(E f_i + b)``. The
paper's item bias β_i and visual bias β'ᵀf_i are left out, as in MMRec.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from alignrec.data.dataset import Dataset
from alignrec.errors import ConfigError
from alignrec.models.base import ModelConfig, bpr_loss, embedding_reg, part
from alignrec.models.multimodal import MultimodalModel


@dataclass
class VBPRConfig(ModelConfig):
    """Hyperparameters of VBPR (MMRec searches reg_weight over 2.0, 1.0, 0.1 … 1e-5)."""

    reg_weight: float = (
        1e-4  # weight of MMRec's EmbLoss Σ||E||/B on the batch's user and item vectors
    )

    def __post_init__(self) -> None:
        if self.reg_weight < 0:
            raise ConfigError(f"vbpr config: 'reg_weight' must be >= 0, got {self.reg_weight}")


class VBPR(MultimodalModel):
    """ID factors plus a linear projection of the concatenated modality tables."""

    config_class = VBPRConfig

    def __init__(self, dataset: Dataset, config: VBPRConfig | None = None) -> None:
        super().__init__(dataset, config)
        features = torch.cat(list(self.modality_tables(dataset).values()), dim=1)
        d = self.config.embedding_size
        self.user_emb = nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.n_users, 2 * d)))
        self.item_emb = nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.n_items, d)))
        self.proj = nn.Linear(features.shape[1], d)  # E and b
        nn.init.xavier_normal_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)
        # Fixed inputs: moved by .to(device), rebuilt from the data rather than saved.
        self.register_buffer("item_features", features, persistent=False)

    def item_vectors(self) -> torch.Tensor:
        """[I, 2d]: the ID factor γ_i beside the projected content E f_i + b."""
        return torch.cat([self.item_emb, self.proj(self.item_features)], dim=1)

    def loss(self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        with part("content"):
            items = self.item_vectors()
        with part("loss"):
            u = F.embedding(users, self.user_emb)
            p, n = F.embedding(pos, items), F.embedding(neg, items)
            mf = bpr_loss((u * p).sum(1), (u * n).sum(1))
            return mf + self.config.reg_weight * embedding_reg(u, p, n)

    def embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.user_emb, self.item_vectors()
