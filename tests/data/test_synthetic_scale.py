"""Generated in-memory datasets at a published scale (``synthetic:<preset>``)."""

from __future__ import annotations

import numpy as np
import pytest

from alignrec.data.synthetic import SCALES, parse_scale, scale_dataset
from alignrec.errors import ConfigError


def test_electronics_preset_has_the_published_size():
    s = SCALES["electronics"]
    assert (s.users, s.items, s.interactions, s.dim) == (192_403, 63_001, 1_689_188, 768)


def test_every_user_can_be_trained_validated_and_tested():
    spec = "synthetic:tiny,users=3000,items=800,interactions=30000,dim=8"
    d = scale_dataset(spec)
    assert (d.n_users, d.n_items, d.name) == (3000, 800, spec)
    assert len(d.interactions) <= 30000 and len(d.interactions) > 29000
    for split, least in (("train", 3), ("valid", 1), ("test", 1)):
        per_user = np.bincount(d.pairs(split)[:, 0], minlength=d.n_users)
        assert per_user.min() >= least, split
    every = np.concatenate([d.train, d.valid, d.test])
    keys = every[:, 0] * d.n_items + every[:, 1]
    assert len(np.unique(keys)) == len(keys)  # no (user, item) pair twice
    # power-law popularity: the top 1% of items hold far more than 1% of interactions
    pop = np.sort(np.bincount(every[:, 1], minlength=d.n_items))[::-1]
    assert pop[: d.n_items // 100].sum() > 0.1 * pop.sum()
    assert d.features["content"].shape == (800, 8)
    assert d.features["content"].dtype == np.float32
    assert d.features["mm:text"].shape == (800, 4) and d.features["mm:image"].shape == (800, 4)


def test_same_seed_same_data_and_no_features_when_dim_is_zero():
    a, b = scale_dataset("synthetic:tiny"), scale_dataset("synthetic:tiny")
    assert np.array_equal(a.train, b.train) and np.array_equal(a.test, b.test)
    assert not np.array_equal(a.train, scale_dataset("synthetic:tiny,seed=1").train)
    assert scale_dataset("synthetic:tiny,dim=0").features == {}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("synthetic:huge", "unknown synthetic scale 'huge'"),
        ("synthetic:tiny,colour=3", "expected key=value"),
        ("synthetic:tiny,users=many", "users='many'"),
        ("synthetic:tiny,interactions=10", "interactions must lie in"),
    ],
)
def test_bad_specs_are_clear_errors(spec, message):
    with pytest.raises(ConfigError, match=message):
        parse_scale(spec)
