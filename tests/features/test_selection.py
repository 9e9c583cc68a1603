"""Choosing stage-1 settings and stage 2's features on validation only."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pytest

from alignrec.data.dataset import Dataset
from alignrec.errors import DataError
from alignrec.features import selection
from alignrec.features.selection import (
    FeatureScore,
    choose_features,
    label_probe,
    raw_candidates,
    run_sweep,
    selection_score,
    sweep_table,
)

from .test_fusion import SMALL, synthetic_outputs


@dataclass(frozen=True)
class LockedTestDataset(Dataset):
    """A dataset whose test split raises on access: selection must never read it."""

    def pairs(self, split: str) -> np.ndarray:
        if split == "test":
            raise AssertionError("the test split was read during selection")
        return super().pairs(split)


def _clustered(n_users=30, n_items=80, seed=0) -> tuple[LockedTestDataset, np.ndarray]:
    """Users who each like one of two item clusters; a feature table that knows the clusters."""
    rng = np.random.default_rng(seed)
    cluster = np.arange(n_items) % 2
    train, valid, test = [], [], []
    for u in range(n_users):
        liked = rng.permutation(np.flatnonzero(cluster == u % 2))
        train += [(u, i) for i in liked[:5]]
        valid.append((u, liked[5]))
        test.append((u, liked[6]))
    ds = Dataset.from_pairs("clustered", n_users, n_items, np.array(train), np.array(valid),
                            np.array(test))
    locked = LockedTestDataset(**{f: getattr(ds, f) for f in ds.__dataclass_fields__})
    good = np.stack([cluster == 0, cluster == 1], 1).astype(np.float32)
    good += 0.01 * rng.normal(size=good.shape).astype(np.float32)
    return locked, good


def test_the_rule_picks_the_better_table_and_never_reads_test():
    ds, good = _clustered()
    noise = np.random.default_rng(1).normal(size=good.shape).astype(np.float32)
    choice = choose_features(ds, {"stage1": noise, "raw:concat": good})
    assert choice.chosen == "raw:concat" and not choice.stage1_chosen
    by = {s.name: s for s in choice.scores}
    assert by["raw:concat"].score > by["stage1"].score
    assert by["raw:concat"].score == selection_score(by["raw:concat"].zero_shot,
                                                     by["raw:concat"].item_cf)
    assert "stage 2 reads raw:concat" in choice.summary()
    # a tie keeps the earlier candidate: stage 1 is listed first
    assert choose_features(ds, {"stage1": good, "raw:text": good.copy()}).chosen == "stage1"


def test_label_probe_separates_informative_from_random_features():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, size=(200, 3))
    informative = labels + 0.3 * rng.normal(size=labels.shape)
    assert label_probe(informative, labels) > 0.95
    assert abs(label_probe(rng.normal(size=(200, 8)), labels) - 0.5) < 0.1


def test_raw_candidates_are_every_raw_set():
    out = synthetic_outputs(vectors=True)
    assert list(raw_candidates(out)) == ["raw:concat", "raw:text", "raw:image", "raw:audio"]


def test_sweep_resumes_from_its_records_and_never_reads_test(tmp_path, monkeypatch):
    ds, _ = _clustered(n_items=20)
    out = synthetic_outputs()
    settings = {"a": {}, "b": {"epochs": 2}}
    base = {**SMALL, "epochs": 1}
    points = run_sweep(ds, out, base, tmp_path, settings=settings, fused_weights=(0.0, 1.0))
    assert [p.name for p in points] == ["a", "b"]
    assert set(points[0].scores) == {"0", "1"}
    record = json.loads((tmp_path / "b.json").read_text())
    assert record["config"]["epochs"] == 2 and record["overrides"] == {"epochs": 2}
    # the weight-0 readout is the centred raw vectors: the same for every trained point
    assert points[0].scores["0"].zero_shot == points[1].scores["0"].zero_shot

    def no_training(*args, **kwargs):
        raise AssertionError("a finished sweep point was trained again")

    monkeypatch.setattr("alignrec.features.fusion.pretrain_fusion", no_training)
    again = run_sweep(ds, out, base, tmp_path, settings=settings, fused_weights=(0.0, 1.0))
    assert [p.to_dict() for p in again] == [p.to_dict() for p in points]
    # a changed base config is a different point: it trains again
    with pytest.raises(AssertionError, match="trained again"):
        run_sweep(ds, out, {**base, "lr": 0.01}, tmp_path, settings={"a": {}})
    best, weight = selection.best_setting(points)
    table = sweep_table(points, [FeatureScore("raw:concat", 0.1, 0.2)])
    assert f"**{best.name}, fused weight {weight}** (chosen)" in table
    assert table.splitlines()[2].startswith("| raw:concat | 0.1000 | 0.2000 | 0.1500 |")


def test_item_labels_are_read_in_item_order_with_clear_errors(tmp_path):
    import pandas as pd

    from alignrec.data.readers import read_labels
    from alignrec.data.spec import DatasetSpec

    (tmp_path / "labels.csv").write_text("\ufeffid,a,b\n2,1,0\n1,0,1\n2,0,0\n3,1,1\n")
    spec = DatasetSpec(name="x", root=tmp_path, interactions={"path": "i.csv"},
                       labels={"path": "labels.csv", "id_column": "id", "columns": ["a", "b"]})
    names, y = read_labels(spec, pd.Series(["1", "2"]))
    assert names == ["a", "b"] and y.tolist() == [[0, 1], [1, 0]]  # repeated id: first row
    with pytest.raises(DataError, match="no label row for item id '9'"):
        read_labels(spec, pd.Series(["1", "9"]))
    (tmp_path / "labels.csv").write_text("id,a,b\n1,0,yes\n")
    with pytest.raises(DataError, match=r"row 1.*'b'.*not 0 or 1|not 0 or 1"):
        read_labels(spec, pd.Series(["1"]))


def test_the_rule_prefers_a_candidate_at_least_as_good_as_every_raw_set_on_both_protocols():
    S = FeatureScore
    scores = [
        S("stage1", zero_shot=0.28, item_cf=0.20),  # best mean, below raw on item-CF
        S("stage1:centre=0.5", zero_shot=0.24, item_cf=0.24),  # beats the raw sets on both
        S("raw:concat", zero_shot=0.21, item_cf=0.22),
        S("raw:text", zero_shot=0.21, item_cf=0.21),
    ]
    assert selection.pick(scores) == "stage1:centre=0.5"
    # a raw set best among the raw sets on both protocols qualifies like any other: the safe
    # choice over a stage-1 set that loses on one protocol
    assert selection.pick([scores[0], *scores[2:]]) == "raw:concat"
    # with no candidate that good on both (the raw sets split the best), the best mean
    split = [scores[0], S("raw:concat", 0.20, 0.22), S("raw:text", 0.21, 0.21)]
    assert selection.pick(split) == "stage1"


def test_readout_candidates_shift_the_centring_of_the_raw_parts_only():
    from alignrec.features.fusion import FusionConfig, encode_items, pretrain_fusion
    from alignrec.features.sets import raw_part

    out = synthetic_outputs(vectors=True)
    model = pretrain_fusion(out, FusionConfig(**SMALL)).model
    f = encode_items(model, out)
    cands = selection.readout_candidates(model, f)
    assert list(cands) == ["stage1", "stage1:centre=0.5", "stage1:centre=0"]
    col = 0
    for m in ("text", "image", "vec:audio"):
        raw = raw_part(out, m)
        have = np.linalg.norm(raw, axis=1) > 0
        mean = raw[have].mean(0)
        width = raw.shape[1]
        for share, name in ((0.5, "stage1:centre=0.5"), (0.0, "stage1:centre=0")):
            part = cands[name][:, col : col + width]
            assert np.allclose(part[have], raw[have] - share * mean, atol=1e-3), (m, share)
            # a missing modality: its prediction plus the same share of the mean
            assert np.allclose(part[~have], f[~have, col : col + width] + (1 - share) * mean,
                               atol=1e-4)
        col += width
    for table in cands.values():  # the fused part is untouched
        assert np.array_equal(table[:, col:], f[:, col:])
    fused_only = pretrain_fusion(out, FusionConfig(**{**SMALL, "readout": "fused"})).model
    assert list(selection.readout_candidates(fused_only, f)) == ["stage1"]


def test_the_choice_metrics_have_names_mlflow_accepts():
    from mlflow.utils.validation import _validate_metric_name

    scores = [FeatureScore(n, 0.1, 0.2) for n in ("stage1", "stage1:centre=0.5", "raw:vec:text")]
    metrics = selection.Choice("stage1", scores).metrics()
    assert list(metrics) == ["select/stage1/score", "select/stage1_centre_0.5/score",
                             "select/raw_vec_text/score"]
    for name in metrics:
        _validate_metric_name(name)  # raises on a name MLflow refuses
