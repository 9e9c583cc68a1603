"""Metric functions against hand-computed rankings."""

from __future__ import annotations

import math

import numpy as np
import pytest

from alignrec.evaluation.metrics import METRICS, per_user_metrics


def _approx(x):
    return pytest.approx(x, abs=1e-12)


def test_registry_names():
    assert set(METRICS) == {"recall", "ndcg", "precision", "map", "hit"}


def test_hand_computed_single_user():
    # ranked list: hit at ranks 1 and 3 (of 5); the user has 4 relevant items
    hits = np.array([[1, 0, 1, 0, 0]], dtype=bool)
    n_rel = np.array([4])
    m = per_user_metrics(hits, n_rel, (1, 3, 5))
    assert m["recall@3"][0] == _approx(2 / 4)
    assert m["precision@3"][0] == _approx(2 / 3)
    assert m["precision@5"][0] == _approx(2 / 5)
    assert m["hit@1"][0] == 1.0
    dcg = 1 / math.log2(2) + 1 / math.log2(4)
    idcg3 = 1 / math.log2(2) + 1 / math.log2(3) + 1 / math.log2(4)
    assert m["ndcg@3"][0] == _approx(dcg / idcg3)
    idcg5 = idcg3 + 1 / math.log2(5)  # min(|rel|=4, K=5) = 4 ideal hits
    assert m["ndcg@5"][0] == _approx(dcg / idcg5)
    # AP@3: (P@1 + P@3) / min(4, 3) = (1 + 2/3) / 3
    assert m["map@3"][0] == _approx((1 + 2 / 3) / 3)
    assert m["map@5"][0] == _approx((1 + 2 / 3) / 4)
    assert m["map@1"][0] == _approx(1.0)


def test_perfect_ranking_gives_one():
    hits = np.array([[1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 1]], dtype=bool)
    n_rel = np.array([2, 1, 6])
    m = per_user_metrics(hits, n_rel, (1, 2, 4))
    for k in (1, 2, 4):
        np.testing.assert_allclose(m[f"ndcg@{k}"], 1.0)
        np.testing.assert_allclose(m[f"map@{k}"], 1.0)
        np.testing.assert_allclose(m[f"hit@{k}"], 1.0)
    np.testing.assert_allclose(m["recall@4"], [1.0, 1.0, 4 / 6])


def test_no_hits_gives_zero():
    hits = np.zeros((3, 5), dtype=bool)
    m = per_user_metrics(hits, np.array([1, 2, 7]), (1, 5))
    for v in m.values():
        np.testing.assert_array_equal(v, 0.0)


def test_hit_at_last_position_only():
    hits = np.array([[0, 0, 0, 0, 1]], dtype=bool)
    m = per_user_metrics(hits, np.array([1]), (4, 5))
    assert m["recall@4"][0] == 0.0 and m["hit@4"][0] == 0.0
    assert m["recall@5"][0] == 1.0
    assert m["ndcg@5"][0] == _approx(1 / math.log2(6))
    assert m["map@5"][0] == _approx(1 / 5)


def test_rejects_users_without_relevant_items_and_bad_k():
    with pytest.raises(ValueError):
        per_user_metrics(np.zeros((1, 3), bool), np.array([0]), (1,))
    with pytest.raises(ValueError):
        per_user_metrics(np.zeros((1, 3), bool), np.array([1]), (4,))
    with pytest.raises(ValueError):
        per_user_metrics(np.zeros((1, 3), bool), np.array([1]), (1,), names=["mrr"])
