"""propagation_layer_rows against the full propagation's layers, and the bipartite readout."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from alignrec.models.layer_rows import bipartite_layer_means, propagation_layer_rows
from alignrec.models.sparse import EdgeGraph, mean_propagation
from tests.models.test_batch_rows import _graph


def _layers(graph: EdgeGraph, x: torch.Tensor, n_layers: int) -> list[torch.Tensor]:
    out = [x]
    for _ in range(n_layers):
        out.append(graph(out[-1]))
    return out


@pytest.mark.parametrize("n_layers", [0, 1, 2, 3])
def test_layers_at_the_rows_with_gradients(n_layers):
    g = _graph()
    torch.manual_seed(0)
    x = torch.randn(11, 4, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    rows = torch.tensor([7, 3, 0, 7, 10, 5, 0, 0])  # repeats, unsorted, an empty row
    weights = torch.randn(n_layers + 1, len(rows), 4)  # a loss that weighs every layer apart

    out = propagation_layer_rows(g, x, n_layers, rows)
    ref = torch.stack([layer[rows] for layer in _layers(g, x_ref, n_layers)])
    assert out.shape == (n_layers + 1, len(rows), 4)
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-7)
    (out * weights).sum().backward()
    (ref * weights).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-5, atol=1e-6)
    assert x.grad.abs().sum() > 0


def test_gradcheck_in_double_precision():
    g = _graph(seed=1)
    x = torch.randn(11, 3, dtype=torch.float64, requires_grad=True)
    rows = torch.tensor([2, 9, 2, 4])
    assert torch.autograd.gradcheck(lambda t: propagation_layer_rows(g, t, 3, rows), (x,))


def test_rejects_negative_layers():
    with pytest.raises(ValueError):
        propagation_layer_rows(_graph(), torch.randn(11, 2), -1, torch.tensor([0]))


def _bipartite(n_users: int = 6, n_items: int = 5, seed: int = 0) -> EdgeGraph:
    rng = np.random.default_rng(seed)
    r = (rng.random((n_users, n_items)) < 0.5) * rng.uniform(0.1, 1.0, (n_users, n_items))
    r[0] = 0  # a user without items
    adj = sp.bmat([[None, sp.csr_matrix(r)], [sp.csr_matrix(r.T), None]])
    return EdgeGraph(adj.astype(np.float32))


@pytest.mark.parametrize("n_layers", [0, 1, 2, 3, 4])
def test_user_part_is_the_propagation_of_the_users_alone(n_layers):
    g = _bipartite()
    torch.manual_seed(n_layers)
    users, items = torch.randn(6, 3), torch.randn(5, 3)
    rows = torch.tensor([0, 4, 4, 1, 6, 10, 7, 6])  # users, then items, repeated
    layers = propagation_layer_rows(g, torch.cat([users, items]), n_layers, rows)
    mean, user_part = bipartite_layer_means(layers, rows < 6)

    full = mean_propagation(g, torch.cat([users, items]), n_layers)
    alone = mean_propagation(g, torch.cat([users, torch.zeros_like(items)]), n_layers)
    # the same values, bit for bit, as propagating [U; I] and [U; 0] side by side
    assert torch.equal(mean, full[rows])
    assert torch.equal(user_part, alone[rows])
    assert user_part[rows >= 6].abs().sum() > 0 or n_layers == 0
