"""FREEDOM (Zhou & Shen, ACM MM 2023): freezing and denoising graph structures.

Two graphs. The item-item graph is built once from the raw modality features and
frozen: per modality a top-k cosine graph with unit weights and symmetric degree
normalisation (so each neighbour weighs 1/k), mixed across modalities with fixed
weights; the item ID embeddings are smoothed over it. The user-item graph is
denoised by degree-sensitive edge pruning: every epoch keeps a fraction of the
training edges, drawn without replacement with probability proportional to
1/sqrt(d_u d_i), and re-normalises what is kept. Evaluation uses the full graph.
The loss is BPR on the final embeddings plus, per modality, BPR between the users
and the projected modality features of the items.

Follows MMRec's ``freedom.py`` for what is computed, with any number of
modalities, the kNN graphs built in row blocks, and the pruning draws taken on the
CPU from the global torch generator (seeded by the trainer), so a seed prunes the
same edges on every device.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
from torch.nn import functional as F

from alignrec.data.dataset import Dataset
from alignrec.errors import ConfigError
from alignrec.models.base import (
    ModelConfig,
    binary_interactions,
    bpr_loss,
    id_embeddings,
    normalized_adjacency,
    part,
)
from alignrec.models.batch_rows import mean_propagation_rows
from alignrec.models.gnn_ops import rows_product
from alignrec.models.multimodal import (
    MultimodalModel,
    modality_parameters,
)
from alignrec.models.sparse import EdgeGraph, mean_propagation
from alignrec.similarity import sym_normalize_rows, topk_similarity


@dataclass
class FREEDOMConfig(ModelConfig):
    """Hyperparameters of FREEDOM (MMRec searches dropout in {0.8, 0.9}, reg_weight in {0, 1e-5, 1e-4, 1e-3})."""

    n_ui_layers: int = 2  # LightGCN layers over the user-item graph (mean over layers 0..L)
    n_mm_layers: int = 1  # hops over the frozen item-item graph
    knn_k: int = 10  # neighbours per item in each modality's graph, the item itself included
    mm_image_weight: float = 0.1  # share of the 'image' graph; the other modalities split the rest
    dropout: float = 0.8  # fraction of user-item edges pruned each epoch (0 keeps them all)
    reg_weight: float = 1e-4  # weight of the per-modality BPR terms (users vs projected features)
    train_features: bool = True  # the modality tables are trainable, as in MMRec

    def __post_init__(self) -> None:
        if self.n_ui_layers < 0 or self.n_mm_layers < 0 or self.knn_k < 1:
            raise ConfigError("freedom config: need n_ui_layers >= 0, n_mm_layers >= 0, knn_k >= 1")
        if not 0.0 <= self.dropout < 1.0 or not 0.0 <= self.mm_image_weight <= 1.0:
            raise ConfigError("freedom config: need 0 <= dropout < 1 and 0 <= mm_image_weight <= 1")
        if self.reg_weight < 0:
            raise ConfigError(f"freedom config: reg_weight must be >= 0, got {self.reg_weight}")


def modality_weights(names: list[str], image_weight: float) -> list[float]:
    """Mixing weights of the modality graphs, summing to 1.

    MMRec's rule for image + text (image ``w``, text ``1 - w``), extended: an ``image``
    modality gets ``image_weight`` and the others share the rest equally; without an
    image modality, or with it alone, all weigh the same.
    """
    if "image" not in names or len(names) == 1:
        return [1.0 / len(names)] * len(names)
    rest = (1.0 - image_weight) / (len(names) - 1)
    return [image_weight if name == "image" else rest for name in names]


def frozen_item_graph(tables: list[np.ndarray], weights: list[float], k: int) -> sp.csr_matrix:
    """``Σ_m w_m S_m``: per modality the top-k cosine graph with unit weights, symmetrically normalised."""
    total = None
    for table, w in zip(tables, weights, strict=True):
        knn = topk_similarity(table, k=k)
        knn.data[:] = 1.0
        part = w * sym_normalize_rows(knn)
        total = part if total is None else total + part
    return total.tocsr().astype(np.float32)


def degree_weights(rows: np.ndarray, cols: np.ndarray, n_rows: int, n_cols: int) -> np.ndarray:
    """``1 / sqrt(d_u d_i)`` of each edge (u, i), degrees counted over the given edges."""
    deg_r = np.bincount(rows, minlength=n_rows).astype(np.float64) + 1e-7
    deg_c = np.bincount(cols, minlength=n_cols).astype(np.float64) + 1e-7
    return (deg_r[rows] ** -0.5 * deg_c[cols] ** -0.5).astype(np.float32)


def prune_edges(
    rows: np.ndarray, cols: np.ndarray, n_rows: int, n_cols: int, dropout: float
) -> np.ndarray:
    """Indices of the edges kept by degree-sensitive pruning.

    ``int(E * (1 - dropout))`` edges drawn without replacement with probability
    proportional to ``1 / sqrt(d_u d_i)`` (edges between rarely seen users and items
    are kept more often), from the global torch generator.
    """
    keep = max(1, int(len(rows) * (1.0 - dropout)))
    probs = torch.from_numpy(degree_weights(rows, cols, n_rows, n_cols))
    return torch.multinomial(probs, keep, replacement=False).numpy()


def bipartite_adjacency(
    rows: np.ndarray, cols: np.ndarray, n_users: int, n_items: int
) -> sp.csr_matrix:
    """D^-1/2 A D^-1/2 of the user-item graph made of the given edges (nodes: users, then items)."""
    vals = degree_weights(rows, cols, n_users, n_items)
    src = np.concatenate([rows, cols + n_users])
    dst = np.concatenate([cols + n_users, rows])
    n = n_users + n_items
    return sp.csr_matrix((np.concatenate([vals, vals]), (src, dst)), shape=(n, n), dtype=np.float32)


class FREEDOM(MultimodalModel):
    """FREEDOM over every modality table of the dataset (``features["mm:<name>"]``)."""

    config_class = FREEDOMConfig

    def __init__(self, dataset: Dataset, config: FREEDOMConfig | None = None) -> None:
        super().__init__(dataset, config)
        cfg = self.config
        tables = self.modality_tables(dataset)
        d = cfg.embedding_size
        self.user_emb, self.item_emb = id_embeddings(self.n_users, self.n_items, d)
        self.features, self.proj = modality_parameters(tables, d, cfg.train_features)

        weights = modality_weights(self.modalities, cfg.mm_image_weight)
        graph = frozen_item_graph([np.asarray(t) for t in tables.values()], weights, cfg.knn_k)
        self.item_graph = EdgeGraph(graph)
        coo = binary_interactions(dataset).tocoo()
        self.edge_rows, self.edge_cols = coo.row.astype(np.int64), coo.col.astype(np.int64)
        self.adj = EdgeGraph(normalized_adjacency(dataset))
        self.train_adj = self.adj  # the pruned graph once an epoch has started

    def on_epoch_start(self, epoch: int) -> None:
        super().on_epoch_start(epoch)
        if self.config.dropout <= 0:
            self.train_adj = self.adj
            return
        kept = prune_edges(
            self.edge_rows, self.edge_cols, self.n_users, self.n_items, self.config.dropout
        )
        pruned = bipartite_adjacency(
            self.edge_rows[kept], self.edge_cols[kept], self.n_users, self.n_items
        )
        self.train_adj = EdgeGraph(pruned).to(self.device)

    def propagate(self, adj: EdgeGraph) -> tuple[torch.Tensor, torch.Tensor]:
        """User and item embeddings over ``adj``; items add their frozen-graph smoothing."""
        h = self.item_emb
        for _ in range(self.config.n_mm_layers):
            h = self.item_graph(h)
        x = torch.cat([self.user_emb, self.item_emb], dim=0)
        users, items = self.split_nodes(mean_propagation(adj, x, self.config.n_ui_layers))
        return users, items + h

    def loss(self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        return self.loss_terms(users, pos, neg)["loss"]

    def loss_terms(
        self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """BPR over the pruned graph, the weighted per-modality BPR terms, and their sum.

        Only the batch's rows are propagated (the last product of each graph at the rows,
        :func:`mean_propagation_rows`), and each distinct item's features are projected
        once: the rows of :meth:`propagate`, with the same gradients.
        """
        cfg = self.config
        uniq, inverse = torch.unique(torch.cat([pos, neg]), return_inverse=True)
        with part("graph"):
            x = torch.cat([self.user_emb, self.item_emb], dim=0)
            nodes = torch.cat([users, uniq + self.n_users])
            u, item_rows = mean_propagation_rows(self.train_adj, x, cfg.n_ui_layers, nodes).split(
                [len(users), len(uniq)]
            )
        with part("content"):
            h = self.item_emb
            for hop in range(cfg.n_mm_layers):
                last = hop == cfg.n_mm_layers - 1
                h = rows_product(self.item_graph, uniq, h) if last else self.item_graph(h)
            if cfg.n_mm_layers == 0:
                h = F.embedding(uniq, h)
            p, n = F.embedding(inverse, item_rows + h).split([len(pos), len(neg)])
            feats = [self.proj[m](F.embedding(uniq, self.features[m])) for m in self.modalities]
        with part("loss"):
            modal = torch.zeros((), device=u.device)
            for f in feats:
                f_p, f_n = F.embedding(inverse, f).split([len(pos), len(neg)])
                modal = modal + bpr_loss((u * f_p).sum(1), (u * f_n).sum(1))
            terms = {
                "bpr": bpr_loss((u * p).sum(1), (u * n).sum(1)),
                "modal": cfg.reg_weight * modal,
            }
            terms["loss"] = terms["bpr"] + terms["modal"]
        return terms

    def embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.propagate(self.adj)
