"""VBPR, MMGCN, GRCN and DualGNN against dense references on tiny graphs.

The shared contract (one epoch, state dict, determinism, missing modalities) is in
test_contract.py; these check what each model computes.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from torch.nn import functional as F

from alignrec.models import GRCN, MMGCN, VBPR, DualGNN
from alignrec.models.base import binary_interactions
from alignrec.models.dualgnn import DualGNNConfig, user_cooccurrence_graph
from alignrec.models.grcn import GRCNConfig
from alignrec.models.mmgcn import MMGCNConfig
from alignrec.models.sparse import EdgeGraph
from alignrec.models.vbpr import VBPRConfig
from tests.training.synth import clustered

TOL = {"rtol": 1e-4, "atol": 1e-5}


@pytest.fixture(scope="module")
def data():
    return clustered(2, n_users=12, n_items=10, per_user=5)


def _dense_graph(dataset) -> torch.Tensor:
    """Binary symmetric [U + I, U + I] user-item graph of the train pairs."""
    n = dataset.n_users + dataset.n_items
    a = torch.zeros(n, n)
    for u, i in dataset.train:
        a[u, dataset.n_users + i] = a[dataset.n_users + i, u] = 1.0
    return a


def _masked_softmax(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Row softmax over the entries where ``mask`` is set; rows without any are zero."""
    out = torch.softmax(scores.masked_fill(mask == 0, -torch.inf), dim=1)
    return out.nan_to_num(0.0)


def _random_pattern(seed: int, shape=(7, 6)) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    dense = (rng.random(shape) < 0.45) * rng.uniform(0.5, 2.0, shape)
    dense[2] = 0  # a receiver without edges
    dense[:, 4] = 0  # a sender without edges
    return sp.csr_matrix(dense.astype(np.float32))


def _leaves(*tensors: torch.Tensor) -> list[torch.Tensor]:
    """Detached copies of ``tensors`` that collect their own gradients."""
    return [t.detach().clone().requires_grad_(True) for t in tensors]


def _assert_same_with_gradients(out, ref, inputs, dense_inputs):
    """``out`` equals ``ref``, and a random weighting of both gives the same input gradients."""
    torch.testing.assert_close(out, ref, **TOL)
    w = torch.randn_like(ref)
    (out * w).sum().backward()
    (ref * w).sum().backward()
    for got, want in zip(inputs, dense_inputs, strict=True):
        torch.testing.assert_close(got.grad, want.grad, **TOL)


def test_edge_graph_product_and_gradients_match_dense():
    m = _random_pattern(0)
    g = EdgeGraph(m)
    torch.manual_seed(0)
    values = torch.randn(g.n_edges, requires_grad=True)
    x = torch.randn(m.shape[1], 3, requires_grad=True)
    dense_values, dense_x = _leaves(values, x)
    dense = torch.zeros(m.shape).index_put((g.rows, g.cols), dense_values)
    _assert_same_with_gradients(
        g.matmul(x, values), dense @ dense_x, [values, x], [dense_values, dense_x]
    )
    # Called, it is the matrix with its own entries; the gradient of x is Aᵀ @ grad.
    x = torch.randn(m.shape[1], 3, requires_grad=True)
    (dense_x,) = _leaves(x)
    _assert_same_with_gradients(g(x), torch.tensor(m.toarray()) @ dense_x, [x], [dense_x])


def test_edge_graph_row_softmax_and_edge_dot_match_dense_with_gradients():
    m = _random_pattern(1)
    g = EdgeGraph(m)
    torch.manual_seed(1)
    a = torch.randn(m.shape[0], 3, requires_grad=True)
    b = torch.randn(m.shape[1], 3, requires_grad=True)
    dense_a, dense_b = _leaves(a, b)
    out = g.row_softmax(5 * g.edge_dot(a, b))
    ref = _masked_softmax(5 * dense_a @ dense_b.T, torch.tensor(m.toarray()))[g.rows, g.cols]
    _assert_same_with_gradients(out, ref, [a, b], [dense_a, dense_b])


def test_vbpr_score_is_the_direct_formula(data):
    torch.manual_seed(0)
    model = VBPR(data, VBPRConfig(embedding_size=4))
    d = 4
    # Modality tables in sorted name order: image, then text.
    f = torch.tensor(np.concatenate([data.features["mm:image"], data.features["mm:text"]], 1))
    theta_u = model.user_emb.detach()
    content = f @ model.proj.weight.detach().T + model.proj.bias.detach()
    ref = theta_u[:, :d] @ model.item_emb.detach().T + theta_u[:, d:] @ content.T
    with torch.no_grad():
        scores = model.full_scores(torch.arange(data.n_users))
    torch.testing.assert_close(scores, ref, **TOL)


def test_mmgcn_matches_dense_mean_aggregation_reference(data):
    torch.manual_seed(0)
    model = MMGCN(data, MMGCNConfig(embedding_size=4, n_layers=2, dim_latent=8))
    a = _dense_graph(data)
    mean = a / a.sum(1, keepdim=True).clamp_min(1)
    ids = model.id_embedding
    reps = []
    for branch in model.branches:
        f = branch.features if branch.mlp is None else branch.mlp(branch.features)
        x = F.normalize(torch.cat([branch.preference, f]), dim=1)
        for conv, linear, gate in zip(branch.convs, branch.linears, branch.gates, strict=True):
            h = F.leaky_relu(mean @ (x @ conv))
            x = F.leaky_relu(gate(torch.cat([h, F.leaky_relu(linear(x)) + ids], 1)))
        reps.append(x)
    # image (10-d) is wider than dim_latent and projected; text (6-d) stays raw
    assert [b.mlp is not None for b in model.branches] == [True, False]
    torch.testing.assert_close(model.forward(), (reps[0] + reps[1]) / 2, **TOL)


def test_grcn_matches_dense_routing_attention_and_refined_graph(data):
    torch.manual_seed(0)
    model = GRCN(data, GRCNConfig(embedding_size=4, latent_embedding=3, n_layers=2))
    with torch.no_grad():  # make the refined weights differ clearly between modalities
        model.confidence.normal_()
    a = _dense_graph(data)
    r = a[: data.n_users, data.n_users :]
    reps, alphas = [], []
    for branch in model.branches:
        content = F.normalize(F.leaky_relu(branch.mlp(branch.features)), dim=1)
        proto = F.normalize(branch.preference, dim=1)
        for _ in range(2):  # users attend over their own items
            att = _masked_softmax(proto @ content.T, r)
            proto = F.normalize(proto + att @ content, dim=1)
        x = torch.cat([proto, content])
        att = _masked_softmax(x @ x.T, a)
        reps.append(x + att @ x)
        alphas.append(att)
    # edge r <- s: relu(max over modalities of attention x confidence of the sender s)
    weight = torch.relu(
        torch.stack([alphas[m] * model.confidence[:, m][None, :] for m in range(2)]).amax(0)
    )
    x = F.normalize(model.id_embedding, dim=1)
    ids = x + weight @ x + weight @ (weight @ x)
    torch.testing.assert_close(model.forward(), torch.cat([ids, *reps], 1), **TOL)


def test_user_cooccurrence_graph_matches_dense_top_k_softmax():
    rng = np.random.default_rng(3)
    dense = (rng.random((9, 6)) < 0.4).astype(np.float32)
    dense[8] = 0  # a user who shares nothing
    r = sp.csr_matrix(dense)
    k = 3
    got = user_cooccurrence_graph(r, k=k, block_size=4).toarray()
    counts = (r @ r.T).toarray()
    np.fill_diagonal(counts, 0)
    ref = np.zeros_like(counts)
    for u in range(9):
        order = sorted(np.flatnonzero(counts[u]), key=lambda v: (-counts[u, v], v))[:k]
        if order:
            e = np.exp(counts[u, order] - counts[u, order].max())
            ref[u, order] = e / e.sum()
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-7)
    assert (got > 0).sum(1).max() == k and got[8].sum() == 0


def test_dualgnn_matches_dense_reference(data):
    torch.manual_seed(0)
    model = DualGNN(data, DualGNNConfig(embedding_size=4, n_layers=2, user_knn_k=3))
    a = _dense_graph(data)
    deg = a.sum(1)
    inv = torch.where(deg > 0, deg.rsqrt(), torch.zeros_like(deg))
    a_hat = inv[:, None] * a * inv[None, :]
    reps = []
    for branch in model.branches:
        f = branch.mlp_out(F.leaky_relu(branch.mlp(branch.features)))
        x = F.normalize(torch.cat([branch.preference, f]), dim=1)
        reps.append(x + a_hat @ x + a_hat @ (a_hat @ x))
    users = sum(model.user_weight[:, m, None] * reps[m][: data.n_users] for m in range(2))
    g = torch.tensor(user_cooccurrence_graph(binary_interactions(data), k=3).toarray())
    user_all, item_all = model.embeddings()
    torch.testing.assert_close(user_all, users + g @ users, **TOL)
    torch.testing.assert_close(item_all, (reps[0] + reps[1])[data.n_users :], **TOL)


def _with_modalities(dataset, count: int):
    """``dataset`` with 1 (text) or 3 (text, image and a 5-d audio) modality tables."""
    features = {k: v for k, v in dataset.features.items() if not k.startswith("mm:")}
    features["mm:text"] = dataset.features["mm:text"]
    if count == 3:
        features["mm:image"] = dataset.features["mm:image"]
        rng = np.random.default_rng(0)
        features["mm:audio"] = rng.standard_normal((dataset.n_items, 5)).astype(np.float32)
    return dataclasses.replace(dataset, features=features)


@pytest.mark.parametrize("count", [1, 3])
@pytest.mark.parametrize("cls", [VBPR, MMGCN, GRCN, DualGNN])
def test_models_take_every_modality_the_dataset_has(cls, count, data):
    ds = _with_modalities(data, count)
    torch.manual_seed(0)
    model = cls(ds)
    if cls is VBPR:
        assert model.proj.in_features == {1: 6, 3: 6 + 10 + 5}[count]
    else:
        assert len(model.branches) == count
        assert model.modalities == (["text"] if count == 1 else ["audio", "image", "text"])
    users, items = torch.arange(6), torch.arange(6)
    loss = model.loss(users, items, (items + 3) % ds.n_items)
    loss.backward()
    assert torch.isfinite(loss)
    for name, p in model.named_parameters():  # every branch learns
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    user_all, item_all = model.embeddings()
    assert user_all.shape[0] == ds.n_users and item_all.shape[0] == ds.n_items
    if cls is GRCN:
        assert item_all.shape[1] == 64 + count * 64
