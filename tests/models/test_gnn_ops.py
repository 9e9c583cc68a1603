"""The batch-restricted graph products, and the models' losses built on them, against the
full-table formulas they replace (values and gradients)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from torch.nn import functional as F

from alignrec.models import GRCN, MMGCN, DualGNN
from alignrec.models.base import bpr_loss
from alignrec.models.gnn_ops import gather_senders, rows_product
from alignrec.models.multimodal import BranchModel
from alignrec.models.sparse import EdgeGraph
from tests.training.synth import clustered

TOL = {"rtol": 1e-4, "atol": 1e-5}


@pytest.fixture(scope="module")
def data():
    return clustered(2, n_users=12, n_items=10, per_user=5)


def _graph(seed: int = 0, shape=(9, 7)) -> EdgeGraph:
    rng = np.random.default_rng(seed)
    dense = (rng.random(shape) < 0.45) * rng.uniform(0.5, 2.0, shape)
    dense[2] = 0  # a receiver without edges
    dense[-1] = 0  # the last receiver without edges too
    dense[:, 4] = 0  # a sender without edges
    return EdgeGraph(sp.csr_matrix(dense.astype(np.float32)))


def _leaf(t: torch.Tensor) -> torch.Tensor:
    return t.detach().clone().requires_grad_(True)


@pytest.mark.parametrize("learnt", [False, True])
def test_rows_product_is_the_rows_of_the_full_product_with_gradients(learnt):
    g = _graph()
    torch.manual_seed(0)
    rows = torch.tensor([8, 0, 2, 5, 3])  # unsorted, with empty rows
    x, x_ref = _leaf(torch.randn(g.shape[1], 3)), None
    x_ref = _leaf(x)
    values = _leaf(torch.randn(g.n_edges)) if learnt else None
    values_ref = _leaf(values) if learnt else None
    out = rows_product(g, rows, x, values)
    ref = (g.matmul(x_ref, values_ref) if learnt else g(x_ref))[rows]
    torch.testing.assert_close(out, ref, **TOL)
    assert out[[0, 2]].abs().sum() == 0  # rows 8 and 2 have no edges
    w = torch.randn_like(ref)
    (out * w).sum().backward()
    (ref * w).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, **TOL)
    if learnt:
        torch.testing.assert_close(values.grad, values_ref.grad, **TOL)


def test_gather_senders_sums_the_gradient_per_sender():
    g = _graph(1)
    torch.manual_seed(1)
    table = _leaf(torch.randn(g.shape[1], 2))
    table_ref = _leaf(table)
    out = gather_senders(g, table)
    ref = F.embedding(g.cols, table_ref)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    w = torch.randn_like(ref)
    (out * w).sum().backward()
    (ref * w).sum().backward()
    torch.testing.assert_close(table.grad, table_ref.grad, **TOL)
    assert table.grad[4].abs().sum() == 0  # sender 4 has no edges


def _full_table_loss(model, users, pos, neg) -> torch.Tensor:
    """Each model's loss from its full user and item tables (the formula before restriction)."""
    if isinstance(model, BranchModel):
        return BranchModel.loss(model, users, pos, neg)
    user_all, item_all = model.embeddings()
    u = F.embedding(users, user_all)
    p, n = F.embedding(pos, item_all), F.embedding(neg, item_all)
    mf = bpr_loss((u * p).sum(1), (u * n).sum(1)) / math.log(2)
    reg = sum(F.embedding(users, b.preference).square().mean() for b in model.branches)
    return mf + model.config.reg_weight * (reg + model.user_weight.square().mean())


@pytest.mark.parametrize("cls", [MMGCN, GRCN, DualGNN])
def test_batch_loss_equals_the_full_table_loss_with_gradients(cls, data):
    torch.manual_seed(0)
    model = cls(data)
    if cls is GRCN:
        with torch.no_grad():  # refined weights that differ between modalities and edges
            model.confidence.normal_()
    users = torch.tensor([0, 3, 3, 7, 11, 5])  # a repeated user
    pos = torch.tensor([1, 2, 2, 9, 0, 4])
    neg = torch.tensor([5, 5, 8, 3, 6, 1])  # an item both positive and negative
    loss = model.loss(users, pos, neg)
    grads = torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)
    ref = _full_table_loss(model, users, pos, neg)
    ref_grads = torch.autograd.grad(ref, list(model.parameters()), allow_unused=True)
    torch.testing.assert_close(loss, ref, **TOL)
    for (name, _), got, want in zip(model.named_parameters(), grads, ref_grads, strict=True):
        assert (got is None) == (want is None), name
        if want is not None:
            assert want.abs().sum() > 0, name
            torch.testing.assert_close(got, want, **TOL, msg=name)
