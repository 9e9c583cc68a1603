"""The Great Expectations suites catch each kind of bad canonical data, with examples."""

from __future__ import annotations

import numpy as np
import pandas as pd

from orchestration.validation import (
    canonical_interactions_suite,
    features_suite,
    images_suite,
    raw_interactions_suite,
    run_suite,
)


def _frame(rows):
    return pd.DataFrame(rows, columns=["user", "item", "split"])


def test_clean_interactions_pass():
    frame = _frame([(0, 0, "train"), (0, 1, "valid"), (1, 1, "train"), (1, 0, "test")])
    out = run_suite("clean", *canonical_interactions_suite(frame, 2, 2))
    assert out.success and not out.failed


def test_each_violation_is_reported_with_examples():
    frame = _frame(
        [
            (0, 0, "train"),
            (0, 0, "test"),      # evaluation pair also in train
            (1, 1, "train"),
            (1, 1, "train"),     # repeated within a split
            (2, 0, "valid"),     # user with no training data
            (0, 9, "train"),     # item out of range
            (1, 0, "holdout"),   # invalid label
        ]
    )
    out = run_suite("dirty", *canonical_interactions_suite(frame, 3, 2))
    assert not out.success
    failed = {(f["expectation"], f["column"]): f for f in out.failed}
    assert failed[("expect_column_values_to_be_between", "item")]["examples"] == "[9]"
    assert "holdout" in failed[("expect_column_values_to_be_in_set", "split")]["examples"]
    assert "0:0 (test)" in failed[("expect_column_values_to_be_null", "eval_pair_also_in_train")]["examples"]
    assert "'2'" in failed[("expect_column_values_to_be_null", "eval_user_not_in_train")]["examples"]
    assert ("expect_compound_columns_to_be_unique", "user, item, split") in failed
    assert "| expectation |" in out.as_markdown()


def test_raw_ids_must_be_present():
    frame = pd.DataFrame({"user_id": ["1", None, ""], "item_id": ["a", "b", "c"], "split": [None] * 3})
    out = run_suite("raw", *raw_interactions_suite(frame))
    assert {f["expectation"] for f in out.failed} == {
        "expect_column_values_to_not_be_null", "expect_column_value_lengths_to_be_between"}


def test_features_must_be_finite_and_shaped():
    feats = {"ok": np.zeros((4, 2)), "short": np.zeros((3, 2)), "nan": np.full((4, 2), np.nan)}
    out = run_suite("feats", *features_suite(feats, 4))
    kinds = {f["expectation"] for f in out.failed}
    assert kinds == {"expect_column_pair_values_to_be_equal", "expect_column_values_to_be_between"}


def test_images_must_decode(tmp_path):
    from PIL import Image

    good = tmp_path / "good.jpg"
    Image.new("RGB", (4, 4)).save(good)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8 nope")
    items = pd.DataFrame({"image": [str(good), str(bad), None]})
    out = run_suite("imgs", *images_suite(items))
    assert not out.success and "bad.jpg" in out.failed[0]["examples"]
