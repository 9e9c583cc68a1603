"""Zero-shot, item-CF and mask-modality against hand-computed results on tiny data."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from alignrec.data.dataset import Dataset
from alignrec.errors import ConfigError, DataError
from alignrec.features.protocols import (
    item_cf,
    item_cf_scorer,
    knn_similarity,
    mask_modality,
    masked_items,
    run_protocol,
    zero_shot,
    zero_shot_scorer,
)
from alignrec.features.sets import FeatureSet, check_table, load_table, raw_concat, raw_feature_set

from .test_fusion import synthetic_outputs

# 2 users, 4 items. user 0: train {0}, valid {2}, test {1}; user 1: train {1}, valid {3}, test {2}.
F = np.array([[1, 0], [0, 1], [2, 1], [-1, 0]], dtype=np.float32)
S5 = 1 / np.sqrt(5)


@pytest.fixture
def hand() -> Dataset:
    return Dataset.from_pairs(
        "hand",
        2,
        4,
        np.array([[0, 0], [1, 1]]),
        np.array([[0, 2], [1, 3]]),
        np.array([[0, 1], [1, 2]]),
    )


def test_zero_shot_scores_by_hand(hand):
    scores = zero_shot_scorer(F, hand)(torch.tensor([0, 1])).numpy()
    expected = np.array([[1, 0, 2 * S5, -1], [0, 1, S5, 0]])
    assert np.allclose(scores, expected, atol=1e-6)


def test_zero_shot_metrics_by_hand(hand):
    # user 0 ranks 2, 1, 3 (0 masked); user 1 ranks 2, 0, 3 (1 masked; 0 before 3 on the tie)
    res = zero_shot(hand, F, ks=(1, 2))
    assert res.metrics["valid/recall@1"] == pytest.approx(0.5)
    assert res.metrics["valid/ndcg@2"] == pytest.approx(0.5)
    assert res.metrics["test/recall@1"] == pytest.approx(0.5)
    assert res.metrics["test/recall@2"] == pytest.approx(1.0)
    assert res.metrics["test/ndcg@2"] == pytest.approx((1 / np.log2(3) + 1) / 2)
    assert set(res.metrics) == {
        f"{s}/{m}@{k}" for s in ("valid", "test") for m in ("recall", "ndcg") for k in (1, 2)
    }


def test_zero_shot_profile_is_the_mean_of_normalised_items():
    ds = Dataset.from_pairs(
        "p", 1, 3, np.array([[0, 0], [0, 1]]), np.array([[0, 2]]), np.array([[0, 2]])
    )
    feats = np.array([[10, 0], [0, 1], [1, 1]], np.float32)
    s = zero_shot_scorer(feats, ds)(torch.tensor([0])).numpy()
    assert s[0, 2] == pytest.approx(1.0)  # profile [.5, .5] points exactly at item 2


def test_knn_similarity_by_hand():
    sim = knn_similarity(F, k=2, shrink=0.0).toarray()
    expected = np.zeros((4, 4))
    expected[0, [0, 2]] = [1, 2 * S5]
    expected[1, [1, 2]] = [1, S5]
    expected[2, [2, 0]] = [1, 2 * S5]
    expected[3, 3] = 1  # its second neighbour has similarity 0
    assert np.allclose(sim, expected, atol=1e-6)
    shrunk = knn_similarity(F, k=2, shrink=10.0).toarray()
    assert shrunk[0, 2] == pytest.approx(2 / (np.sqrt(5) + 10))


def test_item_cf_scores_by_hand(hand):
    scores = item_cf_scorer(F, hand, k=2, shrink=0.0)(torch.tensor([0, 1])).numpy()
    assert np.allclose(scores[0], [1, 0, 2 * S5, 0], atol=1e-6)
    assert np.allclose(scores[1], [0, 1, S5, 0], atol=1e-6)
    res = item_cf(hand, F, k=2, shrink=0.0, ks=(1, 2))
    # user 0 ranks 2, then 1 and 3 tied at 0 -> 1 first; user 1 ranks 2, 0, 3
    assert res.metrics["valid/recall@1"] == pytest.approx(0.5)
    assert res.metrics["test/recall@2"] == pytest.approx(1.0)


def _dense_reference(x: np.ndarray, k: int, shrink: float) -> np.ndarray:
    """MMRec ItemKNNCBF.build_item_sim_matrix: the whole I x I matrix at once."""
    f = torch.from_numpy(x)
    norm = f.norm(dim=-1, keepdim=True)
    sim = (f @ f.T) / (norm * norm.T + shrink)
    val, ind = torch.topk(sim, k, dim=-1)
    return torch.zeros_like(sim).scatter_(-1, ind, val).numpy()


@pytest.mark.parametrize("block_size", [1, 7, 64, None])
def test_blockwise_knn_equals_dense(block_size):
    x = np.random.default_rng(0).normal(size=(53, 8)).astype(np.float32)
    blocks = knn_similarity(x, k=10, shrink=10.0, block_size=block_size).toarray()
    assert np.allclose(blocks, _dense_reference(x, 10, 10.0), atol=1e-6)


def test_masked_items_are_a_fixed_seeded_permutation():
    a = masked_items(100, 0.5, seed=0)
    assert a.sum() == 50 and np.array_equal(a, masked_items(100, 0.5, seed=0))
    assert not np.array_equal(a, masked_items(100, 0.5, seed=1))
    assert masked_items(100, 0.3).sum() == 30
    with pytest.raises(ConfigError):
        masked_items(10, 1.5)


def test_raw_concat_zeroes_the_masked_part():
    out = synthetic_outputs(vectors=True)
    full = raw_concat(out)
    assert full.shape == (20, 384 + 64 + 5)
    flags = np.zeros(20, bool)
    flags[[2, 3]] = True
    fs = raw_feature_set(out, "raw:concat")
    masked = fs.without({"image": flags})
    assert not masked[2, 384:448].any() and masked[5, 384:448].any()
    assert np.array_equal(masked[:, :384], full[:, :384])
    audio = raw_feature_set(out, "raw:audio").without({"audio": flags})
    assert not audio[2].any() and audio[4].any()


def test_mask_modality_reports_masked_unmasked_and_loss():
    out = synthetic_outputs(n=20)
    rng = np.random.default_rng(1)
    pairs = [(u, int(i)) for u in range(10) for i in rng.permutation(20)[:5]]
    train = np.array([p for j, p in enumerate(pairs) if j % 5 < 3])
    valid = np.array([p for j, p in enumerate(pairs) if j % 5 == 3])
    test = np.array([p for j, p in enumerate(pairs) if j % 5 == 4])
    ds = Dataset.from_pairs("m", 10, 20, train, valid, test)
    res = mask_modality(ds, raw_feature_set(out, "raw:concat"), modality="image", fraction=0.5)
    d = res.to_dict()
    assert d["masked_items"] == 10 and d["modality"] == "image"
    for key in ("zero-shot/test/recall@20", "item-cf/valid/ndcg@10"):
        assert key in d["metrics"] and key in d["unmasked"] and key in d["relative_loss"]
    unmasked = zero_shot(ds, raw_concat(out)).metrics
    assert d["unmasked"]["zero-shot/test/recall@20"] == pytest.approx(unmasked["test/recall@20"])


def test_bad_tables_are_refused(hand, tmp_path):
    with pytest.raises(DataError, match="rows"):
        check_table(np.zeros((3, 2)), 4)
    with pytest.raises(DataError, match="2-D"):
        check_table(np.zeros(4), 4)
    bad = F.copy()
    bad[1, 0] = np.nan
    with pytest.raises(DataError, match="NaN"):
        zero_shot(hand, bad)
    np.save(tmp_path / "f.npy", F)
    fs = load_table(tmp_path / "f.npy", 4)
    with pytest.raises(ConfigError, match="cannot be recomputed"):
        mask_modality(hand, fs)
    with pytest.raises(ConfigError, match="unknown protocol"):
        run_protocol("popularity", hand, fs)
    with pytest.raises(DataError, match="not found"):
        load_table(tmp_path / "missing.npy", 4)


def test_raw_set_of_a_missing_modality_is_a_data_error():
    out = synthetic_outputs()
    with pytest.raises(DataError, match="raw:whisper"):
        raw_feature_set(out, "raw:whisper")


def test_feature_set_wraps_a_table(hand):
    res = zero_shot(hand, FeatureSet("mine", F), ks=(1,))
    assert res.features == "mine"
