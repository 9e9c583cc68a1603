"""The products of a training step, captured and run again on their own.

:class:`ProductReplay` records two kinds of products a function runs, forward and backward:

- **dense**: the operators ``torch.utils.flop_counter`` counts (``mm``, ``addmm``, ``bmm``,
  ``baddbmm``, convolutions, attention), on dense operands;
- **graph**: the sums over a graph's edges (``embedding_bag`` and its backward kernels,
  a product with a sparse operand) and the per-edge dot products (``sampled_addmm``), the kernels that
  propagate over the user-item and item-item graphs.

Each call is kept with its floating-point operands' shapes, strides and dtypes and its other
arguments as they were: an index, an offset or a sparse pattern is kept itself (the graph's
structure decides what a graph kernel costs). :meth:`ProductReplay.run` calls the same
operators again, the floating-point operands replaced by stand-ins of the same layouts (so
the same kernels: a transposed operand stays transposed). Timed in the process the step ran
in, beside the step itself, that is the step's floor on this machine at these shapes: what
it would cost if everything but its products took no time. Lookups of rows, segment maxima,
soft-maxes and element-wise work are not in it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map
from torch.utils.flop_counter import flop_registry

DENSE, GRAPH = "dense", "graph"

# The graph kernels: edge sums (embedding_bag, forward and backward; sparse-dense products)
# and per-edge dot products. Overloads a torch build lacks are left out.
GRAPH_PRODUCTS = frozenset(
    getattr(torch.ops.aten, name)
    for name in (
        "_embedding_bag",
        "_embedding_bag_forward_only",
        "_embedding_bag_backward",
        "_embedding_bag_dense_backward",
        "_embedding_bag_per_sample_weights_backward",
        "_sparse_mm",
        "_sparse_addmm",
        "sparse_sampled_addmm",
    )
    if hasattr(torch.ops.aten, name)
)


@dataclass(frozen=True)
class Layout:
    """What a stand-in operand keeps of a tensor: its shape, strides, dtype and device."""

    shape: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: torch.dtype
    device: torch.device

    @classmethod
    def of(cls, t: torch.Tensor) -> Layout:
        return cls(tuple(t.shape), tuple(t.stride()), t.dtype, t.device)

    def storage_size(self) -> int:
        """Elements of storage the strided view needs."""
        if any(s == 0 for s in self.shape):
            return 0
        return 1 + sum((s - 1) * st for s, st in zip(self.shape, self.stride, strict=True))


@dataclass(frozen=True)
class Call:
    """One recorded product: the operator, its kind (:data:`DENSE` or :data:`GRAPH`), and its
    arguments with Layouts in place of its strided floating-point tensors."""

    op: Any  # torch._ops.OpOverload
    args: tuple
    kwargs: dict
    kind: str


def product_kind(func: Any, args: tuple = ()) -> str | None:
    """:data:`DENSE`, :data:`GRAPH` or None (not a product) for an ATen operator overload
    called on ``args``: a matrix product with a sparse operand (a CSR graph times a table,
    as ``torch.sparse.mm`` and ``@`` dispatch it) is a graph product."""
    packet = getattr(func, "overloadpacket", None)
    if packet in GRAPH_PRODUCTS:
        return GRAPH
    if packet in flop_registry:
        sparse = any(isinstance(a, torch.Tensor) and a.layout != torch.strided for a in args)
        return GRAPH if sparse else DENSE
    return None


def _stand_in_layout(x: Any) -> Any:
    """A strided floating-point tensor's Layout; anything else as it is (indices, offsets and
    sparse patterns are the graph's structure: kept, not replaced)."""
    if isinstance(x, torch.Tensor) and x.layout == torch.strided and x.is_floating_point():
        return Layout.of(x)
    return x


class _Recorder(TorchDispatchMode):
    """Records the products, and counts the dense ones' FLOPs by torch.utils.flop_counter's
    formulas (``FlopCounterMode`` itself is not used: its module tracker hooks every module's
    outputs for their gradients, and fails on a module called under ``no_grad`` with inputs
    that require them, as in a validation)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[Call] = []
        self.flops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        kind = product_kind(func, args)
        if kind is not None:
            self.calls.append(
                Call(func, tree_map(_stand_in_layout, args), tree_map(_stand_in_layout, kwargs), kind)
            )
        out = func(*args, **kwargs)
        if kind == DENSE:
            self.flops += int(flop_registry[func.overloadpacket](*args, **kwargs, out_val=out))
        return out


class ProductReplay:
    """The products of one call of a function, ready to run again (:meth:`run`), and the
    floating-point operations of its dense ones (``flops``, by torch.utils.flop_counter's
    formulas). :attr:`dense` and :attr:`graph` are the replays of each kind alone."""

    def __init__(self, calls: list[Call], flops: int = 0) -> None:
        self.calls = calls
        self.flops = flops
        self._operands: dict[Layout, torch.Tensor] = {}
        self._bound: list[tuple[Any, tuple, dict]] | None = None

    @classmethod
    def capture(cls, fn: Callable[[], Any]) -> ProductReplay:
        """Run ``fn`` once (with its effects: a training step trains) and record its products,
        counting the dense ones' FLOPs on the way."""
        with _Recorder() as recorder:
            fn()
        return cls(recorder.calls, recorder.flops)

    def only(self, kind: str) -> ProductReplay:
        """The calls of one kind, as a replay of their own (FLOPs kept for the dense ones)."""
        return ProductReplay(
            [c for c in self.calls if c.kind == kind], self.flops if kind == DENSE else 0
        )

    @property
    def dense(self) -> ProductReplay:
        return self.only(DENSE)

    @property
    def graph(self) -> ProductReplay:
        return self.only(GRAPH)

    def operand(self, layout: Layout) -> torch.Tensor:
        """A stand-in tensor of ``layout``: normal draws for a floating dtype (no denormals,
        which would slow some kernels), zeros otherwise; one per layout, reused."""
        t = self._operands.get(layout)
        if t is None:
            base = torch.empty(layout.storage_size(), dtype=layout.dtype, device=layout.device)
            base.normal_() if base.is_floating_point() else base.zero_()
            t = self._operands[layout] = base.as_strided(layout.shape, layout.stride)
        return t

    def run(self) -> None:
        """Every recorded product again, in order, on stand-in operands (their results dropped).

        The operands are bound on the first run, so a timed run is the products alone."""
        if self._bound is None:
            bind = lambda x: self.operand(x) if isinstance(x, Layout) else x  # noqa: E731
            self._bound = [
                (c.op, tree_map(bind, c.args), tree_map(bind, c.kwargs)) for c in self.calls
            ]
        for op, args, kwargs in self._bound:
            op(*args, **kwargs)

    def __len__(self) -> int:
        return len(self.calls)


__all__ = ["DENSE", "GRAPH", "GRAPH_PRODUCTS", "Layout", "ProductReplay", "product_kind"]
