"""mean_propagation_rows against the full propagation read at the rows (values and gradients)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from alignrec.models.batch_rows import mean_propagation_rows
from alignrec.models.sparse import EdgeGraph, mean_propagation


def _graph(n: int = 11, seed: int = 0) -> EdgeGraph:
    rng = np.random.default_rng(seed)
    dense = (rng.random((n, n)) < 0.4) * rng.uniform(0.1, 1.0, (n, n))
    dense[3] = 0  # a node without out-edges
    dense[:, 5] = 0  # and one nobody reads
    return EdgeGraph(sp.csr_matrix(dense.astype(np.float32)))


@pytest.mark.parametrize("n_layers", [0, 1, 2, 3])
def test_rows_of_the_mean_propagation_with_gradients(n_layers):
    g = _graph()
    torch.manual_seed(0)
    x = torch.randn(11, 4, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    rows = torch.tensor([7, 3, 0, 7, 10, 5, 0, 0])  # repeats, unsorted, an empty row
    weights = torch.randn(len(rows), 4)  # a loss that weighs every gathered entry

    out = mean_propagation_rows(g, x, n_layers, rows)
    ref = mean_propagation(g, x_ref, n_layers)[rows]
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-7)
    (out * weights).sum().backward()
    (ref * weights).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-5, atol=1e-6)
    assert x.grad.abs().sum() > 0


def test_gradcheck_in_double_precision():
    g = _graph(seed=1)
    x = torch.randn(11, 3, dtype=torch.float64, requires_grad=True)
    rows = torch.tensor([2, 9, 2, 4])
    assert torch.autograd.gradcheck(lambda t: mean_propagation_rows(g, t, 2, rows), (x,))


def test_rejects_negative_layers():
    with pytest.raises(ValueError):
        mean_propagation_rows(_graph(), torch.randn(11, 2), -1, torch.tensor([0]))
