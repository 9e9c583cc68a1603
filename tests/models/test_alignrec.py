"""AlignRec stage 2: each loss term against a direct computation, the block-built graph,
the forward pass against §3 written out densely, and determinism."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from alignrec.data.dataset import Dataset
from alignrec.errors import ConfigError
from alignrec.models.alignrec import (
    AlignRec,
    AlignRecConfig,
    final_embedding_reg,
    gram_square_norm,
    info_nce,
    item_item_graph,
    similarity_preservation,
    uia_loss,
)
from alignrec.similarity import topk_similarity


def _tiny(seed=0, n_users=12, n_items=9, dim=6):
    rng = np.random.default_rng(seed)
    pairs = np.unique(
        np.stack([rng.integers(0, n_users, 80), rng.integers(0, n_items, 80)], 1), axis=0
    )
    feats = rng.normal(size=(n_items, dim)).astype(np.float32)
    return Dataset.from_pairs(
        "tiny", n_users, n_items, pairs[:-8], pairs[-8:-4], pairs[-4:], features={"content": feats}
    )


def test_info_nce_matches_direct_formula():
    torch.manual_seed(0)
    a, b, t = torch.randn(5, 4), torch.randn(5, 4), 0.2
    an = a / a.norm(dim=1, keepdim=True)
    bn = b / b.norm(dim=1, keepdim=True)
    expected = 0.0
    for k in range(5):
        pos = math.exp(float(an[k] @ bn[k]) / t)
        total = sum(math.exp(float(an[k] @ bn[j]) / t) for j in range(5))
        expected += -math.log(pos / total)
    assert info_nce(a, b, t).item() == pytest.approx(expected / 5, rel=1e-5)


def test_uia_matches_direct_formula():
    zu, zi = torch.tensor([[1.0, 0.0], [0.0, 2.0]]), torch.tensor([[1.0, 1.0], [0.0, -1.0]])
    cos = [1 / math.sqrt(2), -1.0]
    assert uia_loss(zu, zi).item() == pytest.approx(1 - sum(cos) / 2)


def test_regulariser_matches_direct_formula():
    zu, zp, zn = torch.ones(4, 3), 2 * torch.ones(4, 3), torch.zeros(4, 3)
    assert final_embedding_reg(zu, zp, zn).item() == pytest.approx((12 + 48 + 0) / 2 / 4)


@pytest.mark.parametrize(("b", "d", "dim"), [(3, 2, 5), (40, 8, 6), (7, 16, 30)])
def test_similarity_preservation_matches_direct_formula(b, d, dim):
    torch.manual_seed(1)
    m, f = torch.randn(b, d, requires_grad=True), torch.randn(b, dim, requires_grad=True)
    fn = f.detach() / f.detach().norm(dim=1, keepdim=True)
    direct = torch.linalg.matrix_norm(m @ m.T - fn @ fn.T) / b  # Frobenius, not squared
    out = similarity_preservation(m, f)
    assert out.item() == pytest.approx(direct.item(), rel=1e-5)
    # Same gradient as the direct B x B form, and none reaches the detached target.
    (g_direct,) = torch.autograd.grad(direct, m)
    out.backward()
    torch.testing.assert_close(m.grad, g_direct, rtol=1e-4, atol=1e-6)
    assert f.grad is None or float(f.grad.abs().sum()) == 0.0


def test_similarity_preservation_with_counts_equals_the_repeated_batch():
    torch.manual_seed(4)
    for dim in (3, 40):  # narrow and wide features take different paths
        m = torch.randn(6, 4, requires_grad=True)
        f = torch.randn(6, dim)
        ids = torch.tensor([0, 2, 2, 5, 1, 2, 0, 4, 3, 3])
        direct = similarity_preservation(m[ids], f[ids])
        (g_direct,) = torch.autograd.grad(direct, m)
        uniq, counts = torch.unique(ids, return_counts=True)
        fast = similarity_preservation(m[uniq], f[uniq], counts)
        (g_fast,) = torch.autograd.grad(fast, m)
        assert fast.item() == pytest.approx(direct.item(), rel=1e-6)
        torch.testing.assert_close(g_fast, g_direct, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("shape", [(40, 7), (7, 40), (33, 33), (5, 1)])
@pytest.mark.parametrize("block", [1, 3, 8, 128])
def test_gram_square_norm_equals_the_full_gram(shape, block):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    got = gram_square_norm(x, block=block)
    assert got.item() == pytest.approx((x.T @ x).square().sum().item(), rel=1e-12)


def _dense_graph(feats: np.ndarray, k: int) -> np.ndarray:
    x = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    sim = x @ x.T
    w = np.zeros_like(sim)
    for i in range(len(sim)):
        top = np.argsort(-sim[i], kind="stable")[:k]
        w[i, top] = sim[i, top]
    rowsum = w.sum(1)
    return w / np.sqrt(np.outer(rowsum, rowsum))


@pytest.mark.parametrize("block", [1, 3, 7, 100])
def test_block_graph_equals_dense_construction(block):
    feats = np.random.default_rng(4).normal(size=(23, 5)).astype(np.float32) + 0.5
    got = item_item_graph(feats, k=4, block_size=block).toarray()
    np.testing.assert_allclose(got, _dense_graph(feats, 4), rtol=1e-5, atol=1e-6)
    # Directed: row i holds exactly k neighbours, the item itself among them.
    assert ((got != 0).sum(1) == 4).all() and (np.diag(got) > 0).all()


def test_topk_similarity_with_shrink():
    feats = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]], dtype=np.float32)
    sim = topk_similarity(feats, k=3, shrink=1.0).toarray()
    norms = np.linalg.norm(feats, axis=1)
    expected = feats @ feats.T / (np.outer(norms, norms) + 1.0)
    np.testing.assert_allclose(sim, expected, rtol=1e-6)


def test_forward_follows_section_3_densely():
    ds = _tiny()
    model = AlignRec(ds, AlignRecConfig(knn_k=3))
    with torch.no_grad():
        views = model.forward()
        U, _ = ds.n_users, ds.n_items
        r = ds.matrix("train").toarray()
        a = np.block([[np.zeros((U, U)), r], [r.T, np.zeros((ds.n_items, ds.n_items))]])
        deg = a.sum(1)
        dinv = np.power(deg, -0.5, where=deg > 0, out=np.zeros_like(deg))
        a_hat = dinv[:, None] * a * dinv[None, :]
        x0 = torch.cat([model.user_emb, model.item_emb]).numpy()
        c = (x0 + a_hat @ x0 + a_hat @ a_hat @ x0) / 3
        m = model.proj(model.item_features).numpy()
        gate = 1 / (1 + np.exp(-(m @ model.gate.weight.numpy().T + model.gate.bias.numpy())))
        h = _dense_graph(ds.features["content"], 3) @ (model.item_emb.numpy() * gate)
        g_u = a_hat[:U, U:] @ h
    np.testing.assert_allclose(views["C"].numpy(), c, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(views["M"].numpy(), np.vstack([g_u, h]), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(views["Z"].numpy(), c + np.vstack([g_u, h]), rtol=1e-4, atol=1e-6)


def test_loss_is_the_sum_of_terms_and_switches_work():
    ds = _tiny()
    torch.manual_seed(0)
    users, pos, neg = (
        torch.tensor([0, 1, 2, 3]),
        torch.tensor([1, 2, 3, 4]),
        torch.tensor([5, 6, 7, 8]),
    )
    terms = AlignRec(ds, AlignRecConfig()).loss_terms(users, pos, neg)
    assert set(terms) == {"bpr", "reg", "uia", "cca", "sim", "loss"}
    assert terms["loss"].item() == pytest.approx(
        sum(v.item() for k, v in terms.items() if k != "loss"), rel=1e-6
    )
    off = AlignRec(ds, AlignRecConfig(alpha=0, beta=0, uia_weight=0)).loss_terms(users, pos, neg)
    assert set(off) == {"bpr", "reg", "loss"}


def test_gradients_reach_features_and_deterministic():
    ds = _tiny()
    out = []
    for _ in range(2):
        torch.manual_seed(3)
        model = AlignRec(ds, AlignRecConfig())
        loss = model.loss(torch.tensor([0, 1]), torch.tensor([2, 3]), torch.tensor([4, 5]))
        loss.backward()
        assert model.item_features.grad.abs().sum() > 0
        out.append(loss.item())
    assert out[0] == out[1]


def test_refuses_missing_or_bad_features():
    ds = _tiny()
    with pytest.raises(ConfigError, match="needs the item feature table 'image'"):
        AlignRec(ds, AlignRecConfig(features="image"))
    bad = Dataset.from_pairs(
        "bad",
        ds.n_users,
        ds.n_items,
        ds.train,
        ds.valid,
        ds.test,
        features={"content": np.full((ds.n_items, 3), np.nan, np.float32)},
    )
    with pytest.raises(ConfigError, match="finite"):
        AlignRec(bad)
    with pytest.raises(ConfigError):
        AlignRecConfig(alpha=-1)


def test_info_nce_by_id_equals_the_batch_form_with_repeats():
    from alignrec.models.alignrec import info_nce_by_id

    torch.manual_seed(2)
    t1 = torch.randn(7, 5, requires_grad=True)
    t2 = torch.randn(7, 5, requires_grad=True)
    ids = torch.tensor([3, 1, 3, 3, 0, 6, 1, 2, 2, 5, 3])
    direct = info_nce(t1[ids], t2[ids], 0.2)
    g_direct = torch.autograd.grad(direct, (t1, t2))
    fast = info_nce_by_id(t1, t2, ids, 0.2)
    g_fast = torch.autograd.grad(fast, (t1, t2))
    assert fast.item() == pytest.approx(direct.item(), rel=1e-5)
    for a, b in zip(g_fast, g_direct, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_alignrec_trains_with_the_reference_lr_schedule():
    from alignrec.training import resolve_configs

    train_cfg, _ = resolve_configs("alignrec", {})
    assert (train_cfg.lr_decay_factor, train_cfg.lr_decay_step) == (0.96, 50)
    assert resolve_configs("lightgcn", {})[0].lr_decay_factor == 1.0
    assert resolve_configs("alignrec", {"lr_decay_factor": "1.0"})[0].lr_decay_factor == 1.0


def test_similarity_preservation_targets_the_current_feature_table():
    """As in the reference (v_feat shares memory with the trained table), the target follows
    the trainable features as they move, detached, not a frozen copy of the initial ones."""
    ds = _tiny()
    model = AlignRec(ds, AlignRecConfig(embedding_size=4, alpha=0.0, uia_weight=0.0, beta=1.0))
    users, pos, neg = torch.tensor([0, 1, 2]), torch.tensor([3, 4, 3]), torch.tensor([0, 1, 2])
    with torch.no_grad():
        model.item_features.add_(torch.randn_like(model.item_features))
    uniq, counts = torch.unique(pos, return_counts=True)
    m = model.forward()["M"][uniq + model.n_users]
    moved = similarity_preservation(m, model.item_features[uniq], counts)
    initial = similarity_preservation(m, torch.from_numpy(ds.features["content"])[uniq], counts)
    sim = model.loss_terms(users, pos, neg)["sim"]
    assert sim.item() == pytest.approx(moved.item(), rel=1e-6)
    assert sim.item() != pytest.approx(initial.item(), rel=1e-3)
