"""The item-item view restricted to a batch's rows against the full view."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from alignrec.models.multimodal import item_graph_view
from alignrec.models.sparse import EdgeGraph


def _random_graph(n_rows: int, n_cols: int, seed: int) -> sp.csr_matrix:
    m = sp.random(n_rows, n_cols, density=0.3, format="csr", dtype=np.float32, random_state=seed)
    keep = np.ones(n_rows, dtype=np.float32)
    keep[3] = 0.0  # an empty row
    m = (sp.diags(keep) @ m).tocsr()
    m.eliminate_zeros()
    return m


def test_item_graph_view_rows_equal_the_full_view():
    n_users, n_items = 7, 5
    user_items = EdgeGraph(_random_graph(n_users, n_items, seed=4))
    item_graph = EdgeGraph(_random_graph(n_items, n_items, seed=5))
    h = torch.randn(n_items, 3, generator=torch.Generator().manual_seed(6), requires_grad=True)
    full = item_graph_view(h, item_graph, user_items, hops=2)
    for nodes in ([0, 3, 6, 7, 11], [1, 2], [8, 9], list(range(n_users + n_items))):
        nodes = torch.tensor(nodes)
        rows = item_graph_view(h, item_graph, user_items, hops=2, nodes=nodes)
        assert torch.equal(rows, full[nodes])  # each row summed as in the full view
        g = torch.randn(rows.shape, generator=torch.Generator().manual_seed(len(nodes)))
        (grad_rows,) = torch.autograd.grad(rows, h, g)
        (grad_full,) = torch.autograd.grad(full[nodes], h, g, retain_graph=True)
        torch.testing.assert_close(grad_rows, grad_full, rtol=1e-6, atol=1e-7)
