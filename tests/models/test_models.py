"""Model contract, LightGCN graph and propagation, and a one-epoch smoke test per model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from alignrec.data.dataset import Dataset
from alignrec.errors import ConfigError
from alignrec.models import BPR, MODELS, LightGCN, LightGCNConfig, RecModel, get_model_class
from alignrec.models.base import bpr_loss, embedding_reg, normalized_adjacency
from alignrec.models.bpr import BPRConfig
from tests.training.synth import clustered


def test_registry_is_explicit():
    assert MODELS["bpr"] is BPR and MODELS["lightgcn"] is LightGCN
    assert get_model_class("LightGCN") is LightGCN
    with pytest.raises(ConfigError, match="unknown model 'nope'"):
        get_model_class("nope")
    for cls in MODELS.values():
        assert issubclass(cls, RecModel)


def test_adjacency_uses_train_only_and_is_symmetric_normalised():
    # duplicate train pair (0,1) must collapse; valid/test pairs must not appear
    ds = Dataset.from_pairs("g", 2, 3, [(0, 0), (0, 1), (0, 1), (1, 1)], [(1, 2)], [(1, 0)])
    a = normalized_adjacency(ds).toarray()
    assert a.shape == (5, 5)
    np.testing.assert_allclose(a, a.T)
    deg_u = np.array([2, 1])
    deg_i = np.array([1, 2, 0])
    expected = np.zeros((5, 5))
    for u, i in [(0, 0), (0, 1), (1, 1)]:
        expected[u, 2 + i] = expected[2 + i, u] = 1 / np.sqrt(deg_u[u] * deg_i[i])
    np.testing.assert_allclose(a, expected, rtol=1e-6)
    assert a[1, 2 + 2] == 0 and a[1, 2 + 0] == 0  # valid and test pairs absent


def test_lightgcn_propagation_matches_dense_reference_and_gradients():
    ds = clustered(0, n_users=10, n_items=8, per_user=4)
    torch.manual_seed(0)
    m = LightGCN(ds, LightGCNConfig(embedding_size=5, n_layers=2))
    a = torch.tensor(normalized_adjacency(ds).toarray(), dtype=torch.float32)
    x0 = torch.cat([m.user_emb, m.item_emb]).detach().requires_grad_(True)
    ref = (x0 + a @ x0 + a @ a @ x0) / 3
    u, i = m.propagate()
    torch.testing.assert_close(torch.cat([u, i]), ref, rtol=1e-5, atol=1e-6)
    w = torch.randn_like(ref)
    (ref * w).sum().backward()
    (torch.cat(m.propagate()) * w).sum().backward()
    torch.testing.assert_close(
        torch.cat([m.user_emb.grad, m.item_emb.grad]), x0.grad, rtol=1e-5, atol=1e-6
    )


def test_lightgcn_eval_cache_gives_same_scores_and_is_dropped():
    ds = clustered(1)
    torch.manual_seed(0)
    m = LightGCN(ds)
    users = torch.arange(5)
    fresh = m.full_scores(users)
    with torch.no_grad():
        m.on_eval_start()
        cached = m.full_scores(users)
        m.on_eval_end()
    torch.testing.assert_close(fresh, cached)
    assert fresh.shape == (5, ds.n_items)
    assert m._cache is None


def test_lightgcn_reg_is_on_ego_embeddings_mmrec_form():
    ds = clustered(2)
    torch.manual_seed(0)
    cfg = LightGCNConfig(reg_weight=0.5)
    m = LightGCN(ds, cfg)
    users, pos, neg = torch.tensor([0, 1]), torch.tensor([0, 1]), torch.tensor([2, 3])
    u, i = m.propagate()
    mf = bpr_loss((u[users] * i[pos]).sum(1), (u[users] * i[neg]).sum(1))
    reg = (m.user_emb[users].norm() + m.item_emb[pos].norm() + m.item_emb[neg].norm()) / 2
    torch.testing.assert_close(m.loss(users, pos, neg), mf + 0.5 * reg)


def test_embedding_reg_forms():
    a, b = torch.ones(4, 2), 2 * torch.ones(4, 2)
    assert embedding_reg(a, b).item() == pytest.approx((np.sqrt(8) + np.sqrt(32)) / 4)
    assert embedding_reg(a, b, squared=True).item() == pytest.approx((8 + 32) / 2 / 4)


def test_bpr_loss_and_scores():
    ds = clustered(3)
    torch.manual_seed(0)
    m = BPR(ds, BPRConfig(reg_weight=0.0))
    users, pos, neg = torch.tensor([0, 2]), torch.tensor([1, 3]), torch.tensor([4, 5])
    s = m.full_scores(users)
    expected = -torch.log(torch.sigmoid(s[[0, 1], pos] - s[[0, 1], neg])).mean()
    torch.testing.assert_close(m.loss(users, pos, neg), expected)


def test_wrong_config_type_is_refused():
    with pytest.raises(TypeError, match="LightGCNConfig"):
        LightGCN(clustered(0), BPRConfig())


@pytest.mark.parametrize("name", sorted(MODELS))
def test_one_epoch_smoke(name):
    from alignrec.training import train

    ds = clustered(4)
    res = train(name, ds, {"epochs": 1, "quiet": True, "batch_size": 64}, seed=0)
    assert res.epochs_run == 1 and res.best_epoch == 0
    assert np.isfinite(res.history[0]["train/loss"])
    assert 0.0 <= res.test.metrics["recall@20"] <= 1.0
    assert all(torch.isfinite(p).all() for p in res.model.parameters())
    scores = res.model.full_scores(torch.arange(3))
    assert scores.shape == (3, ds.n_items)
