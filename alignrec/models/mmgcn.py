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
from alignrec.models.base import ModelConfig, interaction_graph, mean_aggregation
from alignrec.models.multimodal import BranchModel
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

    def forward(self, graph: EdgeGraph, id_embedding: torch.Tensor) -> torch.Tensor:
        """This modality's representation [U + I, d] of every user and item."""
        features = self.mlp(self.features) if self.mlp is not None else self.features
        x = F.normalize(torch.cat([self.preference, features], dim=0), dim=1)
        for conv, linear, gate in zip(self.convs, self.linears, self.gates, strict=True):
            h = F.leaky_relu(graph(x @ conv))
            x_hat = F.leaky_relu(linear(x)) + id_embedding
            x = F.leaky_relu(gate(torch.cat([h, x_hat], dim=1)) if self.concat else gate(h) + x_hat)
        return x


class MMGCN(BranchModel):
    """The mean of one MMGCN branch per modality table of the dataset."""

    config_class = MMGCNConfig

    def __init__(self, dataset: Dataset, config: MMGCNConfig | None = None) -> None:
        super().__init__(dataset, config)
        self.graph = EdgeGraph(mean_aggregation(interaction_graph(dataset)))  # D⁻¹A

    def make_branch(self, features: torch.Tensor) -> MMGCNBranch:
        return MMGCNBranch(features, self.n_users, self.config)

    def preference_reg(self, users: torch.Tensor) -> torch.Tensor:
        return sum(branch.preference.square().mean() for branch in self.branches)

    def forward(self) -> torch.Tensor:
        """Representations [U + I, d]: the mean over the modality branches."""
        reps = [branch(self.graph, self.id_embedding) for branch in self.branches]
        return torch.stack(reps).mean(0)
