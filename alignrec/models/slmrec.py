"""SLMRec (Tao et al., IEEE TMM 2022): self-supervised learning for multimedia recommendation.

Every modality (L2-normalised features, projected to d) takes the place of the item
ID embeddings in its own LightGCN pass over the user-item graph, next to the ID
pass; users keep their ID embeddings in every pass. The user and item outputs of
all passes are concatenated and mapped back to d by one linear layer each. The main
loss is InfoNCE between users and their positive items with in-batch negatives; the
self-supervised task is FAC (fine and coarse spaces): the ID view of the batch's
items is mapped into a space shared with the first modality, then chained into
coarser spaces shared with each next modality (the last of half the width), with
an InfoNCE on raw dot products in each.

Follows MMRec's ``slmrec.py`` with ``ssl_task: FAC`` and ``mm_fusion_mode: concat``
(its only working settings) for what is computed, with any number of modalities:
MMRec's image -> text chain goes through an unused audio space (two linear maps,
d -> d -> d/2) where this one maps d -> d/2 directly. All passes run as one
propagation of the side-by-side channels.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise
from typing import ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from alignrec.data.dataset import Dataset
from alignrec.errors import ConfigError
from alignrec.models.base import ModelConfig, id_embeddings, normalized_adjacency, part
from alignrec.models.batch_rows import mean_propagation_rows
from alignrec.models.layer_rows import bipartite_layer_means, propagation_layer_rows
from alignrec.models.multimodal import MultimodalModel
from alignrec.models.sparse import EdgeGraph, mean_propagation


@dataclass
class SLMRecConfig(ModelConfig):
    """Hyperparameters of SLMRec (MMRec searches learning_rate in {1e-4, 1e-3, 1e-2, 1e-1},
    ssl_alpha in {0.01, 0.05, 0.1, 0.5, 1.0} and ssl_temp in {0.1, 0.2, 0.5, 1.0})."""

    n_layers: int = 3  # LightGCN layers of every pass (MMRec: layer_num)
    temperature: float = 0.2  # temperature of the main user-item InfoNCE (MMRec: temp)
    ssl_alpha: float = 0.1  # weight of the FAC self-supervised loss
    ssl_temp: float = 0.2  # temperature of the FAC InfoNCE terms

    def __post_init__(self) -> None:
        if self.n_layers < 0 or self.ssl_alpha < 0:
            raise ConfigError("slmrec config: need n_layers >= 0 and ssl_alpha >= 0")
        if self.temperature <= 0 or self.ssl_temp <= 0 or self.embedding_size < 2:
            raise ConfigError("slmrec config: need temperatures > 0 and embedding_size >= 2")


def fac_widths(d: int, n_modalities: int) -> list[int]:
    """Width of the space shared with each modality: d, ..., d, then d // 2 for the last of several."""
    return [d] * (n_modalities - 1) + [d // 2 if n_modalities > 1 else d]


def in_batch_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    counts: torch.Tensor,
    row_counts: torch.Tensor | None = None,
) -> torch.Tensor:
    """In-batch cross-entropy over a batch whose repeated columns are given once.

    ``logits`` [R, C] score each row against the batch's distinct columns, column j
    standing for ``counts[j]`` equal columns of the batch, and ``target`` [R] is each
    row's positive column; row r stands for ``row_counts[r]`` equal rows (default 1).
    Equals the mean over the full batch of ``logsumexp(row) - positive``: a repeated
    column adds ``log count`` inside the log-sum-exp, a repeated row weighs its count.
    """
    if bool((counts == 1).all()):
        per_row = F.cross_entropy(logits, target, reduction="none")
    else:
        log_counts = counts.to(logits.dtype).log()
        per_row = F.cross_entropy(logits + log_counts, target, reduction="none")
        per_row = per_row + log_counts.index_select(0, target)
    if row_counts is None:
        return per_row.mean()
    w = row_counts.to(per_row.dtype)
    return (per_row * w).sum() / w.sum()


# Most floats of the propagated feature tables :meth:`SLMRec.loss_terms` keeps (512 MiB);
# beyond, it projects and propagates the features in every step as :meth:`SLMRec.passes`.
FEATURE_PASS_FLOATS = 2**27


def xavier_linear(n_in: int, n_out: int) -> nn.Linear:
    layer = nn.Linear(n_in, n_out)
    nn.init.xavier_uniform_(layer.weight)
    return layer


class SLMRec(MultimodalModel):
    """SLMRec (FAC) over every modality table of the dataset (``features["mm:<name>"]``)."""

    config_class = SLMRecConfig
    # MMRec's SLMRec config sets Adam's weight_decay to 1e-4.
    train_defaults: ClassVar[dict] = {"weight_decay": 1e-4}

    def __init__(self, dataset: Dataset, config: SLMRecConfig | None = None) -> None:
        super().__init__(dataset, config)
        tables = self.modality_tables(dataset)
        n_mod, d = len(tables), self.config.embedding_size
        self.user_emb, self.item_emb = id_embeddings(self.n_users, self.n_items, d)
        # Fixed L2-normalised features: buffers rebuilt from the data, not in the state dict.
        for i, table in enumerate(tables.values()):
            self.register_buffer(f"modal_features_{i}", F.normalize(table, dim=1), persistent=False)
        self.dense = nn.ModuleList([xavier_linear(t.shape[1], d) for t in tables.values()])
        self.user_out = xavier_linear(d * (n_mod + 1), d)
        self.item_out = xavier_linear(d * (n_mod + 1), d)
        widths = fac_widths(d, n_mod)
        self.fac_id = xavier_linear(d, widths[0])  # MMRec: g_i_iv
        self.fac_modal = nn.ModuleList([xavier_linear(d, w) for w in widths])  # g_v_iv, g_t_ivat
        # Chain from each space into the next, coarser one (MMRec: g_iv_iva then g_iva_ivat).
        self.fac_chain = nn.ModuleList([xavier_linear(a, b) for a, b in pairwise(widths)])
        self.adj = EdgeGraph(normalized_adjacency(dataset))
        self._feature_passes: list[torch.Tensor] | None = None

    def _apply(self, fn, recurse=True):
        self._feature_passes = None  # rebuilt on the new device
        return super()._apply(fn, recurse)

    def feature_passes(self) -> list[torch.Tensor] | None:
        """The fixed parts of the modality passes: ``P [0; F_m]`` [U + I, D_m] for every
        modality table F_m, then ``P [0; 1]`` [U + I, 1], P the mean propagation.

        A modality pass is linear in its input ``[U; F_m Wᵀ + 1 bᵀ]``, so it equals
        ``P [U; 0] + (P [0; F_m]) Wᵀ + (P [0; 1]) bᵀ``: the projection moves after the
        propagation, onto the batch's rows. None when the tables would exceed
        :data:`FEATURE_PASS_FLOATS`.
        """
        tables = [getattr(self, f"modal_features_{i}") for i in range(len(self.dense))]
        n_nodes = self.n_users + self.n_items
        if n_nodes * (sum(t.shape[1] for t in tables) + 1) > FEATURE_PASS_FLOATS:
            return None
        if self._feature_passes is None:
            ones = torch.ones(self.n_items, 1, device=tables[0].device)
            with torch.no_grad():
                self._feature_passes = [
                    mean_propagation(
                        self.adj,
                        torch.cat([t.new_zeros(self.n_users, t.shape[1]), t]),
                        self.config.n_layers,
                    )
                    for t in [*tables, ones]
                ]
        return self._feature_passes

    def pass_inputs(self) -> torch.Tensor:
        """Layer 0 of every pass, side by side: [U + I, (M+1) d], channel 0 the ID pass."""
        n_mod = len(self.modalities)
        items = [self.item_emb] + [
            dense(getattr(self, f"modal_features_{i}")) for i, dense in enumerate(self.dense)
        ]
        return torch.cat([self.user_emb.repeat(1, n_mod + 1), torch.cat(items, dim=1)], dim=0)

    def passes(self) -> tuple[torch.Tensor, torch.Tensor]:
        """LightGCN outputs of the ID pass and every modality pass, side by side.

        Users [U, (M+1) d] and items [I, (M+1) d]; channel 0 is the ID pass.
        """
        x = self.pass_inputs()
        return self.split_nodes(mean_propagation(self.adj, x, self.config.n_layers))

    def id_pass_rows(self, nodes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The ID pass ``P [U; I]`` and the user part ``P [U; 0]`` that every modality pass
        shares, at the rows ``nodes`` ([len(nodes), d] each), from one propagation of
        ``[U; I]``: the graph is bipartite, so the layers of ``[U; 0]`` are among those of
        ``[U; I]`` (:func:`bipartite_layer_means`, the same values as propagating it).
        """
        x = torch.cat([self.user_emb, self.item_emb])
        layers = propagation_layer_rows(self.adj, x, self.config.n_layers, nodes)
        return bipartite_layer_means(layers, nodes < self.n_users)

    def fac_loss(
        self, item_passes: torch.Tensor, counts: torch.Tensor | None = None
    ) -> torch.Tensor:
        """FAC over a batch's item rows [B, (M+1) d]: one InfoNCE per modality space.

        ``counts``: the rows are the batch's distinct items, row j standing for
        ``counts[j]`` items of the batch (default: each once); the loss is the batch's.
        """
        d = self.config.embedding_size
        channels = item_passes.split(d, dim=1)
        z = self.fac_id(channels[0])
        labels = torch.arange(len(z), device=z.device)
        counts = torch.ones_like(labels) if counts is None else counts
        total = torch.zeros((), device=item_passes.device)
        for j, head in enumerate(self.fac_modal):
            if j > 0:
                z = self.fac_chain[j - 1](z)
            logits = (z / self.config.ssl_temp) @ head(channels[j + 1]).T
            total = total + in_batch_cross_entropy(logits, labels, counts, counts)
        return total

    def loss(self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        return self.loss_terms(users, pos)["loss"]

    def loss_terms(self, users: torch.Tensor, items: torch.Tensor) -> dict[str, torch.Tensor]:
        """Main InfoNCE of the observed pairs, the weighted FAC loss, and their sum.

        The passes are propagated for the batch's rows only (:func:`mean_propagation_rows`:
        the rows of :meth:`passes`, with the same gradients), the modality tables projected
        after their (fixed) propagation (:meth:`feature_passes`) beside the ID pass and the
        user part they share (:meth:`id_pass_rows`), and the in-batch terms run
        over the batch's distinct items, each weighted by its count
        (:func:`in_batch_cross_entropy`): the same losses as over the full batch.
        """
        uniq, inverse, counts = torch.unique(items, return_inverse=True, return_counts=True)
        nodes = torch.cat([users, uniq + self.n_users])
        fixed = self.feature_passes()
        if fixed is None:
            with part("content"):
                x = self.pass_inputs()
            with part("graph"):
                rows = mean_propagation_rows(self.adj, x, self.config.n_layers, nodes)
        else:
            with part("graph"):
                id_pass, user_part = self.id_pass_rows(nodes)
            with part("content"):
                ones = F.embedding(nodes, fixed[-1])
                modal = [
                    user_part
                    + F.linear(F.embedding(nodes, table), dense.weight)
                    + ones * dense.bias
                    for table, dense in zip(fixed[:-1], self.dense, strict=True)
                ]
                rows = torch.cat([id_pass, *modal], dim=1)
        batch_users, item_rows = rows.split([len(users), len(uniq)])
        with part("loss"):
            u = F.normalize(self.user_out(batch_users), dim=1)
            i = F.normalize(self.item_out(item_rows), dim=1)
            # MMRec's InfoNCE of the normalised pairs, in-batch negatives, positive included
            logits = (u / self.config.temperature) @ i.T
            terms = {
                "main": in_batch_cross_entropy(logits, inverse, counts),
                "ssl": self.config.ssl_alpha * self.fac_loss(item_rows, counts),
            }
            terms["loss"] = terms["main"] + terms["ssl"]
        return terms

    def embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        user_passes, item_passes = self.passes()
        return self.user_out(user_passes), self.item_out(item_passes)
