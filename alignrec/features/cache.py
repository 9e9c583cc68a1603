"""Compute the frozen encoders' outputs once per dataset and encoder, and store them.

Layout under the caller's folder (the orchestration passes
``artifacts/datasets/<name>/encoders/``)::

    text/   meta.json  ids.npy (int32 [T])  states.npy (float16 [T, 384])  offsets.npy (int64 [I+1])
    image/  meta.json  patches.npy (float16 [I_img, 49, 1280])  index.npy (int64 [I], -1 = no image)

Text tokens are ragged: item ``i`` owns rows ``offsets[i]:offsets[i+1]``; an
item with an empty text owns none. ``meta.json`` holds a key, the SHA-256 of the
encoder id and of every input (the texts, or the bytes of every image file);
a rerun whose key matches reuses the stored arrays, any change recomputes them.
Each folder is written atomically, so an interrupted extraction leaves no
half-written cache behind.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from alignrec.errors import DataError
from alignrec.io import atomic_path

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

TEXT_DIR = "text"
IMAGE_DIR = "image"
META_FILE = "meta.json"


@dataclass(frozen=True)
class TextTokens:
    """Stored MiniLM outputs of every item: ragged token ids and float16 states."""

    ids: np.ndarray
    states: np.ndarray
    offsets: np.ndarray
    encoder_id: str = ""
    key: str = ""  # the cache key: the encoder id and every input text (see text_key)

    @property
    def n_items(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        """Number of tokens of each item (0 = no text)."""
        return np.diff(self.offsets)

    @property
    def present(self) -> np.ndarray:
        """Boolean [n_items]: the item has a text."""
        return self.lengths > 0

    def item(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Token ids [T] and states [T, 384] of item ``i``."""
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        return self.ids[a:b], self.states[a:b]


@dataclass(frozen=True)
class ImagePatches:
    """Stored EfficientNet outputs: one float16 7x7 patch grid per item that has an image."""

    patches: np.ndarray
    index: np.ndarray
    encoder_id: str = ""
    key: str = ""  # the cache key: the encoder id and every image file's bytes (see image_key)

    @property
    def n_items(self) -> int:
        return len(self.index)

    @property
    def present(self) -> np.ndarray:
        """Boolean [n_items]: the item has an image."""
        return self.index >= 0

    def item(self, i: int) -> np.ndarray | None:
        """Patch grid [49, 1280] of item ``i``, or None without an image."""
        j = int(self.index[i])
        return None if j < 0 else self.patches[j]


@dataclass(frozen=True)
class EncoderOutputs:
    """Everything the fusion encoder and the raw feature sets read for one dataset.

    Attributes:
        n_items: number of items; every array is aligned to item indices.
        text: MiniLM token states, or None when no item has a text.
        image: EfficientNet patch grids, or None when no item has an image.
        vectors: precomputed modality name -> float32 [n_items, D] (the dataset's
            ``features``, e.g. lastfm-2k ``text``/``vggish``/``whisper``); each
            becomes one token of the fusion encoder.
        seconds: extraction seconds per modality (0 when loaded from the cache).
    """

    n_items: int
    text: TextTokens | None = None
    image: ImagePatches | None = None
    vectors: dict[str, np.ndarray] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def modalities(self) -> list[str]:
        """Names of the modalities present: ``text``/``image`` (encoded) then precomputed ones."""
        mods = [m for m, v in (("text", self.text), ("image", self.image)) if v is not None]
        return mods + [f"vec:{m}" for m in self.vectors]


def _sha(parts: Sequence[bytes]) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(len(p).to_bytes(8, "little"))
        h.update(p)
    return h.hexdigest()


def text_key(texts: Sequence[str], encoder_id: str) -> str:
    """Cache key of a list of item texts under one text encoder."""
    return _sha([encoder_id.encode(), *[(t or "").encode("utf-8") for t in texts]])


def image_key(paths: Sequence[str | None], encoder_id: str) -> str:
    """Cache key of the item images (file bytes, not names) under one image encoder."""
    parts = [encoder_id.encode()]
    for p in paths:
        if p is None:
            parts.append(b"\0none")
            continue
        try:
            parts.append(hashlib.sha256(Path(p).read_bytes()).digest())
        except OSError as exc:
            raise DataError(f"cannot read image: {exc}", file=p) from exc
    return _sha(parts)


def _read_meta(folder: Path) -> dict | None:
    try:
        return json.loads((folder / META_FILE).read_text())
    except (OSError, ValueError):
        return None


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="item", disable=not enabled, leave=False)


def text_tokens(
    texts: Sequence[str],
    cache_dir: str | Path,
    *,
    max_tokens: int = 128,
    batch_size: int = 32,
    progress: bool = True,
    device: str | torch.device = "cpu",
) -> tuple[TextTokens, float]:
    """MiniLM token states of every text, from the cache when its key matches.

    Returns the tokens and the seconds spent encoding (0.0 on a cache hit).
    """
    from alignrec.features.encoders import TextEncoder, text_encoder_id

    texts = [t if isinstance(t, str) else "" for t in texts]
    folder = Path(cache_dir) / TEXT_DIR
    enc_id = text_encoder_id(max_tokens)
    key = text_key(texts, enc_id)
    meta = _read_meta(folder)
    if meta is not None and meta.get("key") == key:
        log.info("text encoder outputs: cache hit %s", folder)
        return _load_text(folder, meta), 0.0
    t0 = time.perf_counter()
    encoder = TextEncoder(max_tokens=max_tokens, batch_size=batch_size, device=device)
    ids, states, lengths = [], [], np.zeros(len(texts), np.int64)
    with _progress(len(texts), "MiniLM", progress) as bar:
        for start in range(0, len(texts), batch_size * 4):
            chunk = texts[start : start + batch_size * 4]
            for j, (tok, st) in enumerate(encoder.encode(chunk)):
                ids.append(tok)
                states.append(st.astype(np.float16))
                lengths[start + j] = len(tok)
            bar.update(len(chunk))
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    out = TextTokens(
        ids=np.concatenate(ids) if ids else np.zeros(0, np.int32),
        states=np.concatenate(states) if states else np.zeros((0, encoder.dim), np.float16),
        offsets=offsets,
        encoder_id=enc_id,
        key=key,
    )
    seconds = time.perf_counter() - t0
    with atomic_path(folder, is_dir=True) as tmp:
        np.save(tmp / "ids.npy", out.ids)
        np.save(tmp / "states.npy", out.states)
        np.save(tmp / "offsets.npy", out.offsets)
        meta = {
            "key": key,
            "encoder_id": enc_id,
            "n_items": len(texts),
            "n_tokens": int(offsets[-1]),
            "seconds": seconds,
        }
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    log.info("text encoder outputs: %d items in %.1fs -> %s", len(texts), seconds, folder)
    return out, seconds


def _load_text(folder: Path, meta: dict) -> TextTokens:
    return TextTokens(
        ids=np.load(folder / "ids.npy", mmap_mode="r"),
        states=np.load(folder / "states.npy", mmap_mode="r"),
        offsets=np.load(folder / "offsets.npy"),
        encoder_id=meta.get("encoder_id", ""),
        key=meta.get("key", ""),
    )


def image_patches(
    paths: Sequence[str | None],
    cache_dir: str | Path,
    *,
    batch_size: int = 16,
    progress: bool = True,
    device: str | torch.device = "cpu",
) -> tuple[ImagePatches, float]:
    """EfficientNet patch grids of every image, from the cache when its key matches.

    ``paths[i]`` is item ``i``'s image file or None. Returns the patches and the
    seconds spent encoding (0.0 on a cache hit).
    """
    from alignrec.features.encoders import ImageEncoder, image_encoder_id

    paths = [p if isinstance(p, str | Path) and str(p) else None for p in paths]
    folder = Path(cache_dir) / IMAGE_DIR
    enc_id = image_encoder_id()
    key = image_key(paths, enc_id)
    meta = _read_meta(folder)
    if meta is not None and meta.get("key") == key:
        log.info("image encoder outputs: cache hit %s", folder)
        return _load_image(folder, meta), 0.0
    t0 = time.perf_counter()
    encoder = ImageEncoder(batch_size=batch_size, device=device)
    have = [i for i, p in enumerate(paths) if p is not None]
    index = np.full(len(paths), -1, np.int64)
    index[have] = np.arange(len(have))
    patches = np.zeros((len(have), encoder.n_patches, encoder.dim), np.float16)
    with _progress(len(have), "EfficientNet", progress) as bar:
        for start in range(0, len(have), batch_size):
            chunk = have[start : start + batch_size]
            patches[start : start + len(chunk)] = encoder.encode([paths[i] for i in chunk])
            bar.update(len(chunk))
    seconds = time.perf_counter() - t0
    with atomic_path(folder, is_dir=True) as tmp:
        np.save(tmp / "patches.npy", patches)
        np.save(tmp / "index.npy", index)
        meta = {
            "key": key,
            "encoder_id": enc_id,
            "n_items": len(paths),
            "n_images": len(have),
            "seconds": seconds,
        }
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    log.info("image encoder outputs: %d images in %.1fs -> %s", len(have), seconds, folder)
    return ImagePatches(patches=patches, index=index, encoder_id=enc_id, key=key), seconds


def _load_image(folder: Path, meta: dict) -> ImagePatches:
    return ImagePatches(
        patches=np.load(folder / "patches.npy", mmap_mode="r"),
        index=np.load(folder / "index.npy"),
        encoder_id=meta.get("encoder_id", ""),
        key=meta.get("key", ""),
    )


def extract(
    dataset,
    cache_dir: str | Path,
    *,
    modalities: Sequence[str] | None = None,
    include_vectors: bool = True,
    progress: bool = True,
    device: str | torch.device = "cpu",
) -> EncoderOutputs:
    """Encoder outputs of a :class:`~alignrec.data.dataset.Dataset`, cached under ``cache_dir``.

    Args:
        dataset: the dataset; its ``items`` table gives the texts and image paths.
        cache_dir: folder of the cache (created if needed).
        modalities: subset of ``("text", "image")`` to encode; by default every
            one the dataset has (a modality no item has is skipped, not an error).
        include_vectors: also hand over the dataset's precomputed feature matrices.
        progress: show tqdm progress bars while encoding.
        device: torch device the frozen encoders run on (a cache hit loads nothing).
    """
    from alignrec.env import set_offline

    set_offline()
    wanted = ("text", "image") if modalities is None else tuple(modalities)
    unknown = set(wanted) - {"text", "image"}
    if unknown:
        from alignrec.errors import ConfigError

        raise ConfigError(
            f"unknown encoded modalities {sorted(unknown)}; expected text and/or image"
        )
    text = image = None
    seconds: dict[str, float] = {}
    if "text" in wanted and dataset.has_text:
        text, seconds["text"] = text_tokens(
            list(dataset.items["text"]), cache_dir, progress=progress, device=device
        )
    if "image" in wanted and dataset.has_images:
        image, seconds["image"] = image_patches(
            list(dataset.items["image"]), cache_dir, progress=progress, device=device
        )
    vectors = {}
    if include_vectors:
        for name, mat in dataset.features.items():
            mat = np.asarray(mat, dtype=np.float32)
            if mat.shape[0] != dataset.n_items:
                raise DataError(
                    f"precomputed modality {name!r} has {mat.shape[0]} rows, expected {dataset.n_items}"
                )
            vectors[name] = mat
    return EncoderOutputs(dataset.n_items, text, image, vectors, seconds)
