"""LightGCN-style mean propagation evaluated only at the rows a training batch reads.

A training loss reads the propagated embeddings of its batch's users and items only,
yet propagating over the whole graph computes every row of every layer and adds the
layers over whole tables. The last layer is only needed at the batch's rows
(:func:`~alignrec.models.gnn_ops.rows_product`: the same sums in the same order), and
the layer sum ``x + A x + ... + A^L x`` only there. The gradient is written out (the
map is linear in ``x``): one full product by Aᵀ per layer but the last, with the
batch's rows added in place, instead of autograd's full-table gathers and sums.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from alignrec.models.gnn_ops import rows_product
from alignrec.models.sparse import EdgeGraph


def mean_propagation_rows(
    graph: EdgeGraph, x: torch.Tensor, n_layers: int, rows: torch.Tensor
) -> torch.Tensor:
    """``mean_propagation(graph, x, n_layers)[rows]``, the last layer at the rows only.

    ``rows`` may repeat (a batch repeats users and items): each distinct row is computed
    once. The layers are added in :func:`~alignrec.models.sparse.layer_sum`'s order, so
    the values are those of the full propagation; the gradient of ``x`` is the same in
    exact arithmetic (its sums run in another order).
    """
    if n_layers < 0:
        raise ValueError(f"n_layers must be >= 0, got {n_layers}")
    uniq, inverse = torch.unique(rows, return_inverse=True)
    return F.embedding(inverse, _RowsMeanPropagation.apply(graph, uniq, n_layers, x))


def _transposed_rows_product(graph: EdgeGraph, rows: torch.Tensor, g: torch.Tensor) -> tuple:
    """``A[rows]ᵀ @ g`` as (distinct columns, their sums): each column's edges summed by a
    CSR sum (no scatter-add, so the same result on every device and thread count)."""
    ends = torch.cat([graph.offsets[1:], graph.offsets.new_tensor([graph.n_edges])])
    starts = graph.offsets.index_select(0, rows)
    counts = ends.index_select(0, rows) - starts
    offsets = torch.cumsum(counts, 0) - counts
    total = int(counts.sum())
    edges = torch.arange(total, device=rows.device) + torch.repeat_interleave(
        starts - offsets, counts, output_size=total
    )
    receiver = torch.repeat_interleave(torch.arange(len(rows), device=rows.device), counts)
    cols = graph.cols.index_select(0, edges)
    order = torch.argsort(cols, stable=True)
    senders, per_col = torch.unique_consecutive(cols.index_select(0, order), return_counts=True)
    sums = F.embedding_bag(
        receiver.index_select(0, order),
        g,
        torch.cumsum(per_col, 0) - per_col,
        mode="sum",
        per_sample_weights=graph.values.index_select(0, edges.index_select(0, order)).to(g.dtype),
    )
    return senders, sums


class _RowsMeanPropagation(torch.autograd.Function):
    """Rows ``rows`` (distinct) of ``(x + A x + ... + A^L x) / (L + 1)``.

    Backward: with ``g' = g / (L + 1)`` put on the rows (S), the gradient of layer L-1 is
    ``Sᵀg' + A[rows]ᵀ g'``, and of each earlier layer ``Aᵀ (gradient of the next) + Sᵀg'``.
    """

    @staticmethod
    def forward(ctx, graph: EdgeGraph, rows: torch.Tensor, n_layers: int, x: torch.Tensor):  # type: ignore[override]
        ctx.graph, ctx.n_layers, ctx.n_nodes = graph, n_layers, x.shape[0]
        ctx.save_for_backward(rows)
        total = x.index_select(0, rows)
        for layer in range(n_layers):
            if layer == n_layers - 1:
                total = total + rows_product(graph, rows, x)
            else:
                x = graph.product(x)
                total = total + x.index_select(0, rows)
        return total / (n_layers + 1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        graph: EdgeGraph = ctx.graph
        (rows,) = ctx.saved_tensors
        g = grad.contiguous() / (ctx.n_layers + 1)
        out = torch.zeros(ctx.n_nodes, g.shape[1], dtype=g.dtype, device=g.device)
        out.index_add_(0, rows, g)  # distinct rows: no two updates meet
        if ctx.n_layers > 0:
            senders, sums = _transposed_rows_product(graph, rows, g)
            out.index_add_(0, senders, sums)
            for _ in range(ctx.n_layers - 1):
                out = graph.product_t(out)
                out.index_add_(0, rows, g)
        return None, None, None, out


__all__ = ["mean_propagation_rows"]
