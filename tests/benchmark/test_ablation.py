"""compare-features: one model on several feature sets, over seeds, with paired tests."""

from __future__ import annotations

import json

import numpy as np
import torch
from typer.testing import CliRunner

import alignrec.data
from alignrec import cli
from alignrec.benchmark.ablation import compare_features, comparison_table
from tests.training.synth import clustered

FAST = {"epochs": 2, "batch_size": 64}


def test_compare_features_trains_each_set_and_pairs_them(tmp_path, monkeypatch):
    torch.set_num_threads(1)
    ds = clustered(0)
    noise = np.random.default_rng(0).normal(size=ds.features["content"].shape).astype(np.float32)
    np.save(tmp_path / "noise.npy", noise)
    sets = ["raw:content", f"noise={tmp_path / 'noise.npy'}"]
    monkeypatch.setattr(
        "alignrec.commands.train.with_content_features",
        _content_features(ds, tmp_path),
        raising=True,
    )
    rows = compare_features(ds, sets, tmp_path / "out", seeds=2, overrides=FAST)
    assert [r.features for r in rows] == ["raw:content", "noise"]
    assert (tmp_path / "out" / "noise" / "runs").is_dir()
    assert rows[0].p_wilcoxon is None and 0.0 <= rows[1].p_wilcoxon <= 1.0
    for row in rows:
        assert len(row.per_seed["recall@20"]) == 2 and row.epochs == [2.0, 2.0]
    table = comparison_table(rows)
    assert table.count("\n") == 3 and "± " in table
    # cached: the same call trains nothing again
    monkeypatch.setattr("alignrec.benchmark.runner.train", _no_training)
    again = compare_features(ds, sets, tmp_path / "out", seeds=2, overrides=FAST)
    assert [r.per_seed for r in again] == [r.per_seed for r in rows]


def _content_features(ds, tmp_path):
    import dataclasses

    def with_content(data, spec):
        table = ds.features["content"] if spec == "raw:content" else np.load(spec)
        return dataclasses.replace(data, features={**data.features, "content": table})

    return with_content


def _no_training(*args, **kwargs):
    raise AssertionError("a cached run was trained again")


def test_cli_writes_the_comparison(tmp_path, monkeypatch):
    ds = clustered(0)
    monkeypatch.setattr(alignrec.data, "load_dataset", lambda name: ds)
    monkeypatch.setattr(
        "alignrec.commands.train.with_content_features", _content_features(ds, tmp_path)
    )
    np.save(tmp_path / "noise.npy", np.ones_like(ds.features["content"]))
    args = ["compare-features", "--dataset", "tiny", "--features", "raw:content",
            "--features", str(tmp_path / "noise.npy"), "--seeds", "1", "--out",
            str(tmp_path / "cmp"), "--set", "epochs=2", "--no-progress"]
    res = CliRunner().invoke(cli.app, args)
    assert res.exit_code == 0, res.output
    saved = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert saved["settings"]["patience"] == 30 and len(saved["rows"]) == 2
    assert "p Wilcoxon vs first" in (tmp_path / "cmp" / "comparison.md").read_text()
    one = CliRunner().invoke(cli.app, args[:5] + ["--out", str(tmp_path / "x")])
    assert "at least two" in str(one.exception)
