"""Sparse top-k item-item similarity, computed in row blocks.

The dense I x I matrix is never built: each block of rows is scored against all
items, reduced to its top k, and dropped, so memory is O(block x I + I x k). The
item-CF protocol and AlignRec's item-item graph both use it.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from alignrec.errors import ConfigError

# Floats of one block of similarities (64 MB of float32).
BLOCK_FLOATS = 16 * 2**20


def topk_similarity(
    features: np.ndarray,
    k: int = 10,
    shrink: float = 0.0,
    block_size: int | None = None,
    device: str | torch.device = "cpu",
) -> sp.csr_matrix:
    """Each row's ``k`` largest similarities, the item itself included, as a CSR [I, I].

    ``sim(i, j) = x_i . x_j / (|x_i| |x_j| + shrink)``: cosine for ``shrink = 0``,
    MMRec's ItemKNNCBF for ``shrink > 0``. Not symmetrised. Every row is computed
    independently, so the result does not depend on ``block_size``.
    """
    x = torch.as_tensor(np.ascontiguousarray(features, dtype=np.float32), device=device)
    if x.ndim != 2:
        raise ConfigError(f"features must be a 2-D matrix, got shape {tuple(x.shape)}")
    n = x.shape[0]
    if k < 1:
        raise ConfigError(f"top-k similarity needs k >= 1, got {k}")
    k = min(k, n)
    if block_size is None:
        block_size = max(1, min(n, BLOCK_FLOATS // max(n, 1)))
    norms = torch.linalg.vector_norm(x, dim=1)
    cols = torch.empty(n, k, dtype=torch.int64)
    vals = torch.empty(n, k, dtype=torch.float32)
    for a in range(0, n, block_size):
        b = min(n, a + block_size)
        sim = x[a:b] @ x.T
        sim /= norms[a:b, None] * norms[None, :] + shrink
        sim.nan_to_num_(0.0)  # all-zero rows have no direction
        top = torch.topk(sim, k, dim=1)
        cols[a:b] = top.indices.cpu()
        vals[a:b] = top.values.cpu()
    rows = np.repeat(np.arange(n), k)
    return sp.csr_matrix(
        (vals.numpy().ravel(), (rows, cols.numpy().ravel())), shape=(n, n), dtype=np.float32
    )


def sym_normalize_rows(matrix: sp.csr_matrix) -> sp.csr_matrix:
    """``w_ij / sqrt(rowsum_i * rowsum_j)``: MGCN/AlignRec's normalisation of the item graph.

    Rows with a non-positive sum get zero weight.
    """
    rowsum = np.asarray(matrix.sum(axis=1)).ravel()
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = np.where(rowsum > 0, rowsum**-0.5, 0.0).astype(np.float32)
    d = sp.diags(inv)
    return (d @ matrix @ d).tocsr().astype(np.float32)
