"""The matrix products of a training step, captured and run again on their own.

:class:`DenseReplay` records every dense product a function runs, forward and backward: the
operators ``torch.utils.flop_counter`` counts (``mm``, ``addmm``, ``bmm``, ``baddbmm``,
convolutions, attention), each with its operands' shapes, strides and dtypes and its scalar
arguments. :meth:`DenseReplay.run` calls the same operators again on stand-in operands of
the same layouts (so the same BLAS kernels: a transposed operand stays transposed). Timed
in the process the step ran in, beside the step itself, that is the step's dense floor on
this machine at these shapes: what the step would cost if everything but its matrix
products took no time. Graph propagation, lookups and element-wise work are not in it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map
from torch.utils.flop_counter import flop_registry


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
    """One recorded product: the operator, with Layouts in place of its tensor arguments."""

    op: Any  # torch._ops.OpOverload
    args: tuple
    kwargs: dict


def _is_dense_product(func: Any) -> bool:
    return getattr(func, "overloadpacket", None) in flop_registry


class _Recorder(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[Call] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if _is_dense_product(func):
            to_layout = lambda x: Layout.of(x) if isinstance(x, torch.Tensor) else x  # noqa: E731
            self.calls.append(Call(func, tree_map(to_layout, args), tree_map(to_layout, kwargs)))
        return func(*args, **kwargs)


class DenseReplay:
    """The dense products of one call of a function, ready to run again (:meth:`run`), and
    their floating-point operations (``flops``, by torch.utils.flop_counter's formulas)."""

    def __init__(self, calls: list[Call], flops: int = 0) -> None:
        self.calls = calls
        self.flops = flops
        self._operands: dict[Layout, torch.Tensor] = {}
        self._bound: list[tuple[Any, tuple, dict]] | None = None

    @classmethod
    def capture(cls, fn: Callable[[], Any]) -> DenseReplay:
        """Run ``fn`` once (with its effects: a training step trains) and record its products,
        counting their FLOPs on the way."""
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter, _Recorder() as recorder:
            fn()
        return cls(recorder.calls, int(counter.get_total_flops()))

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


__all__ = ["DenseReplay", "Layout"]
