"""The stage-1 fusion encoder: forward with missing modalities, determinism, training, save/load."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from alignrec.errors import ConfigError, DataError
from alignrec.features.cache import EncoderOutputs, ImagePatches, TextTokens
from alignrec.features.fusion import (
    FusionConfig,
    _block_mask,
    collate,
    encode_items,
    load_fusion,
    pretrain_fusion,
    save_fusion,
)

SMALL = dict(
    hidden_size=32,
    num_layers=1,
    num_heads=2,
    epochs=1,
    min_steps=0,
    batch_size=8,
    codebook_size=8,
    codebook_sample=500,
    projection_dim=16,
)


def synthetic_outputs(n: int = 20, seed: int = 0, vectors: bool = False) -> EncoderOutputs:
    """Random encoder outputs: item 0 has no text, item 1 no image, ragged text lengths."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, 12, size=n)
    lengths[0] = 0
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    text = TextTokens(
        ids=rng.integers(0, 50, size=offsets[-1]).astype(np.int32),
        states=rng.normal(size=(offsets[-1], 384)).astype(np.float16),
        offsets=offsets,
    )
    index = np.arange(n) - 1
    index[0], index[1] = 0, -1
    index[2:] = np.arange(1, n - 1)
    image = ImagePatches(
        patches=rng.normal(size=(n - 1, 49, 64)).clip(0).astype(np.float16), index=index
    )
    vecs = {"audio": rng.normal(size=(n, 5)).astype(np.float32)} if vectors else {}
    return EncoderOutputs(n, text, image, vecs)


def test_collate_pads_and_flags_missing():
    out = synthetic_outputs()
    b = collate(out, np.array([0, 1, 2]))
    assert b.text.shape[0] == 3 and not b.text_mask[0].any() and b.text_mask[1].any()
    assert b.image_mask.tolist() == [True, False, True]
    dropped = b.without({"image": torch.tensor([True, False, False])})
    assert dropped.image_mask.tolist() == [False, False, True]


def test_forward_with_missing_modalities_gives_finite_features():
    out = synthetic_outputs(vectors=True)
    res = pretrain_fusion(out, FusionConfig(**{**SMALL, "epochs": 0}))
    f = encode_items(res.model, out)
    assert f.shape == (20, 384 + 64 + 5 + 32) and np.isfinite(f).all()
    # an item stripped of text and image keeps its feature from the audio vector alone
    none = np.zeros(20, bool)
    none[3] = True
    g = encode_items(res.model, out, drop={"text": none, "image": none})
    assert np.isfinite(g).all() and not np.allclose(g[3], f[3])
    assert np.allclose(g[4:], f[4:], atol=1e-5)  # other items untouched
    # and with every modality removed only [CLS] remains: still a finite vector
    h = encode_items(res.model, out, drop={"text": none, "image": none, "audio": none})
    assert np.isfinite(h[3]).all()


def test_one_epoch_training_smoke_logs_losses():
    class Recorder:
        def __init__(self):
            self.calls = []

        def log_metrics(self, metrics, step=None):
            self.calls.append((dict(metrics), step))

    rec = Recorder()
    res = pretrain_fusion(synthetic_outputs(vectors=True), FusionConfig(**SMALL), logger=rec)
    assert len(res.history) == 1
    steps = [m for m, _ in rec.calls if "train/loss" in m]
    assert len(steps) == 3  # 20 items / batch 8
    expected = {"train/mlm", "train/mim", "train/mvm", "train/itc", "train/align", "train/recon"}
    assert expected <= set(steps[0])
    assert all(np.isfinite(m["train/loss"]) for m in steps)
    assert "epoch/loss" in rec.calls[-1][0]


@pytest.mark.parametrize("targets", [("ids", "codes"), ("states", "features")])
def test_training_is_deterministic_for_a_seed(targets):
    out = synthetic_outputs()
    cfg = FusionConfig(
        **{**SMALL, "epochs": 2, "text_target": targets[0], "image_target": targets[1]}
    )
    a = encode_items(pretrain_fusion(out, cfg).model, out)
    b = encode_items(pretrain_fusion(out, cfg).model, out)
    assert np.array_equal(a, b)
    c = encode_items(
        pretrain_fusion(out, FusionConfig(**{**SMALL, "epochs": 2, "seed": 1})).model, out
    )
    assert not np.allclose(a, c)


def test_a_batch_moves_to_a_device_whole():
    out = synthetic_outputs(vectors=True)
    b = collate(out, np.array([0, 1, 2]))
    assert b.to("cpu") is b and b.device == torch.device("cpu")
    moved = b.to("meta")  # a device without data: every tensor must follow
    tensors = [moved.text, moved.text_ids, moved.text_mask, moved.image, moved.image_mask]
    tensors += [*moved.vectors.values(), *moved.vector_mask.values()]
    assert {t.device.type for t in tensors} == {"meta"} and moved.device.type == "meta"
    assert moved.has("image").device.type == "meta" and moved.has("vec:none").device.type == "meta"
    assert [t.shape for t in tensors[:5]] == [
        t.shape for t in (b.text, b.text_ids, b.text_mask, b.image, b.image_mask)
    ]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_training_on_a_gpu_matches_the_cpu():
    """The same seed draws the same masks on every device: GPU features track the CPU ones."""
    out = synthetic_outputs(vectors=True)
    cfg = FusionConfig(**{**SMALL, "epochs": 2, "dropout": 0.0})
    cpu = encode_items(pretrain_fusion(out, cfg).model, out)
    model = pretrain_fusion(out, cfg, device="cuda").model
    assert model.output_mean.device.type == "cuda"
    gpu = encode_items(model, out)
    cos = (cpu * gpu).sum(1) / np.linalg.norm(cpu, axis=1) / np.linalg.norm(gpu, axis=1)
    assert cos.min() > 0.99, cos.min()
    assert np.allclose(encode_items(model, out, device="cpu"), gpu, atol=1e-4)


def test_save_load_roundtrip(tmp_path):
    out = synthetic_outputs()
    model = pretrain_fusion(out, FusionConfig(**SMALL)).model
    save_fusion(model, tmp_path / "fusion")
    again = load_fusion(tmp_path / "fusion")
    assert again.config == model.config
    assert np.allclose(encode_items(again, out), encode_items(model, out))


def test_config_validation():
    with pytest.raises(ConfigError, match="num_heads"):
        FusionConfig(hidden_size=30, num_heads=4)
    with pytest.raises(ConfigError, match="unknown keys"):
        FusionConfig.from_dict({"hiden_size": 64})
    with pytest.raises(ConfigError, match="text_mask_ratio"):
        FusionConfig(text_mask_ratio=1.5)


def test_modality_mismatch_and_unknown_modality_are_data_errors():
    out = synthetic_outputs()
    model = pretrain_fusion(out, FusionConfig(**{**SMALL, "epochs": 0})).model
    with pytest.raises(DataError, match="modalities"):
        encode_items(model, synthetic_outputs(vectors=True))
    with pytest.raises(DataError, match="no modality 'audio'"):
        encode_items(model, out, drop={"audio": np.zeros(20, bool)})


def test_centred_output_and_projection():
    out = synthetic_outputs()
    cfg = FusionConfig(
        **{**SMALL, "output": "projection", "center_output": True, "readout": "fused"}
    )
    model = pretrain_fusion(out, cfg).model
    f = encode_items(model, out)
    assert f.shape == (20, 16)
    assert np.allclose(f.mean(0), 0, atol=1e-4)  # centred over the pretraining items
    raw = encode_items(model, out, centre=False)
    assert np.allclose(raw - model.output_mean.numpy(), f, atol=1e-5)


def test_residual_readout_keeps_the_centred_raw_vectors():
    """The residual readout is [text, image, vectors] pooled and centred, as raw:concat
    centred by its mean, followed by the fused vector: it cannot lose what the raw vectors
    carry. A missing modality is filled by the reconstruction head."""
    from alignrec.features.sets import raw_part

    out = synthetic_outputs(vectors=True)
    model = pretrain_fusion(out, FusionConfig(**{**SMALL, "fused_weight": 1.0})).model
    f = encode_items(model, out)
    col = 0
    for m in ("text", "image", "vec:audio"):
        raw = raw_part(out, m)
        have = np.linalg.norm(raw, axis=1) > 0
        mean = raw[have].mean(0)
        part = f[:, col : col + raw.shape[1]]
        assert np.allclose(part[have], raw[have] - mean, atol=1e-3), m
        # the missing ones (item 0 has no text, item 1 no image) are predictions, at the
        # centred norm shrunk by the reconstruction's calibrated cosine
        cos = float(model.recon_cos(m))
        assert 0.0 <= cos <= 1.0
        norm = np.sqrt(1 - mean @ mean) * cos
        assert np.allclose(np.linalg.norm(part[~have], axis=1), norm, atol=1e-4)
        col += raw.shape[1]
    fused = f[:, col:]
    assert fused.shape[1] == 32 and np.allclose(np.linalg.norm(fused, axis=1), 1, atol=1e-5)
    # weights scale the two parts
    model.config.raw_weight, model.config.fused_weight = 0.5, 2.0
    g = encode_items(model, out)
    assert np.allclose(g[:, :col], 0.5 * f[:, :col], atol=1e-5)
    assert np.allclose(g[:, col:], 2.0 * fused, atol=1e-5)


def test_reconstruction_fills_a_removed_modality_from_the_others():
    out = synthetic_outputs()
    model = pretrain_fusion(out, FusionConfig(**{**SMALL, "epochs": 3})).model
    drop = np.zeros(20, bool)
    drop[5:10] = True
    f = encode_items(model, out)
    g = encode_items(model, out, drop={"image": drop})
    text_cols = 384
    image_cols = slice(text_cols, text_cols + 64)
    assert not np.allclose(g[drop, image_cols], f[drop, image_cols])
    assert np.allclose(g[~drop], f[~drop], atol=1e-5)
    assert np.allclose(g[drop, :text_cols], f[drop, :text_cols], atol=1e-5)


def test_block_masking_masks_blocks_of_the_grid_at_the_ratio():
    gen = torch.Generator().manual_seed(0)
    has = torch.tensor([True, True, False, True])
    mask = _block_mask(has, 49, 0.4, 3, gen)
    assert mask.shape == (4, 49) and not mask[2].any()
    counts = mask.sum(1)
    assert (counts[has] >= 20).all()  # ceil(0.4 * 49)
    grid = mask.reshape(4, 7, 7)
    # blocks: most masked patches have a masked 4-neighbour (random patches rarely do)
    nb = torch.zeros_like(grid, dtype=torch.int64)
    nb[:, 1:] += grid[:, :-1]
    nb[:, :-1] += grid[:, 1:]
    nb[:, :, 1:] += grid[:, :, :-1]
    nb[:, :, :-1] += grid[:, :, 1:]
    assert (nb[grid] > 0).float().mean() > 0.9
    # block 1 falls back to independent patches at the same ratio
    single = _block_mask(has, 49, 0.4, 1, torch.Generator().manual_seed(0))
    assert (single.sum(1)[has] == 20).all()


def test_models_saved_before_the_residual_readout_still_load(tmp_path):
    """A format-1 folder (no reconstruction heads) loads as the fused readout it was."""
    import json

    out = synthetic_outputs()
    cfg = FusionConfig(**{**SMALL, "readout": "fused", "recon_weight": 0.0})
    model = pretrain_fusion(out, cfg).model
    save_fusion(model, tmp_path / "old")
    meta_file = tmp_path / "old" / "fusion_config.json"
    meta = json.loads(meta_file.read_text())
    for key in ("readout", "recon_weight", "raw_weight", "fused_weight", "image_mask_block"):
        meta["config"].pop(key)
    meta["format"] = 1
    meta_file.write_text(json.dumps(meta))
    again = load_fusion(tmp_path / "old")
    assert again.config.readout == "fused"
    assert np.allclose(encode_items(again, out), encode_items(model, out))


def test_min_steps_adds_epochs_on_a_small_catalogue():
    cfg = FusionConfig(**{**SMALL, "epochs": 2, "min_steps": 10})
    assert cfg.epochs_for(20) == 4  # 3 steps an epoch: 4 epochs reach 10 steps
    assert cfg.epochs_for(1000) == 2  # 125 steps an epoch: epochs decide
    assert FusionConfig(**{**SMALL, "epochs": 0, "min_steps": 10}).epochs_for(20) == 0
    assert FusionConfig(**{**SMALL, "epochs": 3, "min_steps": 660}).epochs_for(20) == 30  # capped
    defaults = FusionConfig()
    assert [defaults.epochs_for(n) for n in (1349, 1425, 18357)] == [30, 29, 3]
    res = pretrain_fusion(synthetic_outputs(), cfg)
    assert len(res.history) == 4
