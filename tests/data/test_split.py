"""The data protocol of docs §4: k-core filtering and the per-user random split."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from alignrec.data.split import k_core, random_split


def _users(counts):
    return np.repeat(np.arange(len(counts)), counts)


@pytest.mark.parametrize("n", [3, 5, 9, 10, 11, 19, 20, 37, 100])
def test_split_sizes_follow_the_protocol(n):
    labels = random_split(_users([n]), seed=1)
    valid, test = int((labels == 1).sum()), int((labels == 2).sum())
    if n < 10:
        assert (valid, test) == (1, 1)
    else:
        v = int(0.2 * n)
        assert (valid, test) == (v // 2, v - v // 2)
    assert (labels == 0).sum() == n - valid - test


def test_split_is_deterministic_and_seeded():
    users = _users([12, 30, 7, 50])
    a, b = random_split(users, seed=5), random_split(users, seed=5)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, random_split(users, seed=6))


def test_split_ignores_row_order_of_other_users():
    # Labels depend only on the seed and the users' rows, in a stable way.
    users = _users([15, 15])
    labels = random_split(users, seed=3)
    assert {int((labels[users == u] > 0).sum()) for u in (0, 1)} == {3}


def test_k_core_leaves_every_user_and_item_with_k():
    rng = np.random.default_rng(0)
    inter = pd.DataFrame(
        {"user_id": rng.integers(0, 50, 600).astype(str), "item_id": rng.zipf(1.6, 600).astype(str)}
    ).drop_duplicates()
    out = k_core(inter, 5)
    assert len(out) > 0
    assert out["user_id"].value_counts().min() >= 5
    assert out["item_id"].value_counts().min() >= 5
    # It is the largest such subset: any dropped row fails the rule on the survivors.
    assert k_core(out, 5).equals(out)
