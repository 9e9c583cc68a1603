"""``alignrec.profiling.DenseReplay``: a function's matrix products, recorded and run again."""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from alignrec.profiling import DenseReplay, Layout


def _signatures(replay: DenseReplay) -> list[tuple]:
    return [(str(c.op), c.args, tuple(sorted(c.kwargs.items()))) for c in replay.calls]


def test_the_products_of_forward_and_backward_are_recorded_with_their_layouts():
    torch.manual_seed(0)
    linear = torch.nn.Linear(6, 4)
    x = torch.randn(5, 6, requires_grad=True)
    other = torch.randn(3, 4)

    def step() -> None:
        h = linear(x)  # addmm, forward
        (h @ other.T).relu().sum().backward()  # mm with a transposed operand, and backwards
        torch.sigmoid(h.detach())  # element-wise: not a product

    replay = DenseReplay.capture(step)
    ops = [str(c.op).split(".")[1] for c in replay.calls]
    assert ops[:2] == ["addmm", "mm"] and set(ops[2:]) == {"mm"}
    assert len(ops) == 2 + 3  # backward: h's gradient, and the weight's and input's of linear
    # the transposed operand keeps its strides (the same kernel runs again)
    assert Layout.of(other.T) in replay.calls[1].args
    assert Layout.of(other.T).stride == (1, 4)
    assert x.grad is not None  # the captured call ran with its effects


def test_running_again_makes_the_same_products_with_the_same_flops():
    a, b = torch.randn(7, 3), torch.randn(5, 3)
    bias = torch.randn(5)

    def fn() -> None:
        torch.addmm(bias, a, b.T, beta=0.5)
        torch.bmm(torch.randn(2, 4, 3), torch.randn(2, 3, 6))

    replay = DenseReplay.capture(fn)
    again = DenseReplay.capture(replay.run)
    assert _signatures(again) == _signatures(replay)
    assert replay.calls[0].kwargs == {"beta": 0.5}
    with FlopCounterMode(display=False) as counter:
        fn()
    assert replay.flops == counter.get_total_flops() == 2 * 7 * 3 * 5 + 2 * 2 * 4 * 3 * 6
    assert again.flops == replay.flops  # the replay does the same arithmetic


def test_a_function_without_products_replays_nothing():
    replay = DenseReplay.capture(lambda: torch.randn(100).exp().sum())
    assert len(replay) == 0 and replay.flops == 0
    replay.run()


def test_stand_in_operands_have_the_layout_and_are_shared_per_layout():
    replay = DenseReplay([])
    layout = Layout((4, 3), (1, 4), torch.float32, torch.device("cpu"))  # a transposed view
    t = replay.operand(layout)
    assert Layout.of(t) == layout and torch.isfinite(t).all()
    assert replay.operand(layout) is t
    assert Layout((0, 3), (3, 1), torch.float32, torch.device("cpu")).storage_size() == 0
