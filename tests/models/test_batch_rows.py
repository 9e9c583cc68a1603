"""mean_propagation_rows and propagation_layer_rows against the full propagation read at the
rows (values and gradients)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from alignrec.models.batch_rows import mean_propagation_rows
from alignrec.models.layer_rows import propagation_layer_rows
from alignrec.models.sparse import EdgeGraph, mean_propagation


def _graph(n: int = 11, seed: int = 0) -> EdgeGraph:
    rng = np.random.default_rng(seed)
    dense = (rng.random((n, n)) < 0.4) * rng.uniform(0.1, 1.0, (n, n))
    dense[3] = 0  # a node without out-edges
    dense[:, 5] = 0  # and one nobody reads
    return EdgeGraph(sp.csr_matrix(dense.astype(np.float32)))


def _layers_ref(graph: EdgeGraph, x: torch.Tensor, n_layers: int, rows: torch.Tensor):
    layers = [x]
    for _ in range(n_layers):
        layers.append(graph(layers[-1]))
    return torch.stack([layer[rows] for layer in layers])


# each function at the rows, and the full propagation it must equal, read at the rows
READOUTS = {
    "mean": (mean_propagation_rows, lambda g, x, n, rows: mean_propagation(g, x, n)[rows]),
    "layers": (propagation_layer_rows, _layers_ref),
}


@pytest.mark.parametrize("readout", list(READOUTS))
@pytest.mark.parametrize("n_layers", [0, 1, 2, 3])
def test_rows_of_the_propagation_with_gradients(readout, n_layers):
    at_rows, full = READOUTS[readout]
    g = _graph()
    torch.manual_seed(0)
    x = torch.randn(11, 4, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    rows = torch.tensor([7, 3, 0, 7, 10, 5, 0, 0])  # repeats, unsorted, an empty row

    out = at_rows(g, x, n_layers, rows)
    ref = full(g, x_ref, n_layers, rows)
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-7)
    weights = torch.randn(ref.shape)  # a loss that weighs every entry apart
    (out * weights).sum().backward()
    (ref * weights).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-5, atol=1e-6)
    assert x.grad.abs().sum() > 0


@pytest.mark.parametrize("readout", list(READOUTS))
def test_gradcheck_in_double_precision(readout):
    at_rows, _ = READOUTS[readout]
    g = _graph(seed=1)
    x = torch.randn(11, 3, dtype=torch.float64, requires_grad=True)
    rows = torch.tensor([2, 9, 2, 4])
    assert torch.autograd.gradcheck(lambda t: at_rows(g, t, 3, rows), (x,))


@pytest.mark.parametrize("readout", list(READOUTS))
def test_rejects_negative_layers(readout):
    at_rows, _ = READOUTS[readout]
    with pytest.raises(ValueError):
        at_rows(_graph(), torch.randn(11, 2), -1, torch.tensor([0]))
