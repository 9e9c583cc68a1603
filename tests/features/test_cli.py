"""The evaluate-features and pretrain-features commands on a tiny registered dataset."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from alignrec.cli import app
from alignrec.errors import ConfigError, DataError

runner = CliRunner()


def _n_items(name: str) -> int:
    from alignrec.data import load_dataset

    return load_dataset(name).n_items


def test_evaluate_features_npy_writes_json(synthetic_spec, tmp_path):
    n = _n_items(synthetic_spec)
    np.save(tmp_path / "f.npy", np.random.default_rng(0).normal(size=(n, 6)).astype(np.float32))
    out = tmp_path / "res.json"
    res = runner.invoke(
        app,
        [
            "evaluate-features",
            "--dataset",
            synthetic_spec,
            "--features",
            str(tmp_path / "f.npy"),
            "--protocol",
            "item-cf",
            "--out",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    assert "R@20" in res.output
    data = json.loads(out.read_text())
    assert data["protocol"] == "item-cf" and data["dataset"] == synthetic_spec
    for split in ("valid", "test"):
        for m in ("recall@10", "recall@20", "ndcg@10", "ndcg@20"):
            assert 0.0 <= data["metrics"][f"{split}/{m}"] <= 1.0


def test_evaluate_features_out_folder_gets_protocol_json(synthetic_spec, tmp_path):
    np.save(tmp_path / "f.npy", np.ones((_n_items(synthetic_spec), 4), dtype=np.float32))
    folder = tmp_path / "results"
    folder.mkdir()
    args = ["evaluate-features", "--dataset", synthetic_spec, "--features", str(tmp_path / "f.npy")]
    res = runner.invoke(app, [*args, "--protocol", "zero-shot", "--out", str(folder)])
    assert res.exit_code == 0, res.output
    assert json.loads((folder / "zero-shot.json").read_text())["protocol"] == "zero-shot"
    assert f"wrote {folder / 'zero-shot.json'}" in res.output
    (folder / "item-cf.json").mkdir()  # the name inside is a folder too: refused before any work
    res = runner.invoke(app, [*args, "--protocol", "item-cf", "--out", str(folder)])
    assert isinstance(res.exception, ConfigError) and "is a folder" in str(res.exception)


def test_evaluate_features_precomputed_mask_modality(synthetic_spec, tmp_path):
    res = runner.invoke(
        app,
        [
            "evaluate-features",
            "--dataset",
            synthetic_spec,
            "--features",
            "raw:tags",
            "--protocol",
            "mask-modality",
            "--modality",
            "tags",
            "--out",
            str(tmp_path / "m.json"),
        ],
    )
    assert res.exit_code == 0, res.output
    data = json.loads((tmp_path / "m.json").read_text())
    assert data["masked_items"] == round(0.5 * _n_items(synthetic_spec))


@pytest.mark.parametrize(
    ("features", "protocol", "error", "match"),
    [
        ("bad_shape", "zero-shot", DataError, "rows"),
        ("nan", "zero-shot", DataError, "NaN"),
        ("good", "popularity", ConfigError, "unknown protocol"),
        ("good", "mask-modality", ConfigError, "cannot be recomputed"),
        ("raw:whisper", "zero-shot", DataError, "raw:whisper"),
        ("nonsense", "zero-shot", ConfigError, "unknown feature set"),
    ],
)
def test_evaluate_features_bad_input(synthetic_spec, tmp_path, features, protocol, error, match):
    n = _n_items(synthetic_spec)
    tables = {
        "bad_shape": np.zeros((n + 1, 3)),
        "nan": np.full((n, 3), np.nan),
        "good": np.ones((n, 3)),
    }
    if features in tables:
        np.save(tmp_path / f"{features}.npy", tables[features])
        features = str(tmp_path / f"{features}.npy")
    res = runner.invoke(
        app,
        [
            "evaluate-features",
            "--dataset",
            synthetic_spec,
            "--features",
            features,
            "--protocol",
            protocol,
        ],
    )
    assert isinstance(res.exception, error)
    assert match in str(res.exception)


def test_pretrain_features_bad_config_key(synthetic_spec, tmp_path):
    res = runner.invoke(
        app,
        [
            "pretrain-features",
            "--dataset",
            synthetic_spec,
            "--out",
            str(tmp_path / "f.npy"),
            "--set",
            "hiden_size=8",
        ],
    )
    assert isinstance(res.exception, ConfigError)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_pretrain_features_on_a_missing_gpu_stops_before_any_work(synthetic_spec, tmp_path):
    out = tmp_path / "f.npy"
    args = ["pretrain-features", "--dataset", synthetic_spec, "--out", str(out)]
    res = runner.invoke(app, [*args, "--device", "cuda"])
    assert isinstance(res.exception, ConfigError) and "no CUDA GPU" in str(res.exception)
    assert not out.exists() and not out.with_suffix(".json").exists()


@pytest.mark.slow
def test_pretrain_features_end_to_end(synthetic_spec, tmp_path):
    """Real encoders on the 18-item synthetic set, a 1-epoch tiny fusion, then a protocol on it."""
    out, model_dir = tmp_path / "stage1.npy", tmp_path / "fusion"
    args = [
        "pretrain-features",
        "--dataset",
        synthetic_spec,
        "--out",
        str(out),
        "--model-dir",
        str(model_dir),
        "--no-progress",
    ]
    for kv in (
        "epochs=1",
        "min_steps=0",
        "hidden_size=16",
        "num_heads=2",
        "num_layers=1",
        "codebook_size=8",
        "codebook_sample=400",
        "projection_dim=8",
        "batch_size=8",
    ):
        args += ["--set", kv]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    n = _n_items(synthetic_spec)
    stage1 = np.load(out.with_suffix(".stage1.npy"))
    # the residual readout: text 384, image 1280, the 16-d vector, then the fused 16
    assert stage1.shape == (n, 384 + 1280 + 16 + 16) and np.isfinite(stage1).all()
    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["config"]["epochs"] == 1 and len(summary["history"]) == 1
    # --out holds what stage 2 reads: the candidate the validation rule chose, stated
    choice = summary["stage2_choice"]
    names = [s["name"] for s in choice["scores"]]
    assert names[0] == "stage1" and "raw:concat" in names and choice["chosen"] in names
    assert f"stage 2 reads {choice['chosen']}" in res.output
    feats = np.load(out)
    assert feats.shape[0] == n and np.isfinite(feats).all()
    if choice["chosen"] == "stage1":
        assert np.array_equal(feats, stage1)
    # beside it, what decided it (the benchmark keys AlignRec's runs by that, not its bytes)
    from alignrec.features.provenance import content_source, sidecar

    source = json.loads(sidecar(out).read_text())
    assert source["chosen"] == choice["chosen"] and "num_threads" not in source["fields"]["config"]
    assert content_source(out, feats) == source["source"]
    assert {"mim", "mlm"} <= {p["target"] for p in summary["pretext"]}
    assert "pretext check" in res.output and "interp." in res.output
    # the small record the README's tables are generated from
    from alignrec.paths import results_root

    record = results_root() / "stage1" / synthetic_spec
    saved = json.loads((record / "pretrain.json").read_text())
    assert saved["stage2_choice"] == choice and "history" not in saved
    assert "(stage 2 reads it)" in (record / "choice.md").read_text()
    assert "results" in str(record) and str(record).startswith(str(tmp_path.parent.parent))
    res = runner.invoke(
        app,
        [
            "evaluate-features",
            "--dataset",
            synthetic_spec,
            "--features",
            f"fusion:{model_dir}",
            "--protocol",
            "mask-modality",
            "--modality",
            "image",
            "--out",
            str(tmp_path / "m.json"),
        ],
    )
    assert res.exit_code == 0, res.output
    assert "relative_loss" in json.loads((tmp_path / "m.json").read_text())


@pytest.mark.parametrize("where", ["parent", "same"])
def test_pretrain_features_refuses_overlapping_outputs(synthetic_spec, tmp_path, where):
    """--model-dir replaces its folder whole: it may not hold --out (the features were lost)."""
    folder = tmp_path / "stage1"
    out = folder / "features.npy" if where == "parent" else folder
    args = ["pretrain-features", "--dataset", synthetic_spec, "--out", str(out)]
    res = runner.invoke(app, [*args, "--model-dir", str(folder)])
    assert isinstance(res.exception, ConfigError) and "overlap" in str(res.exception)
    assert not folder.exists()


def test_pretrain_features_unwritable_out_is_one_line(synthetic_spec):
    res = runner.invoke(
        app, ["pretrain-features", "--dataset", synthetic_spec, "--out", "/proc/nope/f.npy"]
    )
    assert isinstance(res.exception, ConfigError) and "cannot write" in str(res.exception)
