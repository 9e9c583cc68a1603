"""BM3 (Zhou et al., WWW 2023): bootstrap latent representations for multimodal recommendation.

No negative sampling: a LightGCN encoder gives online user and item embeddings
(item: graph output plus its ID embedding), each modality is projected to the same
space, and a shared predictor maps every online view onto a target that is a
dropout-perturbed, gradient-stopped copy of another view. The losses are
1 - cosine between predicted and target views: user -> item and item -> user on the
observed pairs, and per modality the modality -> item (inter-modality) and
modality -> its own perturbed copy (intra-modality) alignments. Scores are the dot
products of the predicted user and item embeddings.

Follows MMRec's ``bm3.py`` for what is computed, with any number of modalities
(MMRec's image + text is the case of two).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from alignrec.data.dataset import Dataset
from alignrec.errors import ConfigError
from alignrec.models.base import (
    ModelConfig,
    embedding_reg,
    id_embeddings,
    normalized_adjacency,
    part,
)
from alignrec.models.multimodal import (
    MultimodalModel,
    modality_parameters,
)
from alignrec.models.sparse import EdgeGraph, mean_propagation


@dataclass
class BM3Config(ModelConfig):
    """Hyperparameters of BM3.

    MMRec searches n_layers in {1, 2}, dropout in {0.3, 0.5} and reg_weight in {0.1, 0.01};
    the defaults are the authors' best on Baby.
    """

    n_layers: int = 1  # LightGCN layers (mean over layers 0..L)
    dropout: float = 0.5  # dropout rate that perturbs the target views
    reg_weight: float = 0.1  # weight of (||all users|| + ||all items||) / n_items (MMRec's EmbLoss)
    cl_weight: float = 2.0  # weight of the per-modality alignment terms
    train_features: bool = True  # the modality tables are trainable, as in MMRec

    def __post_init__(self) -> None:
        if self.n_layers < 0 or not 0.0 <= self.dropout < 1.0:
            raise ConfigError("bm3 config: need n_layers >= 0 and 0 <= dropout < 1")
        if self.reg_weight < 0 or self.cl_weight < 0:
            raise ConfigError("bm3 config: need reg_weight >= 0 and cl_weight >= 0")


def cosine_loss(online: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - mean cosine between the online views and their (gradient-stopped) targets."""
    return 1.0 - F.cosine_similarity(online, target.detach(), dim=-1).mean()


class BM3(MultimodalModel):
    """BM3 over every modality table of the dataset (``features["mm:<name>"]``)."""

    config_class = BM3Config

    def __init__(self, dataset: Dataset, config: BM3Config | None = None) -> None:
        super().__init__(dataset, config)
        cfg = self.config
        tables = self.modality_tables(dataset)
        d = cfg.embedding_size
        self.user_emb, self.item_emb = id_embeddings(self.n_users, self.n_items, d)
        self.predictor = nn.Linear(d, d)
        nn.init.xavier_normal_(self.predictor.weight)
        self.features, self.proj = modality_parameters(tables, d, cfg.train_features)
        for layer in self.proj.values():
            nn.init.xavier_normal_(layer.weight)
        self.adj = EdgeGraph(normalized_adjacency(dataset))

    def encode(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Online user and item embeddings before the predictor: LightGCN, items plus their ID."""
        x = torch.cat([self.user_emb, self.item_emb], dim=0)
        users, items = self.split_nodes(mean_propagation(self.adj, x, self.config.n_layers))
        return users, items + self.item_emb

    def loss(self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        return self.loss_terms(users, pos)["loss"]

    def loss_terms(self, users: torch.Tensor, items: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every weighted loss term of a batch of observed (user, item) pairs, and their sum.

        Targets are dropped out with the global torch generator (seeded by the trainer).
        """
        cfg = self.config
        with part("graph"):
            u_all, i_all = self.encode()
        # Targets are perturbed on the batch's distinct users and items only: one dropout
        # mask per row, as when the whole tables are (MMRec), for a fraction of the random
        # draws (those of the whole tables took half of the step on a CPU).
        uniq, inverse = torch.unique(items, return_inverse=True)
        with part("loss"):
            with torch.no_grad():
                batch_users, user_inverse = torch.unique(users, return_inverse=True)
                u_tgt = F.dropout(F.embedding(batch_users, u_all), cfg.dropout)[user_inverse]
                i_tgt = F.dropout(F.embedding(uniq, i_all), cfg.dropout)[inverse]
            u_online = self.predictor(F.embedding(users, u_all))
            i_online = self.predictor(F.embedding(items, i_all))
            terms = {
                "ui": cosine_loss(u_online, i_tgt) + cosine_loss(i_online, u_tgt),
                "reg": cfg.reg_weight * embedding_reg(u_all, i_all),
            }
        # Modalities are projected for the batch's distinct items only, likewise.
        with part("content"):
            projected = {
                m: self.proj[m](F.embedding(uniq, self.features[m])) for m in self.modalities
            }
        with part("loss"):
            inter = intra = torch.zeros((), device=u_all.device)
            for m in self.modalities:
                feats = projected[m]
                with torch.no_grad():
                    target = F.dropout(feats, cfg.dropout)
                f_online = self.predictor(F.embedding(inverse, feats))
                inter = inter + cosine_loss(f_online, i_tgt)
                intra = intra + cosine_loss(f_online, F.embedding(inverse, target))
            terms["modal"] = cfg.cl_weight * (inter + intra)
            terms["loss"] = sum(terms.values())
        return terms

    def embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        u, i = self.encode()
        return self.predictor(u), self.predictor(i)
