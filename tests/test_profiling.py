"""``alignrec.profiling.ProductReplay``: a function's products, recorded and run again."""

from __future__ import annotations

import torch
from torch.nn import functional as F
from torch.utils.flop_counter import FlopCounterMode

from alignrec.profiling import DENSE, GRAPH, Layout, ProductReplay, product_kind


def _signatures(replay: ProductReplay) -> list[tuple]:
    return [(str(c.op), c.kind, _kept_by_identity(c.args), tuple(sorted(c.kwargs.items())))
            for c in replay.calls]


def _kept_by_identity(args: tuple) -> tuple:
    """Arguments with a kept tensor by its identity (a replay passes the same one again)."""
    return tuple(id(a) if isinstance(a, torch.Tensor) else a for a in args)


def test_the_products_of_forward_and_backward_are_recorded_with_their_layouts():
    torch.manual_seed(0)
    linear = torch.nn.Linear(6, 4)
    x = torch.randn(5, 6, requires_grad=True)
    other = torch.randn(3, 4)

    def step() -> None:
        h = linear(x)  # addmm, forward
        (h @ other.T).relu().sum().backward()  # mm with a transposed operand, and backwards
        torch.sigmoid(h.detach())  # element-wise: not a product

    replay = ProductReplay.capture(step)
    ops = [str(c.op).split(".")[1] for c in replay.calls]
    assert ops[:2] == ["addmm", "mm"] and set(ops[2:]) == {"mm"}
    assert len(ops) == 2 + 3  # backward: h's gradient, and the weight's and input's of linear
    assert {c.kind for c in replay.calls} == {DENSE} and len(replay.graph) == 0
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

    replay = ProductReplay.capture(fn)
    again = ProductReplay.capture(replay.run)
    assert _signatures(again) == _signatures(replay)
    assert replay.calls[0].kwargs == {"beta": 0.5}
    with FlopCounterMode(display=False) as counter:
        fn()
    assert replay.flops == counter.get_total_flops() == 2 * 7 * 3 * 5 + 2 * 2 * 4 * 3 * 6
    assert again.flops == replay.flops  # the replay does the same arithmetic


def test_graph_products_keep_the_graphs_indices_and_replay_the_same_calls():
    """A weighted sum over edges (embedding_bag), forward and backward, and a per-edge dot
    product (sampled_addmm): graph products, their indices and pattern kept as they were."""
    torch.manual_seed(0)
    cols = torch.tensor([0, 2, 1, 2, 0])
    offsets = torch.tensor([0, 2, 3])
    x = torch.randn(3, 4, requires_grad=True)
    weights = torch.rand(5, requires_grad=True)
    crow = torch.tensor([0, 2, 3, 5])
    pattern_cols = torch.tensor([0, 2, 1, 0, 2])  # sorted within each row
    pattern = torch.sparse_csr_tensor(
        crow, pattern_cols, torch.zeros(5), size=(3, 3), check_invariants=True
    )
    a, b = torch.randn(3, 4), torch.randn(3, 4)

    def step() -> None:
        y = F.embedding_bag(cols, x, offsets, mode="sum", per_sample_weights=weights)
        (y @ torch.ones(4, 2)).sum().backward()  # a dense product among them
        torch.sparse.sampled_addmm(pattern, a, b.T, beta=0.0)

    replay = ProductReplay.capture(step)
    kinds = [c.kind for c in replay.calls]
    assert kinds[0] == GRAPH and DENSE in kinds
    graph = replay.graph
    names = [str(c.op).split(".")[1] for c in graph.calls]
    assert names[0] == "_embedding_bag" and names[-1] == "sparse_sampled_addmm"
    assert any("backward" in n for n in names)  # the edge sums of the gradients
    assert len(graph) + len(replay.dense) == len(replay)
    assert graph.flops == 0 and replay.dense.flops == replay.flops > 0
    # the indices, offsets and the sparse pattern are kept themselves; the floating operands
    # become layouts of stand-ins
    first = graph.calls[0]
    assert first.args[1] is cols and first.args[2] is offsets
    assert first.args[0] == Layout.of(x)
    assert graph.calls[-1].args[0] is pattern
    again = ProductReplay.capture(graph.run)
    assert [(str(c.op), c.kind) for c in again.calls] == [
        (str(c.op), c.kind) for c in graph.calls
    ]
    assert again.calls[0].args[1] is cols


def test_a_product_with_a_sparse_graph_is_a_graph_product_without_dense_flops():
    """``csr @ table`` and its gradient (``csrᵀ @ grad``) dispatch to ``mm`` with a sparse
    operand: graph products, the pattern kept, none of them counted as dense FLOPs."""
    graph = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]).to_sparse_csr()
    table = torch.randn(3, 4, requires_grad=True)
    replay = ProductReplay.capture(lambda: (graph @ table).sum().backward())
    assert replay.calls and {c.kind for c in replay.calls} == {GRAPH}
    assert replay.flops == 0 and len(replay.dense) == 0
    assert replay.calls[0].args[0] is graph
    replay.run()


def test_a_module_called_without_grad_on_views_of_a_parameter_is_captured():
    """Under ``no_grad`` a view of a parameter still requires grad, without a grad_fn (as a
    validation splits an embedding table between users and items): capturing it must not
    try to hook its gradient."""
    table = torch.nn.Parameter(torch.randn(6, 3))
    linear = torch.nn.Linear(3, 2)
    with torch.no_grad():
        users, _ = table.split([4, 2])
        assert users.requires_grad and users.grad_fn is None
        replay = ProductReplay.capture(lambda: linear(users))
    assert [str(c.op).split(".")[1] for c in replay.calls] == ["addmm"]
    assert replay.flops == 2 * 4 * 3 * 2


def test_operators_are_sorted_into_kinds():
    aten = torch.ops.aten
    assert product_kind(aten.mm.default) == DENSE
    graph = torch.eye(3).to_sparse_csr()
    assert product_kind(aten.mm.default, (graph, torch.ones(3, 2))) == GRAPH
    assert product_kind(aten._embedding_bag.default) == GRAPH
    assert product_kind(aten.sparse_sampled_addmm.default) == GRAPH
    assert product_kind(aten.index_select.default) is None  # a lookup, not a product
    assert product_kind(aten.mul.Tensor) is None


def test_a_function_without_products_replays_nothing():
    replay = ProductReplay.capture(lambda: torch.randn(100).exp().sum())
    assert len(replay) == 0 and replay.flops == 0
    replay.run()


def test_stand_in_operands_have_the_layout_and_are_shared_per_layout():
    replay = ProductReplay([])
    layout = Layout((4, 3), (1, 4), torch.float32, torch.device("cpu"))  # a transposed view
    t = replay.operand(layout)
    assert Layout.of(t) == layout and torch.isfinite(t).all()
    assert replay.operand(layout) is t
    assert Layout((0, 3), (3, 1), torch.float32, torch.device("cpu")).storage_size() == 0
