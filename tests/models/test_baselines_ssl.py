"""LATTICE, BM3, SLMRec, FREEDOM and MGCN against dense, written-out references on tiny data.

The shared contract (one epoch, scores, state dict, determinism, missing modalities)
is checked for every registered model in test_contract.py; these tests check what
each model computes: its graphs, its forward pass and its loss terms.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from alignrec.models import (
    BM3,
    FREEDOM,
    LATTICE,
    MGCN,
    AlignRec,
    AlignRecConfig,
    BM3Config,
    FREEDOMConfig,
    LATTICEConfig,
    MGCNConfig,
    SLMRec,
    SLMRecConfig,
)
from alignrec.models.freedom import modality_weights, prune_edges
from alignrec.models.multimodal import info_nce
from tests.training.synth import clustered

N_USERS, N_ITEMS = 30, 24


@pytest.fixture(scope="module")
def data():
    return clustered(3, n_users=N_USERS, n_items=N_ITEMS, per_user=6)


def _with_modalities(ds, count: int):
    """``ds`` with 1 (text), 2 (image, text) or 3 (audio, image, text) modality tables."""
    feats = {k: v for k, v in ds.features.items() if not k.startswith("mm:")}
    feats["mm:text"] = ds.features["mm:text"]
    if count >= 2:
        feats["mm:image"] = ds.features["mm:image"]
    if count >= 3:
        rng = np.random.default_rng(7)
        feats["mm:audio"] = rng.standard_normal((ds.n_items, 5)).astype(np.float32)
    return dataclasses.replace(ds, features=feats)


def _dense(op, n: int) -> np.ndarray:
    """A SparseOp as a dense matrix (it applied to the identity)."""
    with torch.no_grad():
        return op(torch.eye(n)).numpy()


def _knn(feats: np.ndarray, k: int, weighted: bool = True) -> np.ndarray:
    """Row i: its k most cosine-similar items (itself included), cosine or unit weights."""
    x = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    sim = x @ x.T
    w = np.zeros_like(sim)
    for i in range(len(sim)):
        top = np.argsort(-sim[i], kind="stable")[:k]
        w[i, top] = sim[i, top] if weighted else 1.0
    return w


def _sym(w: np.ndarray) -> np.ndarray:
    rowsum = w.sum(1)
    return w / np.sqrt(np.outer(rowsum, rowsum))


def _a_hat(ds) -> np.ndarray:
    r = (ds.matrix("train").toarray() > 0).astype(np.float64)
    a = np.block(
        [[np.zeros((ds.n_users, ds.n_users)), r], [r.T, np.zeros((ds.n_items, ds.n_items))]]
    )
    deg = a.sum(1)
    dinv = np.where(deg > 0, deg**-0.5, 0.0)
    return dinv[:, None] * a * dinv[None, :]


def _lightgcn(adj: np.ndarray, x: np.ndarray, layers: int) -> np.ndarray:
    out, total = x, x
    for _ in range(layers):
        out = adj @ out
        total = total + out
    return total / (layers + 1)


def _batch(seed=0, b=16):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randint(0, N_USERS, (b,), generator=g),
        torch.randint(0, N_ITEMS, (b,), generator=g),
        torch.randint(0, N_ITEMS, (b,), generator=g),
    )


def _close(a, b, rtol=1e-4, atol=1e-5):
    a = a.detach().numpy() if isinstance(a, torch.Tensor) else a
    b = b.detach().numpy() if isinstance(b, torch.Tensor) else b
    np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)


# ---------------------------------------------------------------------------- FREEDOM
def test_freedom_frozen_item_graph_equals_dense_knn(data):
    model = FREEDOM(data, FREEDOMConfig(knn_k=4, mm_image_weight=0.3))
    # Sorted modalities: image, text; MMRec's image w / text 1 - w.
    expected = 0.3 * _sym(_knn(data.features["mm:image"], 4, weighted=False)) + 0.7 * _sym(
        _knn(data.features["mm:text"], 4, weighted=False)
    )
    _close(_dense(model.item_graph, N_ITEMS), expected, atol=1e-6)
    np.testing.assert_allclose(_dense(model.item_graph, N_ITEMS).sum(1), 1.0, rtol=1e-5)


def test_freedom_modality_weights():
    assert modality_weights(["image", "text"], 0.1) == [0.1, 0.9]
    assert modality_weights(["audio", "image", "text"], 0.2) == [0.4, 0.2, 0.4]
    assert modality_weights(["vec:a", "vec:b"], 0.1) == [0.5, 0.5]
    assert modality_weights(["image"], 0.1) == [1.0]


def test_freedom_pruning_keeps_the_right_edges_renormalised(data):
    model = FREEDOM(data, FREEDOMConfig(dropout=0.8))
    r = data.matrix("train").toarray() > 0
    n_edges = int(r.sum())
    np.testing.assert_allclose(_dense(model.train_adj, N_USERS + N_ITEMS), _a_hat(data), atol=1e-6)
    torch.manual_seed(0)
    model.on_epoch_start(0)
    a = _dense(model.train_adj, N_USERS + N_ITEMS)
    block = a[:N_USERS, N_USERS:]
    kept = block != 0
    assert kept.sum() == int(n_edges * (1 - 0.8))  # MMRec's count: 23 of 120, not 24
    assert not (kept & ~r).any()  # only training edges
    np.testing.assert_array_equal(a[N_USERS:, :N_USERS], block.T)  # symmetric
    assert not a[:N_USERS, :N_USERS].any() and not a[N_USERS:, N_USERS:].any()
    du, di = kept.sum(1), kept.sum(0)
    expected = np.where(kept, 1 / np.sqrt(np.outer(np.maximum(du, 1), np.maximum(di, 1))), 0)
    np.testing.assert_allclose(block, expected, rtol=1e-5)
    # A seed prunes the same edges; another epoch prunes others; evaluation uses them all.
    torch.manual_seed(0)
    model.on_epoch_start(0)
    np.testing.assert_array_equal(_dense(model.train_adj, N_USERS + N_ITEMS), a)
    model.on_epoch_start(1)
    assert not np.array_equal(_dense(model.train_adj, N_USERS + N_ITEMS), a)
    model.eval()
    with torch.no_grad():
        users, items = model.embeddings()
    x = torch.cat([model.user_emb, model.item_emb]).detach().numpy()
    out = _lightgcn(_a_hat(data), x, 2)
    _close(users, out[:N_USERS])
    _close(
        items, out[N_USERS:] + _dense(model.item_graph, N_ITEMS) @ model.item_emb.detach().numpy()
    )


def test_freedom_pruning_prefers_edges_between_rare_nodes():
    # User 0 and item 0 are hubs; the other edges join nodes of degree 1 or 2.
    rows = np.array([0] * 6 + [1, 2, 3, 4, 5, 6, 7])
    cols = np.array([0, 1, 2, 3, 4, 5] + [0, 0, 0, 6, 7, 8, 9])
    torch.manual_seed(1)
    kept = np.zeros(len(rows))
    for _ in range(400):
        idx = prune_edges(rows, cols, 8, 10, dropout=0.5)
        assert len(idx) == len(np.unique(idx)) == int(len(rows) * 0.5)
        kept[idx] += 1
    hub_hub = kept[0]  # user 0 (degree 6) - item 0 (degree 4)
    rare = kept[-3:]  # users and items of degree 1
    assert (rare > hub_hub * 1.5).all()


def test_freedom_loss_terms(data):
    model = FREEDOM(data, FREEDOMConfig(dropout=0.0, reg_weight=0.5))
    model.on_epoch_start(0)
    users, pos, neg = _batch()
    terms = model.loss_terms(users, pos, neg)
    u_all, i_all = model.embeddings()
    u = u_all[users]
    direct = -F.logsigmoid((u * i_all[pos]).sum(1) - (u * i_all[neg]).sum(1)).mean()
    modal = 0.0
    for m in model.modalities:
        f = model.proj[m](model.features[m])
        modal = modal - F.logsigmoid((u * f[pos]).sum(1) - (u * f[neg]).sum(1)).mean()
    assert terms["bpr"].item() == pytest.approx(direct.item(), rel=1e-5)
    assert terms["modal"].item() == pytest.approx(0.5 * modal.item(), rel=1e-5)


# ---------------------------------------------------------------------------- LATTICE
def test_lattice_latent_graph_equals_dense_reference(data):
    cfg = LATTICEConfig(knn_k=4, lambda_coeff=0.7, feat_embed_dim=8)
    torch.manual_seed(0)
    model = LATTICE(data, cfg)
    with torch.no_grad():
        model.modal_weight.copy_(torch.tensor([0.3, -0.2]))
        graph = model.latent_graph()
        w = torch.softmax(model.modal_weight, 0).numpy()
        learned = sum(
            w[j] * _knn(model.proj[m](model.features[m]).numpy(), 4)
            for j, m in enumerate(model.modalities)
        )
        original = sum(
            w[j] * _sym(_knn(data.features[f"mm:{m}"], 4)) for j, m in enumerate(model.modalities)
        )
        expected = (1 - 0.7) * _sym(learned) + 0.7 * original
        got = model.item_step(graph, torch.eye(N_ITEMS)).numpy()
    _close(got, expected, atol=1e-6)


def test_lattice_backbone_and_scores_follow_the_reference(data):
    model = LATTICE(data, LATTICEConfig(knn_k=4))
    r = (data.matrix("train").toarray() > 0).astype(np.float64)
    a = np.block([[np.zeros((N_USERS, N_USERS)), r], [r.T, np.zeros((N_ITEMS, N_ITEMS))]]) + np.eye(
        N_USERS + N_ITEMS
    )
    rw = a / a.sum(1, keepdims=True)
    _close(_dense(model.adj, N_USERS + N_ITEMS), rw, atol=1e-6)
    with torch.no_grad():
        users, items = model.embeddings()
        g = model.item_step(model.latent_graph(), torch.eye(N_ITEMS)).numpy()
    x = torch.cat([model.user_emb, model.item_emb]).detach().numpy()
    out = _lightgcn(rw, x, 2)
    h = g @ model.item_emb.detach().numpy()
    _close(users, out[:N_USERS])
    _close(items, out[N_USERS:] + h / np.linalg.norm(h, axis=1, keepdims=True))


def test_lattice_graph_gets_gradients_only_on_the_epochs_first_batch(data):
    model = LATTICE(data)
    model.on_epoch_start(0)
    users, pos, neg = _batch()
    model.loss(users, pos, neg).backward()
    first = [p.grad.abs().sum().item() for p in (model.proj["image"].weight, model.modal_weight)]
    assert all(g > 0 for g in first)
    model.zero_grad()
    model.loss(users, pos, neg).backward()
    assert model.proj["image"].weight.grad is None and model.modal_weight.grad is None
    assert model.item_emb.grad.abs().sum() > 0
    model.zero_grad()
    model.on_epoch_start(1)
    model.loss(users, pos, neg).backward()
    assert model.modal_weight.grad.abs().sum() > 0


# ---------------------------------------------------------------------------- BM3
def test_bm3_loss_terms_match_direct_computation(data):
    torch.manual_seed(0)
    cfg = BM3Config(dropout=0.0, reg_weight=0.3, cl_weight=1.5)
    model = BM3(data, cfg)
    users, items, _ = _batch(2)
    terms = model.loss_terms(users, items)
    grads = torch.autograd.grad(terms["loss"], list(model.parameters()), allow_unused=True)

    a_hat = torch.from_numpy(_a_hat(data)).float()
    x = torch.cat([model.user_emb, model.item_emb])
    out = (x + a_hat @ x) / 2
    u_all, i_all = out[:N_USERS], out[N_USERS:] + model.item_emb
    pred = model.predictor

    def cos_loss(a, b):
        return 1 - F.cosine_similarity(a, b.detach(), dim=1).mean()

    ui = cos_loss(pred(u_all[users]), i_all[items]) + cos_loss(pred(i_all[items]), u_all[users])
    reg = 0.3 * (u_all.norm() + i_all.norm()) / N_ITEMS
    modal = 0.0
    for m in model.modalities:
        f = model.proj[m](model.features[m])
        modal = modal + cos_loss(pred(f[items]), i_all[items]) + cos_loss(pred(f[items]), f[items])
    direct = {"ui": ui, "reg": reg, "modal": 1.5 * modal}
    for key, value in direct.items():
        assert terms[key].item() == pytest.approx(value.item(), rel=1e-5), key
    total = ui + reg + 1.5 * modal
    expected = torch.autograd.grad(total, list(model.parameters()), allow_unused=True)
    for got, want in zip(grads, expected, strict=True):
        assert (got is None) == (want is None)
        if got is not None:
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    with torch.no_grad():
        u, i = model.embeddings()
        torch.testing.assert_close(u, pred(u_all), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(i, pred(i_all), rtol=1e-5, atol=1e-6)


def test_bm3_dropout_perturbs_only_the_targets(data):
    model = BM3(data, BM3Config(dropout=0.5))
    users, items, _ = _batch(3)
    torch.manual_seed(5)
    a = model.loss_terms(users, items)
    torch.manual_seed(5)
    b = model.loss_terms(users, items)
    assert a["loss"].item() == b["loss"].item()
    clean = BM3(data, BM3Config(dropout=0.0))
    clean.load_state_dict(model.state_dict())
    c = clean.loss_terms(users, items)
    assert a["ui"].item() != pytest.approx(c["ui"].item())
    assert a["reg"].item() == pytest.approx(c["reg"].item())


def test_bm3_targets_have_one_dropout_mask_per_distinct_user_and_item(data, monkeypatch):
    """The targets are rows of the dropped-out tables (MMRec perturbs the whole tables): a
    user or item twice in a batch gets the same mask, each element kept and scaled by
    1 / (1 - p) or zeroed."""
    import alignrec.models.bm3 as bm3

    model = BM3(data, BM3Config(dropout=0.5))
    users = torch.tensor([0, 3, 0, 5, 3, 0])
    items = torch.tensor([2, 1, 2, 4, 1, 7])
    targets = []
    monkeypatch.setattr(
        bm3, "cosine_loss", lambda online, target: targets.append(target) or online.sum() * 0
    )
    torch.manual_seed(3)
    model.loss_terms(users, items)
    with torch.no_grad():
        u_all, i_all = model.encode()
    i_tgt, u_tgt = targets[0], targets[1]  # user -> item, then item -> user
    for tgt, ids, table in ((u_tgt, users, u_all), (i_tgt, items, i_all)):
        rows = table[ids]
        assert torch.all((tgt == 0) | torch.isclose(tgt, 2 * rows)), "kept and scaled, or zeroed"
        assert 0 < (tgt == 0).float().mean() < 1
        for a in range(len(ids)):
            for b in range(len(ids)):
                if ids[a] == ids[b]:
                    assert torch.equal(tgt[a], tgt[b])  # one mask per distinct row
    assert not torch.equal(i_tgt[0] == 0, i_tgt[1] == 0)  # distinct rows draw their own masks


# ---------------------------------------------------------------------------- MGCN
def test_mgcn_item_graphs_equal_dense_knn(data):
    model = MGCN(data, MGCNConfig(knn_k=5))
    for m, graph in zip(model.modalities, model.item_graphs, strict=True):
        _close(_dense(graph, N_ITEMS), _sym(_knn(data.features[f"mm:{m}"], 5)), atol=1e-6)


@pytest.mark.parametrize("count", [1, 2, 3])
def test_mgcn_forward_matches_dense_reference(data, count):
    ds = _with_modalities(data, count)
    torch.manual_seed(0)
    model = MGCN(ds, MGCNConfig(knn_k=4, n_layers=2))
    assert len(model.modalities) == count
    a_hat = torch.from_numpy(_a_hat(ds)).float()
    with torch.no_grad():
        views = model.forward()
        x = torch.cat([model.user_emb, model.item_emb])
        content = (x + a_hat @ x + a_hat @ a_hat @ x) / 3
        r_hat = a_hat[:N_USERS, N_USERS:]
        per_modality = []
        for m in model.modalities:
            s = torch.from_numpy(_sym(_knn(ds.features[f"mm:{m}"], 4))).float()
            gate = torch.sigmoid(model.purifier[m](model.proj[m](model.features[m])))
            h = s @ (s @ (model.item_emb * gate))
            per_modality.append(torch.cat([r_hat @ h, h]))
        scores = torch.cat([model.query(v) for v in per_modality], dim=1)  # [N, M]
        att = torch.softmax(scores, dim=1)
        assert att.shape == (N_USERS + N_ITEMS, count)
        common = sum(att[:, j : j + 1] * v for j, v in enumerate(per_modality))
        specific = [
            torch.sigmoid(model.prefer[m](content)) * (v - common)
            for m, v in zip(model.modalities, per_modality, strict=True)
        ]
        side = (common + sum(specific)) / (count + 1)
    for key, want in {"C": content, "S": side, "Z": content + side}.items():
        assert views[key].shape == (N_USERS + N_ITEMS, model.config.embedding_size)
        torch.testing.assert_close(views[key], want, rtol=1e-4, atol=1e-6)


def test_mgcn_with_one_modality_is_alignrecs_stage_two_architecture(data):
    # AlignRec merges the channels into one: with the same weights, MGCN's side view
    # of a single modality is half of AlignRec's multimodal view (common + 0 specific) / 2.
    table = data.features["content"]
    ds = dataclasses.replace(data, features={"content": table, "mm:content": table})
    align = AlignRec(ds, AlignRecConfig(knn_k=4))
    mgcn = MGCN(ds, MGCNConfig(knn_k=4, n_layers=1))
    with torch.no_grad():
        mgcn.user_emb.copy_(align.user_emb)
        mgcn.item_emb.copy_(align.item_emb)
        mgcn.features["content"].copy_(align.item_features)
        mgcn.proj["content"].load_state_dict(align.proj.state_dict())
        mgcn.purifier["content"].load_state_dict(align.gate.state_dict())
        a, m = align.forward(), mgcn.forward()
    torch.testing.assert_close(m["C"], a["C"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(m["S"], a["M"] / 2, rtol=1e-5, atol=1e-6)


def test_mgcn_loss_terms_match_direct_computation(data):
    torch.manual_seed(1)
    model = MGCN(data, MGCNConfig(reg_weight=0.01, cl_weight=0.2))
    users, pos, neg = _batch(4, b=20)
    terms = model.loss_terms(users, pos, neg)
    v = model.forward()
    z, s, c = v["Z"], v["S"], v["C"]
    zu, zp, zn = z[users], z[pos + N_USERS], z[neg + N_USERS]
    bpr = -F.logsigmoid((zu * zp).sum(1) - (zu * zn).sum(1)).mean()
    reg = 0.01 * (zu.pow(2).sum() + zp.pow(2).sum() + zn.pow(2).sum()) / 2 / len(users)
    cl = 0.2 * (
        info_nce(s[pos + N_USERS], c[pos + N_USERS], 0.2) + info_nce(s[users], c[users], 0.2)
    )
    assert terms["bpr"].item() == pytest.approx(bpr.item(), rel=1e-5)
    assert terms["reg"].item() == pytest.approx(reg.item(), rel=1e-5)
    assert terms["cl"].item() == pytest.approx(cl.item(), rel=1e-5)
    assert terms["loss"].item() == pytest.approx((bpr + reg + cl).item(), rel=1e-5)


# ---------------------------------------------------------------------------- SLMRec
def test_slmrec_passes_and_losses_match_direct_computation(data):
    torch.manual_seed(2)
    model = SLMRec(data, SLMRecConfig(embedding_size=8, n_layers=3, ssl_temp=0.5, ssl_alpha=0.3))
    d = 8
    assert [h.out_features for h in model.fac_modal] == [8, 4]  # image space d, text d / 2
    a_hat = _a_hat(data)
    users, items, _ = _batch(5)
    with torch.no_grad():
        user_passes, item_passes = model.passes()
        channels = [model.item_emb] + [
            model.dense[j](F.normalize(torch.from_numpy(data.features[f"mm:{m}"]), dim=1))
            for j, m in enumerate(model.modalities)
        ]
        for c, items_c in enumerate(channels):
            x = torch.cat([model.user_emb, items_c]).numpy()
            out = _lightgcn(a_hat, x, 3)
            _close(user_passes[:, c * d : (c + 1) * d], out[:N_USERS])
            _close(item_passes[:, c * d : (c + 1) * d], out[N_USERS:])
        terms = model.loss_terms(users, items)
        u = F.normalize(model.user_out(user_passes[users]), dim=1)
        i = F.normalize(model.item_out(item_passes[items]), dim=1)
        labels = torch.arange(len(items))
        main = F.cross_entropy(u @ i.T / 0.2, labels)
        b = item_passes[items]
        z1 = model.fac_id(b[:, :d])
        fac = F.cross_entropy(z1 @ model.fac_modal[0](b[:, d : 2 * d]).T / 0.5, labels)
        z2 = model.fac_chain[0](z1)
        fac = fac + F.cross_entropy(z2 @ model.fac_modal[1](b[:, 2 * d :]).T / 0.5, labels)
    assert terms["main"].item() == pytest.approx(main.item(), rel=1e-5)
    assert terms["ssl"].item() == pytest.approx(0.3 * fac.item(), rel=1e-5)


# ---------------------------------------------------------------------------- all five
@pytest.mark.parametrize("count", [1, 3])
@pytest.mark.parametrize("cls", [LATTICE, BM3, SLMRec, FREEDOM, MGCN], ids=lambda c: c.__name__)
def test_any_number_of_modalities(data, cls, count):
    ds = _with_modalities(data, count)
    torch.manual_seed(0)
    model = cls(ds)
    assert len(model.modalities) == count
    model.train()
    model.on_epoch_start(0)
    loss = model.loss(*_batch(6))
    assert torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    model.eval()
    with torch.no_grad():
        model.on_eval_start()
        scores = model.full_scores(torch.arange(5))
        model.on_eval_end()
    assert scores.shape == (5, N_ITEMS) and torch.isfinite(scores).all()
