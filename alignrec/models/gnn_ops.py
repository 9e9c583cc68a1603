"""Graph products that a training step needs on a few rows only, and per-column sums.

A batch's loss reads the final vectors of its own users and items, so the last product
of a propagation is only needed on those rows: :func:`rows_product` computes
``(W @ x)[rows]`` from the rows' own edges (the same sums, in the same order, as the
full :class:`~alignrec.models.sparse.EdgeGraph` product). :func:`gather_senders` gives
each edge its sender's row of a node table, with the gradient summed per sender by a
CSR sum over the transposed edge order instead of a scatter-add.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from alignrec.models.sparse import EdgeGraph


def row_edges(graph: EdgeGraph, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The edge ids of ``rows`` (receivers), row after row, and each row's offset among them."""
    ends = torch.cat([graph.offsets[1:], graph.offsets.new_tensor([graph.n_edges])])
    starts = graph.offsets.index_select(0, rows)
    counts = ends.index_select(0, rows) - starts
    offsets = torch.cumsum(counts, 0) - counts
    total = int(counts.sum())
    shift = torch.repeat_interleave(starts - offsets, counts, output_size=total)
    return torch.arange(total, device=rows.device) + shift, offsets


def rows_product(
    graph: EdgeGraph, rows: torch.Tensor, x: torch.Tensor, values: torch.Tensor | None = None
) -> torch.Tensor:
    """``(W @ x)[rows]`` [len(rows), D]: W the graph's pattern with ``values`` [E] (default:
    its own entries), differentiable in ``x`` and ``values``.

    ``rows`` should be distinct (then the gradient of ``values`` is a plain copy per edge).
    """
    edges, offsets = row_edges(graph, rows)
    weights = (graph.values.to(x.dtype) if values is None else values).index_select(0, edges)
    return F.embedding_bag(
        graph.cols.index_select(0, edges), x, offsets, mode="sum", per_sample_weights=weights
    )


def gather_senders(graph: EdgeGraph, table: torch.Tensor) -> torch.Tensor:
    """``table[cols]`` [E, D]: each edge's sender row; the gradient of ``table`` is a CSR sum."""
    return _GatherSenders.apply(graph, table)


class _GatherSenders(torch.autograd.Function):
    @staticmethod
    def forward(ctx, graph: EdgeGraph, table: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.graph = graph
        return table.index_select(0, graph.cols)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[None, torch.Tensor]:  # type: ignore[override]
        graph: EdgeGraph = ctx.graph
        # Σ over each sender's edges, in transposed edge order (senders without edges get 0).
        return None, F.embedding_bag(graph.t_perm, grad.contiguous(), graph.t_offsets, mode="sum")
