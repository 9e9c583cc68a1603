"""LightGCN (He et al., SIGIR 2020): ID embeddings smoothed over the user-item graph."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn
from torch.nn import functional as F

from alignrec.data.dataset import Dataset
from alignrec.models.base import (
    InnerProductModel,
    ModelConfig,
    bpr_loss,
    embedding_reg,
    normalized_adjacency,
)


@dataclass
class LightGCNConfig(ModelConfig):
    """Hyperparameters of LightGCN (MMRec searches n_layers 1–4, reg_weight 1e-2 … 1e-6)."""

    n_layers: int = 2  # propagation layers L; the final embedding is the mean of layers 0..L
    reg_weight: float = 1e-4  # weight of the L2 penalty on the batch's layer-0 (ego) embeddings
    reg_squared: bool = False  # False: MMRec's Σ||E||/B; True: the paper's Σ||E||²/2/B


class SparseRows:
    """A sparse square matrix as CSR arrays, multiplied with ``F.embedding_bag``.

    ``embedding_bag(indices, X, offsets, per_sample_weights=values, mode="sum")`` is
    row ``r`` of ``A @ X`` for every ``r``: a CSR SpMM that is about twice as fast as
    ``torch.sparse.mm`` on CPU, deterministic, and runs on any device.
    """

    def __init__(self, matrix: sp.csr_matrix, device: str | torch.device = "cpu") -> None:
        matrix = matrix.tocsr()
        matrix.sort_indices()
        self.shape = matrix.shape
        self.indices = torch.from_numpy(matrix.indices.astype(np.int64)).to(device)
        self.offsets = torch.from_numpy(matrix.indptr[:-1].astype(np.int64)).to(device)
        self.values = torch.from_numpy(matrix.data.astype(np.float32)).to(device)

    def to(self, device: str | torch.device) -> SparseRows:
        out = SparseRows.__new__(SparseRows)
        out.shape = self.shape
        out.indices, out.offsets, out.values = (
            t.to(device) for t in (self.indices, self.offsets, self.values)
        )
        return out

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        return F.embedding_bag(
            self.indices, x, self.offsets, mode="sum", per_sample_weights=self.values.to(x.dtype)
        )


class _SymmetricSpMM(torch.autograd.Function):
    """Â @ X for a symmetric sparse Â: the gradient w.r.t. X is Â @ G (no transpose needed)."""

    @staticmethod
    def forward(ctx, adj: SparseRows, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.adj = adj
        return adj.matmul(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[None, torch.Tensor]:  # type: ignore[override]
        return None, ctx.adj.matmul(grad.contiguous())


class LightGCN(InnerProductModel):
    """Users and items propagated ``n_layers`` times over D^-1/2 A D^-1/2 of the train graph."""

    config_class = LightGCNConfig

    def __init__(self, dataset: Dataset, config: LightGCNConfig | None = None) -> None:
        super().__init__(dataset, config)
        if self.config.n_layers < 0:
            raise ValueError(f"n_layers must be >= 0, got {self.config.n_layers}")
        d = self.config.embedding_size
        self.user_emb = nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.n_users, d)))
        self.item_emb = nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.n_items, d)))
        # Â as CSR arrays; not parameters and not in the state dict (rebuilt from the data).
        self.adj = SparseRows(normalized_adjacency(dataset))

    def _apply(self, fn, recurse=True):  # keep Â on the parameters' device
        out = super()._apply(fn, recurse)
        self.adj = self.adj.to(self.user_emb.device)
        return out

    def propagate(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Final (user, item) embeddings: the mean of layers 0..L."""
        x = torch.cat([self.user_emb, self.item_emb], dim=0)
        total = x
        for _ in range(self.config.n_layers):
            x = _SymmetricSpMM.apply(self.adj, x)
            total = total + x
        total = total / (self.config.n_layers + 1)
        return total[: self.n_users], total[self.n_users :]

    def loss(self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        # F.embedding gathers: their backward is deterministic with several threads,
        # unlike advanced indexing's accumulate-put.
        user_all, item_all = self.propagate()
        u = F.embedding(users, user_all)
        p, n = F.embedding(pos, item_all), F.embedding(neg, item_all)
        mf = bpr_loss((u * p).sum(1), (u * n).sum(1))
        reg = embedding_reg(
            F.embedding(users, self.user_emb),
            F.embedding(pos, self.item_emb),
            F.embedding(neg, self.item_emb),
            squared=self.config.reg_squared,
        )
        return mf + self.config.reg_weight * reg

    def embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.propagate()
