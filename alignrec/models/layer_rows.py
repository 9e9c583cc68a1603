"""Every layer of a propagation at a batch's rows, for readouts that add the layers in more than one way.

:func:`~alignrec.models.batch_rows.mean_propagation_rows` gives the mean of the layers
``x, A x, ..., A^L x`` at a batch's rows. :func:`propagation_layer_rows` gives each layer
there, so that one propagation can serve several readouts. SLMRec is the case
(:func:`bipartite_layer_means`): on the bipartite user-item graph, the layers of
``[U; 0]`` are those of ``[U; I]`` read at the user rows for even k and at the item rows
for odd k (zero elsewhere), so the user part its modality passes share needs no
propagation of its own.
"""

from __future__ import annotations

import torch

from alignrec.models.batch_rows import _transposed_rows_product
from alignrec.models.gnn_ops import rows_product
from alignrec.models.sparse import EdgeGraph


def propagation_layer_rows(
    graph: EdgeGraph, x: torch.Tensor, n_layers: int, rows: torch.Tensor
) -> torch.Tensor:
    """``(A^k x)[rows]`` for k = 0..L, stacked: [L + 1, len(rows), D].

    The last layer is computed at the rows only (:func:`rows_product`, the same sums as
    the full product). ``rows`` may repeat: each distinct row is computed once. The
    gradient of ``x`` is written out: one product by Aᵀ per layer but the last.
    """
    if n_layers < 0:
        raise ValueError(f"n_layers must be >= 0, got {n_layers}")
    uniq, inverse = torch.unique(rows, return_inverse=True)
    return _LayerRows.apply(graph, uniq, n_layers, x).index_select(1, inverse)


class _LayerRows(torch.autograd.Function):
    """Layers 0..L of ``A^k x`` at distinct ``rows`` (S).

    Backward, by Horner's rule: ``Sᵀg_0 + Aᵀ(Sᵀg_1 + Aᵀ(... + A[rows]ᵀ g_L))``.
    """

    @staticmethod
    def forward(ctx, graph: EdgeGraph, rows: torch.Tensor, n_layers: int, x: torch.Tensor):  # type: ignore[override]
        ctx.graph, ctx.n_layers, ctx.n_nodes = graph, n_layers, x.shape[0]
        ctx.save_for_backward(rows)
        layers = [x.index_select(0, rows)]
        for layer in range(n_layers):
            if layer == n_layers - 1:
                layers.append(rows_product(graph, rows, x))
            else:
                x = graph.product(x)
                layers.append(x.index_select(0, rows))
        return torch.stack(layers)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        graph: EdgeGraph = ctx.graph
        (rows,) = ctx.saved_tensors
        g = grad.contiguous()
        out = torch.zeros(ctx.n_nodes, g.shape[2], dtype=g.dtype, device=g.device)
        if ctx.n_layers > 0:
            senders, sums = _transposed_rows_product(graph, rows, g[ctx.n_layers])
            out.index_add_(0, senders, sums)
            for layer in range(ctx.n_layers - 1, 0, -1):
                out.index_add_(0, rows, g[layer])  # distinct rows: no two updates meet
                out = graph.product_t(out)
        out.index_add_(0, rows, g[0])
        return None, None, None, out


def bipartite_layer_means(
    layers: torch.Tensor, at_users: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The layer means of ``[U; I]`` and of ``[U; 0]`` from the layers of ``[U; I]`` alone.

    ``layers`` [L + 1, R, D] are ``(A^k [U; I])[rows]`` on a bipartite user-item graph
    (users first), ``at_users`` [R] marks the user rows. ``A^k [U; 0]`` lives on the users
    for even k and on the items for odd k, where it equals ``A^k [U; I]`` (the other
    half, ``A^k [0; I]``, lives on the other side), so its mean is the even layers' sum
    at user rows and the odd layers' at item rows, over L + 1. The sums run in layer
    order, as :func:`~alignrec.models.sparse.layer_sum` adds the (zero) layers between:
    the values are those of propagating ``[U; 0]`` itself.
    """
    n = layers.shape[0]
    total = layers[0]
    for layer in layers[1:]:
        total = total + layer
    even = layers[0]
    for layer in layers[2::2]:
        even = even + layer
    odd = torch.zeros_like(even) if n == 1 else layers[1]
    for layer in layers[3::2]:
        odd = odd + layer
    return total / n, torch.where(at_users[:, None], even, odd) / n


__all__ = ["bipartite_layer_means", "propagation_layer_rows"]
