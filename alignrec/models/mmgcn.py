"""MMGCN (Wei et al., ACM MM 2019): one graph convolution network per modality.

Each modality m has its own user preference table P_m and runs ``n_layers`` layers
over the user-item graph, starting from ``normalize([P_m ; f_m])``:

    h = leaky(mean over neighbours of x W)                    (aggregation, eq. 1)
    x̂ = leaky(W' x + b') + e_id                              (ID-enhanced self view)
    x = leaky(G [h ; x̂] + c)   or   leaky(G h + c + x̂)       (combination)

and the final representation of users and items is the mean of the modality
branches' outputs. Scores are inner products.

Differences from MMRec's code, on purpose: the ID embeddings and preference tables
are trained (MMRec creates them as plain tensors that the optimiser never sees, as
the paper does not intend), every modality's preference table is regularised (MMRec:
only the image one), and a modality is projected to ``dim_latent`` when it is wider
than that (MMRec projects the image features and keeps the text ones raw).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from alignrec.data.dataset import Dataset
from alignrec.errors import ConfigError
from alignrec.models.base import (
    ModelConfig,
    bpr_loss,
    interaction_graph,
    mean_aggregation,
    part,
)
from alignrec.models.gnn_ops import rows_product
from alignrec.models.multimodal import BranchModel, paired_square_mean
from alignrec.models.sparse import EdgeGraph


@dataclass
class MMGCNConfig(ModelConfig):
    """Hyperparameters of MMGCN.

    MMRec searches reg_weight ∈ {0, 1e-5, 1e-4, 1e-3, 1e-2, 0.1} and learning_rate
    ∈ {1e-4, 5e-4, 1e-3, 5e-3, 1e-2}.
    """

    n_layers: int = 3  # graph layers per modality (MMRec's yaml says 2, but its GCN always runs 3)
    dim_latent: int | None = (
        256  # wider modality tables are first projected to this size; None: all raw
    )
    concat: bool = (
        True  # combine as G[h; x̂] (MMRec's run: its flag is the truthy string 'False') or G h + x̂
    )
    reg_weight: float = (
        1e-4  # weight of the squared ID embeddings of the batch and the preference tables
    )

    def __post_init__(self) -> None:
        if self.n_layers < 1 or self.reg_weight < 0:
            raise ConfigError("mmgcn config: need n_layers >= 1 and reg_weight >= 0")
        if self.dim_latent is not None and self.dim_latent < 1:
            raise ConfigError(
                f"mmgcn config: 'dim_latent' must be >= 1 or None, got {self.dim_latent}"
            )


class MMGCNBranch(nn.Module):
    """The graph convolution network of one modality."""

    def __init__(self, features: torch.Tensor, n_users: int, config: MMGCNConfig) -> None:
        super().__init__()
        d = config.embedding_size
        wide = config.dim_latent is not None and features.shape[1] > config.dim_latent
        self.mlp = nn.Linear(features.shape[1], config.dim_latent) if wide else None
        d_in = config.dim_latent if wide else features.shape[1]
        self.concat = config.concat
        self.register_buffer("features", features, persistent=False)
        self.preference = nn.Parameter(nn.init.xavier_normal_(torch.empty(n_users, d_in)))
        self.convs = nn.ParameterList()
        self.linears = nn.ModuleList()
        self.gates = nn.ModuleList()
        for layer in range(config.n_layers):
            width = d_in if layer == 0 else d
            bound = 1.0 / math.sqrt(width)  # PyG's uniform(in_channels, W)
            self.convs.append(nn.Parameter(torch.empty(width, width).uniform_(-bound, bound)))
            linear = nn.Linear(width, d)
            nn.init.xavier_normal_(linear.weight)
            gate = nn.Linear(width + d if self.concat else width, d)
            if layer == 0:  # MMRec re-initialises only the first gate
                nn.init.xavier_normal_(gate.weight)
            self.linears.append(linear)
            self.gates.append(gate)

    def forward(
        self, graphs: tuple[EdgeGraph, EdgeGraph], ids: tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """This modality's representation of every user [U, d] and item [I, d].

        ``graphs`` are the user and item rows of the mean aggregation D⁻¹A (users ← items,
        items ← users) and ``ids`` the users' and items' ID embeddings.
        """
        return self.layers(graphs, ids, self.n_layers)

    @property
    def n_layers(self) -> int:
        return len(self.convs)

    def layers(
        self,
        graphs: tuple[EdgeGraph, EdgeGraph],
        ids: tuple[torch.Tensor, torch.Tensor],
        count: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Users and items after the first ``count`` layers, over every node."""
        with part("content"):
            features = self.mlp(self.features) if self.mlp is not None else self.features
            x = (F.normalize(self.preference, dim=1), F.normalize(features, dim=1))
        for layer in range(count):
            with part("graph"):  # users ← items, items ← users
                h = (
                    _mean_transform(graphs[0], x[1], self.convs[layer]),
                    _mean_transform(graphs[1], x[0], self.convs[layer]),
                )
            with part("content"):
                x = tuple(
                    self.combine(layer, h_side, x_side, ids_side)
                    for h_side, x_side, ids_side in zip(h, x, ids, strict=True)
                )
        return x

    def last_layer_rows(
        self,
        graphs: tuple[EdgeGraph, EdgeGraph],
        ids: tuple[torch.Tensor, torch.Tensor],
        rows: tuple[torch.Tensor, torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`forward` on the users ``rows[0]`` and items ``rows[1]`` only (distinct ids)."""
        x = self.layers(graphs, ids, self.n_layers - 1)
        last = self.n_layers - 1
        conv = self.convs[last]
        with part("graph"):
            h = (
                rows_product(graphs[0], rows[0], x[1]) @ conv,
                rows_product(graphs[1], rows[1], x[0]) @ conv,
            )
        with part("content"):
            return tuple(
                self.combine(last, h_side, F.embedding(r, x_side), F.embedding(r, ids_side))
                for h_side, x_side, ids_side, r in zip(h, x, ids, rows, strict=True)
            )

    def combine(
        self, layer: int, h: torch.Tensor, x: torch.Tensor, ids: torch.Tensor
    ) -> torch.Tensor:
        """A layer's output from the neighbours' mean ``h`` (times its conv), ``x`` and the IDs."""
        h = F.leaky_relu(h)
        x_hat = F.leaky_relu(self.linears[layer](x)) + ids
        gate = self.gates[layer]
        if not self.concat:
            return F.leaky_relu(gate(h) + x_hat)
        # gate([h ; x̂]) without materialising the concatenation
        width = h.shape[1]
        out = torch.addmm(gate.bias, h, gate.weight[:, :width].T)
        return F.leaky_relu(out.addmm_(x_hat, gate.weight[:, width:].T))


def _mean_transform(mean: EdgeGraph, senders: torch.Tensor, conv: torch.Tensor) -> torch.Tensor:
    """``mean @ (senders @ conv)``, multiplied by ``conv`` on whichever side has fewer rows."""
    if mean.shape[0] <= mean.shape[1]:
        return mean(senders) @ conv
    return mean(senders @ conv)


class MMGCN(BranchModel):
    """The mean of one MMGCN branch per modality table of the dataset."""

    config_class = MMGCNConfig

    def __init__(self, dataset: Dataset, config: MMGCNConfig | None = None) -> None:
        super().__init__(dataset, config)
        mean = mean_aggregation(interaction_graph(dataset)).tocsr()  # D⁻¹A
        u = self.n_users
        self.user_mean = EdgeGraph(mean[:u, u:])  # users ← items
        self.item_mean = EdgeGraph(mean[u:, :u])  # items ← users

    def make_branch(self, features: torch.Tensor) -> MMGCNBranch:
        return MMGCNBranch(features, self.n_users, self.config)

    def preference_reg(self, users: torch.Tensor) -> torch.Tensor:
        return sum(branch.preference.square().mean() for branch in self.branches)

    @property
    def graphs(self) -> tuple[EdgeGraph, EdgeGraph]:
        return self.user_mean, self.item_mean

    def forward(self) -> torch.Tensor:
        """Representations [U + I, d]: the mean over the modality branches."""
        ids = self.id_embedding.split([self.n_users, self.n_items])
        reps = [branch(self.graphs, ids) for branch in self.branches]
        users = torch.stack([r[0] for r in reps]).mean(0)
        items = torch.stack([r[1] for r in reps]).mean(0)
        return torch.cat([users, items])

    def loss(self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        """:class:`BranchModel`'s loss, with the last layer computed on the batch's nodes only."""
        batch_users, user_index = torch.unique(users, return_inverse=True)
        batch_items, item_index = torch.unique(torch.cat([pos, neg]), return_inverse=True)
        ids = self.id_embedding.split([self.n_users, self.n_items])
        reps = [
            b.last_layer_rows(self.graphs, ids, (batch_users, batch_items)) for b in self.branches
        ]
        with part("loss"):
            user_rows = torch.stack([r[0] for r in reps]).mean(0)
            item_rows = torch.stack([r[1] for r in reps]).mean(0)
            u = F.embedding(user_index, user_rows)
            p, n = F.embedding(item_index, item_rows).split(len(users))
            mf = bpr_loss((u * p).sum(1), (u * n).sum(1))
            reg = paired_square_mean(
                self.id_embedding, users, pos + self.n_users, neg + self.n_users
            )
            return mf + self.config.reg_weight * (reg + self.preference_reg(users))
