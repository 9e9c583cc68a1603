"""GRCN's fast per-edge products and row normalisation against the operators they
replace (EdgeGraph.edge_dot, EdgeGraph.matmul, F.normalize): values and gradients."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from alignrec.models.edge_values import normalize_rows, sddmm, weighted_matmul
from tests.models.test_gnn_ops import _graph  # 9 x 7, with empty rows and an empty column

TOL = {"rtol": 1e-5, "atol": 1e-6}


def _leaves(*shapes: tuple[int, ...], seed: int = 0, dtype=torch.float32) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*s, generator=g, dtype=dtype).requires_grad_(True) for s in shapes]


def _grads(out: torch.Tensor, inputs: list[torch.Tensor], seed: int = 1) -> list[torch.Tensor]:
    weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype)
    return list(torch.autograd.grad((out * weight).sum(), inputs))


@pytest.mark.parametrize("seed", [0, 1])
def test_sddmm_equals_the_gathered_edge_dot_with_its_gradients(seed):
    graph = _graph(seed)
    a, b = _leaves((9, 5), (7, 5), seed=seed)
    ours, ref = sddmm(graph, a, b), graph.edge_dot(a, b)
    rows, cols = graph.rows, graph.cols
    assert ours.shape == (graph.n_edges,)
    torch.testing.assert_close(ours, (a[rows] * b[cols]).sum(1), **TOL)  # edge order kept
    torch.testing.assert_close(ours, ref, **TOL)
    for g_ours, g_ref in zip(_grads(ours, [a, b]), _grads(ref, [a, b]), strict=True):
        torch.testing.assert_close(g_ours, g_ref, **TOL)


def test_weighted_matmul_equals_the_edge_graph_product_with_its_gradients():
    graph = _graph(3)
    values, x = _leaves((graph.n_edges,), (7, 4), seed=3)
    ours, ref = weighted_matmul(graph, values, x), graph.matmul(x, values)
    dense = torch.zeros(9, 7).index_put((graph.rows, graph.cols), values, accumulate=True)
    torch.testing.assert_close(ours, dense @ x, **TOL)
    torch.testing.assert_close(ours, ref, **TOL)
    for g_ours, g_ref in zip(_grads(ours, [values, x]), _grads(ref, [values, x]), strict=True):
        torch.testing.assert_close(g_ours, g_ref, **TOL)


def test_the_edge_products_pass_gradcheck_in_double_precision():
    graph = _graph(4)
    a, b = _leaves((9, 3), (7, 3), seed=4, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda a, b: sddmm(graph, a, b), (a, b))
    values, x = _leaves((graph.n_edges,), (7, 3), seed=5, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda v, x: weighted_matmul(graph, v, x), (values, x))


def test_normalize_rows_equals_f_normalize_with_its_gradient_zero_rows_included():
    (x,) = _leaves((6, 5), seed=6)
    with torch.no_grad():
        x[2] = 0.0  # a zero row: divided by eps, as F.normalize does
        x[4] *= 1e-14  # below eps too
    ours, ref = normalize_rows(x), F.normalize(x, dim=1)
    torch.testing.assert_close(ours, ref, **TOL)
    torch.testing.assert_close(_grads(ours, [x])[0], _grads(ref, [x])[0], **TOL)
    (y,) = _leaves((5, 4), seed=7, dtype=torch.float64)
    assert torch.autograd.gradcheck(normalize_rows, (y,))
