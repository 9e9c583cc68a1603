"""MGCN (Yu et al., ACM MM 2023): multi-view graph convolution for multimedia recommendation.

Three views of every user and item: a LightGCN user-item view of the ID embeddings,
and per modality an item-item view of the ID embeddings purified by that modality's
content (a sigmoid gate) and smoothed over its top-k item graph. A behaviour-aware
fuser splits the modality views into an attention-weighted common part and
user-preference-gated specific parts. Trained with BPR, an L2 penalty on the final
embeddings and InfoNCE between the fused side view and the ID view.

Follows MMRec's ``mgcn.py`` for what is computed, with any number of modalities
(MMRec's image + text is the case of two), the item graphs built in row blocks,
and nothing tied to CUDA. AlignRec's stage 2 is this model with the modality
channels merged into one, so both share :mod:`alignrec.models.multimodal`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from alignrec.data.dataset import Dataset
from alignrec.errors import ConfigError
from alignrec.models.base import (
    ModelConfig,
    bpr_loss,
    embedding_reg,
    id_embeddings,
    normalized_adjacency,
    part,
)
from alignrec.models.batch_rows import mean_propagation_rows
from alignrec.models.multimodal import (
    MultimodalModel,
    content_gate,
    item_graph_view,
    item_item_graph,
    modality_parameters,
    user_item_info_nce,
)
from alignrec.models.sparse import EdgeGraph, mean_propagation


@dataclass
class MGCNConfig(ModelConfig):
    """Hyperparameters of MGCN (MMRec's defaults; MMRec searches cl_weight in {1e-3, 1e-2, 1e-1})."""

    n_ui_layers: int = 2  # LightGCN layers of the user-item view (mean over layers 0..L)
    n_layers: int = 1  # hops over each modality's item-item graph
    knn_k: int = 10  # neighbours per item in each item graph, the item itself included
    reg_weight: float = 1e-4  # weight of Σ||final batch embeddings||² / 2 / B
    cl_weight: float = 0.01  # weight of the InfoNCE between side and ID views (MMRec: cl_loss)
    temperature: float = 0.2  # InfoNCE temperature (fixed at 0.2 in MMRec)
    train_features: bool = True  # the modality tables are trainable, as in MMRec

    def __post_init__(self) -> None:
        if self.n_ui_layers < 0 or self.n_layers < 0 or self.knn_k < 1:
            raise ConfigError("mgcn config: need n_ui_layers >= 0, n_layers >= 0, knn_k >= 1")
        if self.reg_weight < 0 or self.cl_weight < 0 or self.temperature <= 0:
            raise ConfigError("mgcn config: need reg_weight >= 0, cl_weight >= 0, temperature > 0")


class MGCN(MultimodalModel):
    """MGCN over every modality table of the dataset (``features["mm:<name>"]``)."""

    config_class = MGCNConfig
    # MMRec's learning_rate_scheduler [0.96, 50].
    train_defaults: ClassVar[dict] = {"lr_decay_factor": 0.96, "lr_decay_step": 50}

    def __init__(self, dataset: Dataset, config: MGCNConfig | None = None) -> None:
        super().__init__(dataset, config)
        cfg = self.config
        tables = self.modality_tables(dataset)
        d = cfg.embedding_size
        self.user_emb, self.item_emb = id_embeddings(self.n_users, self.n_items, d)
        self.features, self.proj = modality_parameters(tables, d, cfg.train_features)
        self.purifier = nn.ModuleDict({m: nn.Linear(d, d) for m in tables})  # gate_v, gate_t
        self.query = nn.Sequential(nn.Linear(d, d), nn.Tanh(), nn.Linear(d, 1, bias=False))
        self.prefer = nn.ModuleDict({m: nn.Linear(d, d) for m in tables})  # gate_*_prefer

        adj = normalized_adjacency(dataset)
        self.adj = EdgeGraph(adj)
        self.r_hat = EdgeGraph(adj[: self.n_users, self.n_users :])  # R̂: user -> item block
        self.item_graphs = nn.ModuleList(
            EdgeGraph(item_item_graph(np.asarray(t), k=cfg.knn_k)) for t in tables.values()
        )

    def modality_views(self, nodes: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Per modality, the purified item-item view ``[R̂ h_m; h_m]`` ([U + I, d]).

        With ``nodes`` (sorted node ids), only those rows.
        """
        return [
            item_graph_view(
                content_gate(self.item_emb, self.proj[m](self.features[m]), self.purifier[m]),
                graph,
                self.r_hat,
                hops=self.config.n_layers,
                nodes=nodes,
            )
            for m, graph in zip(self.modalities, self.item_graphs, strict=True)
        ]

    def fuse(self, views: list[torch.Tensor], content: torch.Tensor) -> torch.Tensor:
        """Behaviour-aware fuser: common part plus preference-gated specific parts.

        ``common = Σ_m a_m view_m`` with attention ``a = softmax_m(query(view_m))``;
        ``specific_m = sigmoid(prefer_m(content)) ⊙ (view_m - common)``; the side view
        is their mean, ``(common + Σ_m specific_m) / (M + 1)``.
        """
        stacked = torch.stack(views, dim=0)  # [M, N, d]
        attention = torch.softmax(self.query(stacked), dim=0)  # [M, N, 1]
        common = (attention * stacked).sum(0)
        side = common
        for m, view in zip(self.modalities, views, strict=True):
            side = side + torch.sigmoid(self.prefer[m](content)) * (view - common)
        return side / (len(views) + 1)

    def forward(self) -> dict[str, torch.Tensor]:
        """The ID view ``C``, the fused side view ``S`` and the final ``Z = C + S`` ([U + I, d])."""
        x = torch.cat([self.user_emb, self.item_emb], dim=0)
        content = mean_propagation(self.adj, x, self.config.n_ui_layers)
        side = self.fuse(self.modality_views(), content)
        return {"C": content, "S": side, "Z": content + side}

    def loss(self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        return self.loss_terms(users, pos, neg)["loss"]

    def loss_terms(
        self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """The weighted BPR, L2 and contrastive terms of a batch, and their sum under ``loss``."""
        cfg = self.config
        # The rows the terms read: the fuser works row by row, so only they are fused.
        b = len(users)
        nodes, inverse = torch.unique(
            torch.cat([users, pos + self.n_users, neg + self.n_users]), return_inverse=True
        )
        with part("graph"):
            x = torch.cat([self.user_emb, self.item_emb], dim=0)
            content = mean_propagation_rows(self.adj, x, cfg.n_ui_layers, nodes)
        with part("content"):
            side = self.fuse(self.modality_views(nodes), content)
        with part("loss"):
            z = content + side
            z_u, z_p, z_n = (F.embedding(i, z) for i in inverse.split(b))
            terms = {
                "bpr": bpr_loss((z_u * z_p).sum(1), (z_u * z_n).sum(1)),
                "reg": cfg.reg_weight * embedding_reg(z_u, z_p, z_n, squared=True),
            }
            if cfg.cl_weight > 0:
                terms["cl"] = cfg.cl_weight * user_item_info_nce(
                    side, content, inverse[:b], inverse[b : 2 * b], cfg.temperature
                )
            terms["loss"] = sum(terms.values())
        return terms

    def embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.split_nodes(self.forward()["Z"])
