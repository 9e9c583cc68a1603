"""The record stage 1 writes beside its features, and the run keys the benchmark takes from it."""

from __future__ import annotations

import dataclasses
import json

import numpy as np

from alignrec.features.fusion import FusionConfig
from alignrec.features.provenance import (
    content_source,
    sidecar,
    source_digest,
    stage1_fields,
    write_features,
)


def _table(seed: int = 0, n: int = 6) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 5)).astype(np.float32)


def _last_bits(table: np.ndarray) -> np.ndarray:
    """The same table with one value a few ULPs away, as stage 1 gives on another CPU."""
    other = table.copy()
    other[0, 0] = np.nextafter(np.nextafter(other[0, 0], np.inf), np.inf)
    assert not np.array_equal(other, table)
    return other


def test_the_record_describes_only_the_table_written_with_it(tmp_path):
    path = tmp_path / "features.npy"
    fields = {"config": {"lr": 0.001}, "inputs": {"text": "a"}, "interactions": "b", "code": "c"}
    table = _table()
    write_features(path, table, fields, "stage1")
    assert np.array_equal(np.load(path), table)
    record = json.loads(sidecar(path).read_text())
    assert sidecar(path).name == "features.source.json"
    assert record["source"] == source_digest(fields, "stage1") and record["chosen"] == "stage1"
    assert content_source(path, table) == record["source"]
    # features read from a file another run replaced are not taken for the recorded ones
    assert content_source(path, _last_bits(table)) is None
    assert content_source(path, _table(seed=1)) is None
    # the chosen set is part of what decided the table
    assert source_digest(fields, "raw:concat") != record["source"]
    sidecar(path).write_text("{not json")
    assert content_source(path, table) is None
    # features written without a known source leave no record behind, a stale one removed
    write_features(path, table, fields, "stage1")
    write_features(path, table, None, "stage1")
    assert not sidecar(path).exists() and content_source(path, table) is None


def test_stage1_fields_name_what_decides_the_features_not_how_they_ran(tiny_outputs):
    ds, outputs = tiny_outputs
    base = stage1_fields(ds, outputs, FusionConfig(num_threads=1).to_dict())
    assert base is not None and set(base["inputs"]) == {"text", "image"}
    assert "num_threads" not in base["config"]
    assert stage1_fields(ds, outputs, FusionConfig(num_threads=2).to_dict()) == base
    assert stage1_fields(ds, outputs, FusionConfig(num_threads=1, lr=0.01).to_dict()) != base
    # the interactions (the validation choice reads them) are part of it
    inter = ds.interactions.copy()
    inter.loc[inter.index[0], "split"] = "test" if inter["split"].iloc[0] != "test" else "train"
    assert stage1_fields(dataclasses.replace(ds, interactions=inter), outputs,
                         FusionConfig().to_dict())["interactions"] != base["interactions"]
    # encoder outputs built in memory have no cache key: no source, so keyed by bytes
    keyless = dataclasses.replace(outputs, text=dataclasses.replace(outputs.text, key=""))
    assert stage1_fields(ds, keyless, FusionConfig().to_dict()) is None


def test_alignrec_runs_are_keyed_by_the_recorded_source_not_the_features_last_bits(
    tmp_path, tiny_outputs
):
    """Stage 1 run on another CPU writes other last bits under the same record: the benchmark
    finds the same AlignRec runs. Without a record, or with another source, it does not."""
    from alignrec.benchmark.runner import _DataSignature, _with_content, resolve_configs

    ds, outputs = tiny_outputs
    fields = stage1_fields(ds, outputs, FusionConfig().to_dict())
    table = _table(n=ds.n_items)
    here, there, bare = tmp_path / "here.npy", tmp_path / "there.npy", tmp_path / "bare.npy"
    write_features(here, table, fields, "stage1")
    write_features(there, _last_bits(table), fields, "stage1")
    write_features(bare, table, None, "stage1")
    _, model_cfg = resolve_configs("alignrec", {})

    def signature(path):
        return _DataSignature(_with_content(ds, str(path))).of("alignrec", model_cfg)

    assert "content" in signature(here)
    assert signature(here) == signature(there)
    assert signature(bare) != signature(here)  # keyed by the bytes, as before
    write_features(there, _last_bits(table), fields, "raw:concat")
    assert signature(there) != signature(here)
