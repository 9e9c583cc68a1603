"""The bipartite readout of SLMRec: the user part from the layers of the ID pass.

propagation_layer_rows itself is tested beside mean_propagation_rows (test_batch_rows.py).
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from alignrec.models.layer_rows import bipartite_layer_means, propagation_layer_rows
from alignrec.models.sparse import EdgeGraph, mean_propagation


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
    # the item rows of the user part are not all zero once a layer reaches them
    assert (user_part[rows >= 6].abs().sum() > 0) == (n_layers > 0)
