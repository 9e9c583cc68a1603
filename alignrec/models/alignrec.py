"""AlignRec stage 2 (Liu et al., CIKM 2024; docs/alignrec.md §3).

Content-gated ID embeddings, a LightGCN branch over the user-item graph, a
one-hop item-item branch over a top-k cosine graph of the stage-1 features, and
their sum. Trained with BPR plus user-item alignment (UIA), content-category
alignment (CCA, InfoNCE between the multimodal and ID views) and similarity
preservation.

Differences from the released code, on purpose: the item-item graph is built in
row blocks (the reference builds a dense I x I matrix), nothing is hard-wired to
CUDA, and model selection reads validation only.
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
    InnerProductModel,
    ModelConfig,
    bpr_loss,
    embedding_reg,
    id_embeddings,
    normalized_adjacency,
    part,
)
from alignrec.models.batch_rows import mean_propagation_rows
from alignrec.models.multimodal import (
    content_gate,
    info_nce,
    info_nce_by_id,
    item_graph_view,
    item_item_graph,
    user_item_info_nce,
)
from alignrec.models.sparse import EdgeGraph, mean_propagation

# info_nce and item_item_graph live in alignrec.models.multimodal (MGCN shares them)
# and stay importable from here.
__all__ = [
    "AlignRec",
    "AlignRecConfig",
    "final_embedding_reg",
    "info_nce",
    "info_nce_by_id",
    "item_item_graph",
    "similarity_preservation",
    "uia_loss",
]


@dataclass
class AlignRecConfig(ModelConfig):
    """Hyperparameters of AlignRec's stage 2 (defaults from the released code)."""

    features: str = "content"  # key of the item feature table in Dataset.features
    n_layers: int = 2  # LightGCN layers of the ID branch (mean over layers 0..L)
    knn_k: int = 10  # neighbours per item in the item-item graph, the item itself included
    alpha: float = 0.01  # weight α of the CCA InfoNCE terms (0 disables CCA)
    beta: float = 0.1  # weight β of similarity preservation (0 disables it)
    uia_weight: float = 0.1  # weight of UIA, 1 - mean cos(Z_u, Z_i+) (0 disables it)
    reg_weight: float = 1e-4  # weight of the L2 penalty on the batch's final embeddings
    temperature: float = 0.2  # InfoNCE temperature
    train_features: bool = True  # the feature table is a trainable parameter, as in the reference

    def __post_init__(self) -> None:
        for key in ("alpha", "beta", "uia_weight", "reg_weight"):
            if getattr(self, key) < 0:
                raise ConfigError(
                    f"alignrec config: {key!r} must be >= 0, got {getattr(self, key)}"
                )
        if self.knn_k < 1 or self.n_layers < 0 or self.temperature <= 0:
            raise ConfigError("alignrec config: need knn_k >= 1, n_layers >= 0, temperature > 0")


def uia_loss(z_u: torch.Tensor, z_i: torch.Tensor) -> torch.Tensor:
    """1 - mean cosine between users and their positive items."""
    return 1.0 - F.cosine_similarity(z_u, z_i, dim=1).mean()


def similarity_preservation(
    m_i: torch.Tensor, f_i: torch.Tensor, counts: torch.Tensor | None = None
) -> torch.Tensor:
    """|| M Mᵀ - cos(F, F) ||_F / B with the target detached (Frobenius norm, not squared).

    The B x B matrices are never built: with F̂ the row-normalised features and W the
    row multiplicities (``counts``: rows given once per distinct item, repeated
    ``counts`` times in the batch), ||M Mᵀ - F̂ F̂ᵀ||² = ||MᵀWM||² - 2 ||MᵀWF̂||² + ||F̂ᵀWF̂||²,
    thin Gram products computed in float64. Same value and gradient as the direct
    form on the repeated batch.
    """
    m = m_i.double()
    f = F.normalize(f_i.detach(), dim=1).double()
    w = torch.ones(len(m), dtype=m.dtype, device=m.device) if counts is None else counts.to(m.dtype)
    first = (m.T @ (m * w[:, None])).square().sum()
    cross = (m.T @ (f * w[:, None])).square().sum()
    const = gram_square_norm(f * w.sqrt()[:, None])  # ||F̂ᵀWF̂||², no gradient
    sq = first - 2 * cross + const
    return (sq.clamp_min(0.0).sqrt() / w.sum()).to(m_i.dtype)


# Columns per block of :func:`gram_square_norm`.
GRAM_BLOCK = 128


def gram_square_norm(x: torch.Tensor, block: int = GRAM_BLOCK) -> torch.Tensor:
    """``||xᵀx||_F² = ||x xᵀ||_F²``, the Gram on the narrow side, its upper triangle only.

    The Gram is symmetric: with its columns in blocks, the squared norm is the diagonal
    blocks' plus twice the off-diagonal ones' above it, about half the products of the
    full Gram.
    """
    if x.shape[1] > x.shape[0]:
        x = x.T
    parts = [x[:, a : a + block] for a in range(0, x.shape[1], block)]
    total = x.new_zeros(())
    for i, left in enumerate(parts):
        total = total + (left.T @ left).square().sum()
        if i + 1 < len(parts):
            total = total + 2 * (left.T @ x[:, (i + 1) * block :]).square().sum()
    return total


def final_embedding_reg(z_u: torch.Tensor, z_p: torch.Tensor, z_n: torch.Tensor) -> torch.Tensor:
    """(||Z_u||² + ||Z_i+||² + ||Z_i-||²) / 2 / B: :func:`embedding_reg` in its squared form."""
    return embedding_reg(z_u, z_p, z_n, squared=True)


class AlignRec(InnerProductModel):
    """AlignRec's stage-2 recommender over a feature table ``dataset.features[config.features]``."""

    config_class = AlignRecConfig
    # The reference decays the learning rate by 0.96 every 50 epochs.
    train_defaults: ClassVar[dict] = {"lr_decay_factor": 0.96, "lr_decay_step": 50}

    def __init__(self, dataset: Dataset, config: AlignRecConfig | None = None) -> None:
        super().__init__(dataset, config)
        cfg = self.config
        if cfg.features not in dataset.features:
            have = ", ".join(sorted(dataset.features)) or "none"
            raise ConfigError(
                f"AlignRec needs the item feature table {cfg.features!r} in dataset "
                f"{dataset.name!r} (it has: {have}); pass --features"
            )
        feats = np.asarray(dataset.features[cfg.features], dtype=np.float32)
        if feats.shape[0] != self.n_items or not np.isfinite(feats).all():
            raise ConfigError(
                f"feature table {cfg.features!r} must be finite with {self.n_items} rows, "
                f"got shape {feats.shape}"
            )
        d = cfg.embedding_size
        self.user_emb, self.item_emb = id_embeddings(self.n_users, self.n_items, d)
        self.item_features = nn.Parameter(
            torch.from_numpy(feats.copy()), requires_grad=cfg.train_features
        )
        self.proj = nn.Linear(feats.shape[1], d)  # W_m
        self.gate = nn.Linear(d, d)  # W_g, b_g

        adj = normalized_adjacency(dataset)
        self.adj = EdgeGraph(adj)
        self.r_hat = EdgeGraph(adj[: self.n_users, self.n_users :])  # R̂: user -> item block
        self.item_graph = EdgeGraph(item_item_graph(feats, k=cfg.knn_k))

    # ------------------------------------------------------------------ forward
    def id_view(self) -> torch.Tensor:
        """C: the ID embeddings of every user and item, LightGCN-propagated ([U + I, d])."""
        x = torch.cat([self.user_emb, self.item_emb], dim=0)
        return mean_propagation(self.adj, x, self.config.n_layers)

    def multimodal_view(self, nodes: torch.Tensor | None = None) -> torch.Tensor:
        """M: the content-gated item embeddings over the item graph, users as R̂ h ([U + I, d]).

        With ``nodes`` (sorted node ids), only those rows.
        """
        h = content_gate(self.item_emb, self.proj(self.item_features), self.gate)
        return item_graph_view(h, self.item_graph, self.r_hat, hops=1, nodes=nodes)

    def forward(self) -> dict[str, torch.Tensor]:
        """All views of every user and item: C (ID), M (multimodal) and Z = C + M."""
        c, mm = self.id_view(), self.multimodal_view()
        return {"C": c, "M": mm, "Z": c + mm}

    def loss(self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        return self.loss_terms(users, pos, neg)["loss"]

    def loss_terms(
        self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Every weighted loss term of a batch, and their sum under ``loss``."""
        cfg = self.config
        # The rows the terms read (users, then items): C, M and Z are computed there only.
        b = len(users)
        nodes, inverse = torch.unique(
            torch.cat([users, pos + self.n_users, neg + self.n_users]), return_inverse=True
        )
        with part("graph"):
            x = torch.cat([self.user_emb, self.item_emb], dim=0)
            c = mean_propagation_rows(self.adj, x, cfg.n_layers, nodes)
        with part("content"):
            m = self.multimodal_view(nodes)
        with part("loss"):
            at_users, at_pos = inverse[:b], inverse[b : 2 * b]
            z = c + m
            z_u, z_p, z_n = (F.embedding(i, z) for i in inverse.split(b))
            terms = {
                "bpr": bpr_loss((z_u * z_p).sum(1), (z_u * z_n).sum(1)),
                "reg": cfg.reg_weight * final_embedding_reg(z_u, z_p, z_n),
            }
            if cfg.uia_weight > 0:
                terms["uia"] = cfg.uia_weight * uia_loss(z_u, z_p)
            if cfg.alpha > 0:
                terms["cca"] = cfg.alpha * user_item_info_nce(
                    m, c, at_users, at_pos, cfg.temperature
                )
            if cfg.beta > 0:
                uniq, counts = torch.unique(at_pos, return_counts=True)
                # The target is the current (trainable) feature table, detached: in the
                # reference, v_feat shares memory with the trained embedding.
                terms["sim"] = cfg.beta * similarity_preservation(
                    m[uniq], self.item_features[nodes[uniq] - self.n_users].detach(), counts
                )
            terms["loss"] = sum(terms.values())
        return terms

    def embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Final user and item embeddings: ``score(u, i) = <users[u], items[i]>``."""
        return self.split_nodes(self.forward()["Z"])
