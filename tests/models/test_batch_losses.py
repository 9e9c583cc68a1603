"""Losses computed on the batch's rows only give the loss and gradients of the full-table
formulas they replace (SLMRec, FREEDOM, LATTICE)."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

import alignrec.models.lattice as lattice_module
import alignrec.models.slmrec as slmrec_module
from alignrec.models import (
    FREEDOM,
    LATTICE,
    FREEDOMConfig,
    LATTICEConfig,
    SLMRec,
    SLMRecConfig,
)
from alignrec.models.base import bpr_loss, embedding_reg
from alignrec.models.lattice import knn_table
from alignrec.models.multimodal import info_nce
from alignrec.models.slmrec import in_batch_cross_entropy
from alignrec.similarity import topk_similarity
from tests.training.synth import clustered


@pytest.fixture(scope="module")
def data():
    return clustered(3, n_users=30, n_items=24, per_user=6)


def _batch(seed: int, n_users: int = 30, n_items: int = 24, size: int = 40):
    g = torch.Generator().manual_seed(seed)
    # more pairs than items: the batch repeats users and items
    return (
        torch.randint(0, n_users, (size,), generator=g),
        torch.randint(0, n_items, (size,), generator=g),
        torch.randint(0, n_items, (size,), generator=g),
    )


def _grads(model, loss):
    model.zero_grad(set_to_none=True)
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _assert_same(model, loss, ref):
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-6)
    got, want = _grads(model, loss), _grads(model, ref)
    assert got.keys() == want.keys() and got
    for name, g in want.items():
        torch.testing.assert_close(got[name], g, rtol=1e-4, atol=1e-6, msg=name)


def test_in_batch_cross_entropy_equals_the_full_batch_form():
    torch.manual_seed(0)
    ids = torch.tensor([3, 1, 3, 0, 1, 3])
    a, b = torch.randn(4, 5), torch.randn(4, 5)
    full = F.cross_entropy(a[ids] @ b[ids].T, torch.arange(len(ids)))
    uniq, inverse, counts = torch.unique(ids, return_inverse=True, return_counts=True)
    # distinct columns, every row
    torch.testing.assert_close(in_batch_cross_entropy(a[ids] @ b[uniq].T, inverse, counts), full)
    # distinct rows and columns, rows weighted by their counts
    got = in_batch_cross_entropy(a[uniq] @ b[uniq].T, torch.arange(len(uniq)), counts, counts)
    torch.testing.assert_close(got, full)


@pytest.mark.parametrize("fixed_passes", [True, False], ids=["feature-passes", "direct"])
@pytest.mark.parametrize("seed", [0, 1])
def test_slmrec_loss_is_the_full_passes_loss(data, seed, fixed_passes, monkeypatch):
    if not fixed_passes:  # too big to keep: the modality passes are propagated every step
        monkeypatch.setattr(slmrec_module, "FEATURE_PASS_FLOATS", 0)
    torch.manual_seed(seed)
    model = SLMRec(data, SLMRecConfig(embedding_size=8, n_layers=3))
    assert (model.feature_passes() is not None) == fixed_passes
    users, items, _ = _batch(seed)
    loss = model.loss_terms(users, items)["loss"]
    user_passes, item_passes = model.passes()
    rows = item_passes[items]
    main = info_nce(model.user_out(user_passes[users]), model.item_out(rows), 0.2)
    _assert_same(model, loss, main + model.config.ssl_alpha * model.fac_loss(rows))


@pytest.mark.parametrize("mm_layers", [0, 1, 2])
def test_freedom_loss_is_the_full_tables_loss(data, mm_layers):
    torch.manual_seed(0)
    model = FREEDOM(data, FREEDOMConfig(embedding_size=8, n_mm_layers=mm_layers))
    model.on_epoch_start(0)  # prunes the training graph
    users, pos, neg = _batch(3)
    loss = model.loss_terms(users, pos, neg)["loss"]
    user_all, item_all = model.propagate(model.train_adj)
    u, p, n = user_all[users], item_all[pos], item_all[neg]
    modal = sum(
        bpr_loss(
            (u * model.proj[m](model.features[m][pos])).sum(1),
            (u * model.proj[m](model.features[m][neg])).sum(1),
        )
        for m in model.modalities
    )
    ref = bpr_loss((u * p).sum(1), (u * n).sum(1)) + model.config.reg_weight * modal
    _assert_same(model, loss, ref)


@pytest.mark.parametrize("item_layers", [0, 1, 2])
def test_lattice_loss_is_the_full_tables_loss(data, item_layers):
    torch.manual_seed(0)
    model = LATTICE(data, LATTICEConfig(embedding_size=8, feat_embed_dim=6, n_layers=item_layers))
    model.on_epoch_start(0)
    for seed in (4, 5):  # the epoch's first batch (gradients reach the graph), then a later one
        users, pos, neg = _batch(seed)
        rebuilds = model._graph is None
        loss = model.loss(users, pos, neg)
        graph = model.latent_graph() if rebuilds else model._graph
        user_all, item_all = model.propagate(graph)
        u, p, n = user_all[users], item_all[pos], item_all[neg]
        ref = bpr_loss((u * p).sum(1), (u * n).sum(1)) + model.config.reg_weight * embedding_reg(
            u, p, n, squared=True
        )
        _assert_same(model, loss, ref)


def test_lattice_knn_table_has_the_neighbours_of_topk_similarity(monkeypatch):
    x = torch.randn(50, 6, generator=torch.Generator().manual_seed(0))
    x[7] = 0  # a zero row: every similarity 0
    monkeypatch.setattr(lattice_module, "KNN_BLOCK_CELLS", 3 * 50)  # blocks of 3 rows
    got = knn_table(x, 4)
    want = topk_similarity(x.numpy(), k=4)
    assert got.shape == (50, 4)
    for i in range(50):
        if i != 7:  # the zero row's neighbours are any four tied at 0
            assert set(got[i].tolist()) == set(want.indices[want.indptr[i] : want.indptr[i + 1]])
