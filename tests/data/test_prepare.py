"""``prepare`` on the synthetic dataset, and smoke tests on the real datasets."""

from __future__ import annotations

import json

import numpy as np
import pytest

from alignrec.data import get_spec, list_datasets, load_dataset, prepare
from alignrec.data.prepare import is_current
from alignrec.paths import dataset_tables
from tests.conftest import needs_data


def _check_protocol(ds):
    inter = ds.interactions
    assert set(inter["split"].unique()) <= {"train", "valid", "test"}
    assert inter["user"].between(0, ds.n_users - 1).all()
    assert inter["item"].between(0, ds.n_items - 1).all()
    assert not inter.duplicated(["user", "item"]).any()
    train_users = set(ds.train[:, 0])
    assert set(ds.valid[:, 0]) <= train_users and set(ds.test[:, 0]) <= train_users
    assert set(np.unique(inter["user"])) == set(range(ds.n_users))


def test_synthetic_goes_through_the_generic_path(synthetic_spec):
    ds = prepare(synthetic_spec)
    _check_protocol(ds)
    assert ds.summary() == {"users": 24, "items": 18, "interactions": 192,
                            "train": 144, "valid": 24, "test": 24}
    assert ds.features["tags"].shape == (18, 16)
    assert ds.has_text and ds.has_images
    assert ds.items["image"].map(lambda p: p.endswith(".jpg")).all()


def test_prepare_reuses_then_rebuilds_on_change(synthetic_spec):
    prepare(synthetic_spec)
    meta = dataset_tables(synthetic_spec) / "meta.json"
    stamp = meta.stat().st_mtime_ns
    prepare(synthetic_spec)
    assert meta.stat().st_mtime_ns == stamp, "unchanged inputs must not rebuild"
    spec = get_spec(synthetic_spec)
    inter = spec.root / "interactions.csv"
    inter.write_text(inter.read_text() + "1,18,1700000000\n")
    assert not is_current(synthetic_spec)
    ds = prepare(synthetic_spec)
    assert json.loads(meta.read_text())["fingerprint"] != ""
    assert ds.summary()["interactions"] in (192, 193)


def test_registry_lists_the_shipped_datasets():
    names = set(list_datasets())
    assert {"movielens-100k-mm", "amazon-baby", "amazon-sports", "lastfm-2k", "synthetic"} <= names


# Published counts from data/README.md.
@needs_data("amazon-baby")
@pytest.mark.smoke
def test_amazon_baby_counts():
    ds = load_dataset("amazon-baby")
    assert ds.summary() == {"users": 19445, "items": 7050, "interactions": 160792,
                            "train": 119674, "valid": 20559, "test": 20559}
    _check_protocol(ds)


@needs_data("lastfm-2k")
@pytest.mark.smoke
def test_lastfm_counts_and_features():
    ds = load_dataset("lastfm-2k")
    s = ds.summary()
    assert (s["users"], s["items"], s["interactions"]) == (1858, 1425, 56345)
    assert {k: v.shape for k, v in ds.features.items()} == {
        "text": (1425, 384), "vggish": (1425, 128), "whisper": (1425, 512)}
    _check_protocol(ds)


@needs_data("amazon-sports")
@pytest.mark.smoke
def test_amazon_sports_counts():
    ds = load_dataset("amazon-sports")
    s = ds.summary()
    assert (s["users"], s["items"], s["interactions"]) == (35598, 18357, 296337)
    assert ds.has_text and not ds.has_images
    _check_protocol(ds)


@needs_data("movielens-100k-mm")
@pytest.mark.smoke
def test_movielens_counts():
    ds = load_dataset("movielens-100k-mm")
    raw = ds.meta["raw"]
    assert (raw["users"], raw["interactions"]) == (943, 100000)
    s = ds.summary()
    # 5-core filtering keeps all 943 users and removes the rarest movies.
    assert (s["users"], s["items"], s["interactions"]) == (943, 1349, 99287)
    assert ds.meta["images"] > 1300 and ds.has_text
    _check_protocol(ds)


def test_rebuild_keeps_what_other_stages_stored_beside_the_tables(synthetic_spec):
    from alignrec.paths import dataset_artifacts

    prepare(synthetic_spec)
    cache = dataset_artifacts(synthetic_spec) / "encoders" / "kept.txt"
    cache.parent.mkdir(parents=True)
    cache.write_text("expensive")
    prepare(synthetic_spec, force=True)
    assert cache.read_text() == "expensive"
