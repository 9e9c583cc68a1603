"""Negative sampler: never a training item, roughly uniform, reproducible, covers every pair."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from alignrec.data.dataset import Dataset
from alignrec.training import NegativeSampler
from tests.training.synth import clustered


def _dense_dataset() -> Dataset:
    # users own most of the catalogue: rejection has to resample a lot
    rng = np.random.default_rng(0)
    train = []
    for u in range(30):
        owned = rng.permutation(12)[: 8 + u % 4]  # 8..11 of 12 items
        train += [(u, int(i)) for i in owned]
    return Dataset.from_pairs("dense", 30, 12, train, [], [])


def test_negatives_are_never_training_items():
    ds = _dense_dataset()
    sampler = NegativeSampler(ds, seed=1)
    owned = ds.matrix("train").toarray() > 0
    for _ in range(20):
        for users, pos, neg in sampler.epoch(batch_size=17):
            assert not owned[users.numpy(), neg.numpy()].any()
            assert owned[users.numpy(), pos.numpy()].all()


def test_negatives_are_uniform_over_the_non_training_items():
    ds = Dataset.from_pairs("u", 1, 5, [(0, 1), (0, 3)], [], [])
    sampler = NegativeSampler(ds, seed=0)
    neg = sampler.sample_negatives(torch.zeros(30000, dtype=torch.long))
    counts = np.bincount(neg.numpy(), minlength=5)
    assert counts[1] == 0 and counts[3] == 0
    np.testing.assert_allclose(counts[[0, 2, 4]] / 30000, 1 / 3, atol=0.015)


def test_epoch_covers_every_pair_once_and_is_reproducible():
    ds = clustered(0)
    a = list(NegativeSampler(ds, seed=5).epoch(64))
    b = list(NegativeSampler(ds, seed=5).epoch(64))
    c = list(NegativeSampler(ds, seed=6).epoch(64))
    for x, y in zip(a, b, strict=True):
        for tx, ty in zip(x, y, strict=True):
            assert torch.equal(tx, ty)
    assert not all(torch.equal(x[2], y[2]) for x, y in zip(a, c, strict=True))
    users = torch.cat([x[0] for x in a])
    pos = torch.cat([x[1] for x in a])
    seen = sorted(zip(users.tolist(), pos.tolist(), strict=True))
    assert seen == sorted(map(tuple, ds.train.tolist()))
    assert max(len(x[0]) for x in a) == 64


def test_user_owning_every_item_is_refused():
    ds = Dataset.from_pairs("full", 2, 2, [(0, 0), (0, 1), (1, 0)], [], [])
    with pytest.raises(ValueError, match="every item"):
        NegativeSampler(ds)


def test_is_train_item_lookup():
    ds = Dataset.from_pairs("l", 3, 4, [(0, 1), (2, 3), (2, 0)], [], [])
    s = NegativeSampler(ds)
    users = torch.tensor([0, 0, 2, 2, 1, 2])
    items = torch.tensor([1, 2, 3, 0, 1, 1])
    assert s.is_train_item(users, items).tolist() == [True, False, True, True, False, False]
