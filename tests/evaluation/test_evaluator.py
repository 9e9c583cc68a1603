"""Full-ranking evaluator: masking, hand-made rankings, batch-size invariance."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from alignrec.data.dataset import Dataset
from alignrec.evaluation import EvalResult, Evaluator, canonical_topk, evaluate, evaluate_scores


def _tiny() -> Dataset:
    # 3 users, 6 items. user 2 has no valid item -> not evaluated on valid.
    train = [(0, 0), (0, 1), (1, 2), (2, 3)]
    valid = [(0, 2), (0, 5), (1, 0)]
    test = [(0, 3), (1, 4), (2, 0)]
    return Dataset.from_pairs("tiny", 3, 6, train, valid, test)


def test_masks_only_training_items_and_ranks_hand_made_scores():
    ds = _tiny()
    # user 0 prefers its train items (masked), then item 5 (valid), 4, 3 (test), 2 (valid)
    table = torch.tensor(
        [
            [9.0, 8.0, 1.0, 2.0, 3.0, 7.0],
            [0.0, 1.0, 9.0, 2.0, 3.0, 4.0],
            [5.0, 4.0, 3.0, 2.0, 1.0, 0.0],
        ]
    )
    res = evaluate(lambda u: table[u], ds, "valid", ks=(1, 2, 5))
    assert isinstance(res, EvalResult)
    np.testing.assert_array_equal(res.users, [0, 1])
    # user 0 ranking after masking items 0,1: 5, 4, 3, 2 -> hits at ranks 1 and 4
    # user 1 ranking after masking item 2: 5, 4, 3, 1, 0 -> hit at rank 5
    r = res.per_user
    np.testing.assert_allclose(r["recall@1"], [0.5, 0.0])
    np.testing.assert_allclose(r["recall@5"], [1.0, 1.0])
    np.testing.assert_allclose(r["precision@2"], [0.5, 0.0])
    idcg2 = 1 + 1 / math.log2(3)
    assert r["ndcg@5"][0] == pytest.approx((1 + 1 / math.log2(5)) / idcg2)
    assert r["ndcg@5"][1] == pytest.approx(1 / math.log2(6))
    assert r["map@5"][0] == pytest.approx((1 + 2 / 4) / 2)
    assert res.metrics["recall@5"] == pytest.approx(1.0)
    assert res.prefixed()["valid/recall@1"] == pytest.approx(0.25)
    # on test, valid items of user 0 (2, 5) are NOT masked: rank 5, 4, 3 -> test item 3 at rank 3
    t = evaluate(lambda u: table[u], ds, "test", ks=(2, 3))
    np.testing.assert_array_equal(t.users, [0, 1, 2])
    np.testing.assert_allclose(t.per_user["hit@2"], [0.0, 1.0, 1.0])
    np.testing.assert_allclose(t.per_user["hit@3"], [1.0, 1.0, 1.0])


def test_perfect_and_worst_scorers():
    ds = _tiny()
    rel = ds.matrix("valid").toarray()
    perfect = evaluate_scores(torch.tensor(rel, dtype=torch.float32), ds, "valid", ks=(1, 2, 5))
    assert perfect.metrics["ndcg@5"] == pytest.approx(1.0)
    assert perfect.metrics["ndcg@2"] == pytest.approx(1.0)
    assert perfect.metrics["recall@2"] == pytest.approx(1.0)
    worst = evaluate_scores(torch.tensor(-rel, dtype=torch.float32), ds, "valid", ks=(1, 2))
    assert all(v == 0.0 for v in worst.metrics.values())


def test_masked_items_never_count_as_hits_even_when_tied():
    # a user whose only unmasked items are fewer than K; -inf entries must not score
    ds = Dataset.from_pairs("m", 1, 3, [(0, 0), (0, 1)], [(0, 2)], [(0, 2)])
    res = evaluate(lambda u: torch.zeros(len(u), 3), ds, "valid", ks=(1, 3))
    assert res.metrics["recall@1"] == 1.0  # only item 2 is rankable
    assert res.metrics["precision@3"] == pytest.approx(1 / 3)


def test_k_larger_than_catalogue_is_padded_with_misses():
    ds = _tiny()
    res = evaluate(lambda u: torch.zeros(len(u), 6), ds, "valid", ks=(50,))
    assert res.metrics["recall@50"] == pytest.approx(1.0)
    assert res.metrics["precision@50"] == pytest.approx((2 / 50 + 1 / 50) / 2)


def test_canonical_topk_breaks_ties_by_index():
    s = torch.tensor([[1.0, 3.0, 3.0, 0.0, 3.0, 3.0], [2.0, 2.0, 2.0, 2.0, 2.0, 2.0]])
    vals, idx = canonical_topk(s, 3)
    assert idx.tolist() == [[1, 2, 4], [0, 1, 2]]
    assert vals.tolist() == [[3.0, 3.0, 3.0], [2.0, 2.0, 2.0]]


def _random_dataset(seed: int, n_users: int = 120, n_items: int = 70) -> Dataset:
    rng = np.random.default_rng(seed)
    splits = {"train": [], "valid": [], "test": []}
    for u in range(n_users):
        items = rng.permutation(n_items)[: rng.integers(3, 15)]
        splits["valid"] += [(u, i) for i in items[:1]]
        splits["test"] += [(u, i) for i in items[1:2]]
        splits["train"] += [(u, i) for i in items[2:]]
    return Dataset.from_pairs(
        "rand", n_users, n_items, splits["train"], splits["valid"], splits["test"]
    )


@pytest.mark.parametrize("quantised", [False, True])
def test_results_identical_for_any_batch_size(quantised):
    ds = _random_dataset(0)
    g = torch.Generator().manual_seed(1)
    table = torch.randn(ds.n_users, ds.n_items, generator=g)
    if quantised:  # heavy ties: only 3 distinct score values
        table = torch.round(table)
    ref = evaluate(lambda u: table[u], ds, "test", batch_size=ds.n_users)
    for bs in (1, 7, 33, 1024):
        res = evaluate(lambda u, bs=bs: table[u], ds, "test", batch_size=bs)
        np.testing.assert_array_equal(res.users, ref.users)
        assert res.metrics == ref.metrics
        for k, v in ref.per_user.items():
            np.testing.assert_array_equal(res.per_user[k], v)


def test_matches_brute_force_reference():
    ds = _random_dataset(3)
    table = torch.randn(ds.n_users, ds.n_items, generator=torch.Generator().manual_seed(4))
    res = evaluate(lambda u: table[u], ds, "valid", ks=(5, 20))
    train = ds.matrix("train").toarray() > 0
    rel = ds.matrix("valid").toarray() > 0
    for pos, u in enumerate(res.users):
        s = table[u].numpy().copy()
        s[train[u]] = -np.inf
        ranked = np.argsort(-s, kind="stable")[:20]
        h = rel[u][ranked]
        n = rel[u].sum()
        assert res.per_user["recall@20"][pos] == pytest.approx(h.sum() / n)
        dcg = sum(1 / math.log2(r + 2) for r in range(5) if h[r])
        idcg = sum(1 / math.log2(r + 2) for r in range(min(n, 5)))
        assert res.per_user["ndcg@5"][pos] == pytest.approx(dcg / idcg)


def test_rejects_nan_and_wrong_shape_and_train_split():
    ds = _tiny()
    with pytest.raises(ValueError, match="NaN"):
        evaluate(lambda u: torch.full((len(u), 6), float("nan")), ds)
    with pytest.raises(ValueError, match="shape"):
        evaluate(lambda u: torch.zeros(len(u), 5), ds)
    with pytest.raises(ValueError):
        Evaluator(ds, "train")


def test_evaluator_is_reusable_across_calls():
    ds = _random_dataset(5)
    ev = Evaluator(ds, "valid", batch_size=16)
    t1 = torch.randn(ds.n_users, ds.n_items, generator=torch.Generator().manual_seed(0))
    a = ev.evaluate(lambda u: t1[u])
    b = ev.evaluate(lambda u: t1[u])
    assert a.metrics == b.metrics


def test_infinite_scores_of_relevant_items_still_count():
    ds = _tiny()
    table = torch.zeros(3, 6)
    table[0, 2] = torch.inf  # a valid item of user 0
    res = evaluate(lambda u: table[u], ds, "valid", ks=(1,))
    assert res.per_user["hit@1"][0] == 1.0


def test_cpu_blocks_are_capped_and_change_nothing(monkeypatch):
    import alignrec.evaluation.evaluator as evaluator_module

    ds = _random_dataset(6)
    table = torch.randn(ds.n_users, ds.n_items, generator=torch.Generator().manual_seed(2))
    ref = evaluate(lambda u: table[u], ds, "valid", batch_size=1024)
    monkeypatch.setattr(evaluator_module, "CPU_BLOCK_CELLS", 7 * ds.n_items)
    sizes = []

    def scorer(u):
        sizes.append(len(u))
        return table[u]

    res = evaluate(scorer, ds, "valid", batch_size=1024)
    assert max(sizes) == 7 and sum(sizes) == len(res.users)
    assert res.metrics == ref.metrics
    for k, v in ref.per_user.items():
        np.testing.assert_array_equal(res.per_user[k], v)
