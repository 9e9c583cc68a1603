"""LATTICE (Zhang et al., ACM MM 2021): mining latent item-item structure for multimedia recommendation.

Each modality's features are projected by a learned linear map, and a top-k cosine
graph of the projected features is rebuilt at the start of every epoch (and for
every evaluation). The latent item graph mixes the learned graphs, weighted by a
softmax over learned modality weights and symmetrically normalised, with the
original top-k graphs of the raw features: ``(1 - λ) learned + λ Σ_m w_m original_m``.
Item ID embeddings smoothed over it, L2-normalised, are added to the items of a
LightGCN backbone whose user-item graph is row-normalised with self-loops,
``D^-1 (A + I)``. Trained with BPR and an L2 penalty on the final batch embeddings.

Follows MMRec's ``lattice.py`` (``cf_model: lightgcn``) for what is computed, with
any number of modalities. As there, gradients reach the graph (projections,
features and modality weights) only on the batch that rebuilds it; the rest of the
epoch uses it detached. Unlike there, no graph is ever dense: the top-k neighbours
are found in row blocks and the graph is kept as a neighbour table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import numpy as np
import scipy.sparse as sp
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
    interaction_graph,
    mean_aggregation,
    part,
)
from alignrec.models.batch_rows import mean_propagation_rows
from alignrec.models.gnn_ops import rows_product
from alignrec.models.multimodal import (
    MultimodalModel,
    item_item_graph,
    modality_parameters,
)
from alignrec.models.sparse import EdgeGraph, mean_propagation

# Most similarities [rows x items] scored at once by :func:`knn_table` (8 MiB of float32): a
# block this small is reused from the allocator and stays near the cache, where one of
# 64 MiB is mapped and zero-filled by the OS every time (the kNN runs 3x faster on a CPU).
KNN_BLOCK_CELLS = 2**21


@dataclass
class LATTICEConfig(ModelConfig):
    """Hyperparameters of LATTICE (MMRec searches reg_weight in {0, 1e-5, 1e-4, 1e-3}
    and learning_rate in {1e-4, 5e-4, 1e-3, 5e-3})."""

    feat_embed_dim: int = 64  # dimension of the projected features the learned graphs use
    n_ui_layers: int = 2  # LightGCN layers of the backbone (MMRec: len(weight_size))
    n_layers: int = 1  # hops over the latent item graph
    knn_k: int = 10  # neighbours per item in every graph, the item itself included
    lambda_coeff: float = 0.9  # weight λ of the original graphs; the learned one gets 1 - λ
    reg_weight: float = 1e-4  # weight of Σ||final batch embeddings||² / 2 / B
    train_features: bool = True  # the modality tables are trainable, as in MMRec

    def __post_init__(self) -> None:
        if self.n_ui_layers < 0 or self.n_layers < 0 or self.knn_k < 1 or self.feat_embed_dim < 1:
            raise ConfigError(
                "lattice config: need n_ui_layers >= 0, n_layers >= 0, knn_k >= 1, feat_embed_dim >= 1"
            )
        if not 0.0 <= self.lambda_coeff <= 1.0 or self.reg_weight < 0:
            raise ConfigError("lattice config: need 0 <= lambda_coeff <= 1 and reg_weight >= 0")


class LatentGraph(NamedTuple):
    """The item graph ``learned + Σ_m weights[m] original_m``.

    ``learned`` row i is ``Σ_j vals[i, j] x[cols[i, j]]``: a neighbour table [I, W]
    whose values carry gradients, scaled by 1 - λ; ``weights`` [M] are λ w_m.
    """

    cols: torch.Tensor
    vals: torch.Tensor
    weights: torch.Tensor

    def detach(self) -> LatentGraph:
        return LatentGraph(self.cols, self.vals.detach(), self.weights.detach())


def random_walk_adjacency(dataset: Dataset) -> sp.csr_matrix:
    """``D^-1 (A + I)`` of the TRAIN user-item graph (users then items): LATTICE's backbone graph."""
    a = interaction_graph(dataset)
    return mean_aggregation(a + sp.eye(a.shape[0], dtype=np.float32, format="csr"))


def knn_table(x: torch.Tensor, k: int) -> torch.Tensor:
    """Column indices [I, k] of each row's k most cosine-similar rows (itself included).

    The similarities of :func:`~alignrec.similarity.topk_similarity` (``x_i . x_j /
    (|x_i| |x_j|)``, 0 for a zero row), found in row blocks of at most
    :data:`KNN_BLOCK_CELLS` similarities on ``x``'s device; the order of a row's neighbours
    is not specified.
    """
    x = x.detach()
    n = x.shape[0]
    k = min(k, n)
    # Rows normalised first, then their products, as MMRec's build_sim: one pass over the
    # [I, d] rows instead of a division and a NaN check over every [rows x I] block.
    norms = torch.linalg.vector_norm(x, dim=1, keepdim=True)
    x = torch.where(norms > 0, x / norms, torch.zeros_like(x))  # all-zero rows: no direction
    block = max(1, KNN_BLOCK_CELLS // max(n, 1))
    out = torch.empty(n, k, dtype=torch.int64, device=x.device)
    for a in range(0, n, block):
        b = min(n, a + block)
        out[a:b] = torch.topk(x[a:b] @ x.T, k, dim=1).indices
    return out


def symmetric_normalize_table(cols: torch.Tensor, vals: torch.Tensor) -> torch.Tensor:
    """``v_ij / sqrt(rowsum_i rowsum_j)`` of a neighbour table; rows with sum <= 0 get 0.

    Differentiable in ``vals`` (gathers by ``F.embedding``, deterministic backward).
    """
    deg = vals.sum(1)
    inv = torch.where(deg > 0, deg.clamp_min(1e-12).rsqrt(), torch.zeros_like(deg))
    return vals * inv[:, None] * F.embedding(cols, inv[:, None]).squeeze(-1)


class LATTICE(MultimodalModel):
    """LATTICE over every modality table of the dataset (``features["mm:<name>"]``)."""

    config_class = LATTICEConfig
    # MMRec's learning_rate_scheduler [0.96, 50].
    train_defaults: ClassVar[dict] = {"lr_decay_factor": 0.96, "lr_decay_step": 50}

    def __init__(self, dataset: Dataset, config: LATTICEConfig | None = None) -> None:
        super().__init__(dataset, config)
        cfg = self.config
        tables = self.modality_tables(dataset)
        d = cfg.embedding_size
        self.user_emb, self.item_emb = id_embeddings(self.n_users, self.n_items, d)
        self.features, self.proj = modality_parameters(
            tables, cfg.feat_embed_dim, cfg.train_features
        )
        # Softmax logits of the modality weights, equal at the start (MMRec: [0.5, 0.5]).
        self.modal_weight = nn.Parameter(torch.full((len(tables),), 1.0 / len(tables)))
        self.original_graphs = nn.ModuleList(
            EdgeGraph(item_item_graph(np.asarray(t), k=cfg.knn_k)) for t in tables.values()
        )
        self.adj = EdgeGraph(random_walk_adjacency(dataset))
        self._graph: LatentGraph | None = None  # this epoch's graph, detached after its first batch

    def _apply(self, fn, recurse=True):
        self._graph = None  # rebuilt on the new device
        return super()._apply(fn, recurse)

    def on_epoch_start(self, epoch: int) -> None:
        super().on_epoch_start(epoch)
        self._graph = None

    def latent_graph(self) -> LatentGraph:
        """The item graph from the current projections and modality weights (with gradients)."""
        cfg = self.config
        w = torch.softmax(self.modal_weight, dim=0)
        cols, vals = [], []
        for j, m in enumerate(self.modalities):
            x = F.normalize(self.proj[m](self.features[m]), dim=1)
            idx = knn_table(x, cfg.knn_k)
            cols.append(idx)
            vals.append(w[j] * (x.unsqueeze(1) * F.embedding(idx, x)).sum(-1))
        table = torch.cat(cols, dim=1)
        learned = symmetric_normalize_table(table, torch.cat(vals, dim=1))
        return LatentGraph(table, (1.0 - cfg.lambda_coeff) * learned, cfg.lambda_coeff * w)

    def item_step(self, graph: LatentGraph, h: torch.Tensor) -> torch.Tensor:
        """One hop over the latent item graph."""
        out = F.embedding_bag(graph.cols, h, per_sample_weights=graph.vals, mode="sum")
        for w, original in zip(graph.weights, self.original_graphs, strict=True):
            out = out + w * original(h)
        return out

    def item_step_rows(
        self, graph: LatentGraph, h: torch.Tensor, rows: torch.Tensor
    ) -> torch.Tensor:
        """Rows ``rows`` (distinct) of :meth:`item_step`, from those rows' neighbours only."""
        out = F.embedding_bag(
            graph.cols.index_select(0, rows),
            h,
            per_sample_weights=F.embedding(rows, graph.vals),
            mode="sum",
        )
        for w, original in zip(graph.weights, self.original_graphs, strict=True):
            out = out + w * rows_product(original, rows, h)
        return out

    def propagate(self, graph: LatentGraph) -> tuple[torch.Tensor, torch.Tensor]:
        """Final user and item embeddings: LightGCN, items plus their normalised graph smoothing."""
        h = self.item_emb
        for _ in range(self.config.n_layers):
            h = self.item_step(graph, h)
        x = torch.cat([self.user_emb, self.item_emb], dim=0)
        users, items = self.split_nodes(mean_propagation(self.adj, x, self.config.n_ui_layers))
        return users, items + F.normalize(h, dim=1)

    def loss(self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        """BPR and the L2 penalty on the rows of :meth:`propagate` that the batch reads.

        Only those rows are propagated (the last hop of each graph at the rows,
        :func:`mean_propagation_rows`): the same loss and gradients.
        """
        cfg = self.config
        uniq, inverse = torch.unique(torch.cat([pos, neg]), return_inverse=True)
        with part("content"):
            if self._graph is None:  # first batch of the epoch: rebuild, gradients reach it
                graph = self.latent_graph()
                self._graph = graph.detach()
            else:
                graph = self._graph
            h = self.item_emb
            for layer in range(cfg.n_layers):
                last = layer == cfg.n_layers - 1
                h = self.item_step_rows(graph, h, uniq) if last else self.item_step(graph, h)
            if cfg.n_layers == 0:
                h = F.embedding(uniq, h)
            h = F.normalize(h, dim=1)
        with part("graph"):
            x = torch.cat([self.user_emb, self.item_emb], dim=0)
            nodes = torch.cat([users, uniq + self.n_users])
            u, item_rows = mean_propagation_rows(self.adj, x, cfg.n_ui_layers, nodes).split(
                [len(users), len(uniq)]
            )
        with part("loss"):
            p, n = F.embedding(inverse, item_rows + h).split([len(pos), len(neg)])
            mf = bpr_loss((u * p).sum(1), (u * n).sum(1))
            return mf + cfg.reg_weight * embedding_reg(u, p, n, squared=True)

    def embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.propagate(self.latent_graph())
