"""Item feature sets: raw ones built from the encoder cache, stage-1 ones from a fusion encoder.

A :class:`FeatureSet` is a feature table [n_items, D] plus, where possible, a
way to rebuild it with a modality removed from some items. The mask-modality
protocol needs that: for raw sets the removed part becomes zeros, for stage-1
sets the fusion encoder is run without that modality.

Named raw sets:

- ``raw:text``: MiniLM token states mean-pooled over the attention mask, L2-normalised
  (equal to the sentence-transformers embedding to about 1e-5);
- ``raw:image``: EfficientNet-Lite0 patch grid mean-pooled (its own global pooling),
  L2-normalised;
- ``raw:concat``: every available modality, each L2-normalised, concatenated;
- ``raw:<name>``: a precomputed modality of the dataset (e.g. lastfm-2k ``vggish``),
  L2-normalised.

An item lacking a modality has zeros in that modality's part.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

from alignrec.errors import ConfigError, DataError
from alignrec.features.cache import EncoderOutputs

Drop = dict[str, np.ndarray]  # modality name -> bool [n_items]: items to remove it from


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm; all-zero rows stay zero."""
    x = np.asarray(x, dtype=np.float32)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)


def _drop_flags(drop: Drop | None, names: Sequence[str], n: int) -> np.ndarray:
    flags = np.zeros(n, bool)
    for name in names:
        if drop and name in drop:
            flags |= np.asarray(drop[name], bool)
    return flags


def raw_text(outputs: EncoderOutputs, drop: Drop | None = None, chunk: int = 2048) -> np.ndarray:
    """Mean-pooled MiniLM token states, L2-normalised, float32 [n_items, 384]."""
    tok = outputs.text
    if tok is None:
        raise DataError("the dataset has no item texts: raw:text is not available")
    out = np.zeros((outputs.n_items, tok.states.shape[1]), np.float32)
    have = np.flatnonzero(tok.present & ~_drop_flags(drop, ["text"], outputs.n_items))
    for s in range(0, len(have), chunk):
        idx = have[s : s + chunk]
        for i in idx:
            a, b = int(tok.offsets[i]), int(tok.offsets[i + 1])
            out[i] = np.asarray(tok.states[a:b], dtype=np.float32).mean(0)
    return l2_normalize(out)


def raw_image(outputs: EncoderOutputs, drop: Drop | None = None, chunk: int = 256) -> np.ndarray:
    """Mean-pooled EfficientNet patch grid, L2-normalised, float32 [n_items, 1280]."""
    img = outputs.image
    if img is None:
        raise DataError("the dataset has no item images: raw:image is not available")
    out = np.zeros((outputs.n_items, img.patches.shape[2]), np.float32)
    have = np.flatnonzero(img.present & ~_drop_flags(drop, ["image"], outputs.n_items))
    for s in range(0, len(have), chunk):
        idx = have[s : s + chunk]
        out[idx] = np.asarray(img.patches[img.index[idx]], dtype=np.float32).mean(1)
    return l2_normalize(out)


def raw_vector(outputs: EncoderOutputs, name: str, drop: Drop | None = None) -> np.ndarray:
    """A precomputed modality, L2-normalised, zeros for dropped items."""
    if name not in outputs.vectors:
        raise DataError(
            f"the dataset has no precomputed modality {name!r}; "
            f"available: {', '.join(outputs.vectors) or 'none'}"
        )
    out = l2_normalize(outputs.vectors[name])
    flags = _drop_flags(drop, [name, f"vec:{name}"], outputs.n_items)
    out[flags] = 0.0
    return out


def raw_parts(outputs: EncoderOutputs) -> list[str]:
    """The modalities a raw concatenation is made of, in order."""
    parts = [m for m, v in (("text", outputs.text), ("image", outputs.image)) if v is not None]
    return parts + [f"vec:{k}" for k in outputs.vectors]


def raw_part(outputs: EncoderOutputs, part: str, drop: Drop | None = None) -> np.ndarray:
    """One raw modality table by its key (``text``, ``image`` or ``vec:<name>``)."""
    if part == "text":
        return raw_text(outputs, drop)
    if part == "image":
        return raw_image(outputs, drop)
    return raw_vector(outputs, part.removeprefix("vec:"), drop)


# ``Dataset.meta`` key: feature table name -> a digest of what decided it (its inputs, the
# encoder, the code that derived it), set by ``with_modalities`` for the tables it derives.
# The benchmark keys runs by it instead of the table's bytes, whose last bits vary with the CPU.
FEATURE_SOURCES = "feature_sources"


def raw_part_source(outputs: EncoderOutputs, part: str) -> str | None:
    """What decides :func:`raw_part`'s table, as a digest: the encoder cache key (the encoder
    and every input text or image file) or the precomputed matrix's bytes, and the source of
    the functions that derive the table (:func:`_raw_code`). Not the table's own bytes, whose
    last bits vary with the CPU the encoder ran on. None when the input has no key (outputs
    built in memory)."""
    import hashlib

    from alignrec.training.checkpoint import table_digest

    if part == "text":
        source = outputs.text.key if outputs.text is not None else ""
    elif part == "image":
        source = outputs.image.key if outputs.image is not None else ""
    else:
        source = table_digest(outputs.vectors[part.removeprefix("vec:")])
    if not source:
        return None
    h = hashlib.sha256(f"{part}|{source}|".encode())
    h.update(_raw_code().encode())
    return h.hexdigest()


@cache
def _raw_code() -> str:
    """The source of the functions that turn encoder outputs into the raw tables: a change
    there changes :func:`raw_part_source`, a change elsewhere in this module does not."""
    import inspect

    fns = (l2_normalize, _drop_flags, raw_text, raw_image, raw_vector, raw_part)
    return "\n".join(inspect.getsource(f) for f in fns)


def raw_concat(outputs: EncoderOutputs, drop: Drop | None = None) -> np.ndarray:
    """Every raw modality, each L2-normalised, concatenated (zeros for a missing part)."""
    parts = raw_parts(outputs)
    if not parts:
        raise DataError("the dataset has no content modality: raw:concat is not available")
    return np.concatenate([raw_part(outputs, p, drop) for p in parts], axis=1)


@dataclass(frozen=True)
class FeatureSet:
    """A feature table and, when it can, how to rebuild it with modalities removed.

    Attributes:
        name: how the set was named (``raw:text``, a file path, ``fusion:<folder>``...).
        table: float32 [n_items, D].
        modalities: the modality keys the set is built from (``text``, ``image``, ``vec:<name>``).
        rebuild: given ``{modality: bool [n_items]}``, the table with that modality
            removed from the flagged items; None for a set read from a file.
    """

    name: str
    table: np.ndarray
    modalities: tuple[str, ...] = ()
    rebuild: Callable[[Drop], np.ndarray] | None = None

    def without(self, drop: Drop) -> np.ndarray:
        """The table recomputed with modalities removed (mask-modality protocol)."""
        if self.rebuild is None:
            raise ConfigError(
                f"feature set {self.name!r} cannot be recomputed without a modality; "
                "mask-modality needs raw:<set> or fusion:<model folder>, not a plain .npy table"
            )
        return self.rebuild(drop)


def _canonical_drop(outputs: EncoderOutputs, drop: Drop) -> Drop:
    """Map user modality names (``image``, ``vggish``) to the keys of :func:`raw_parts`."""
    from alignrec.features.fusion import resolve_modality

    return {resolve_modality(outputs, m): f for m, f in drop.items()}


def raw_feature_set(outputs: EncoderOutputs, which: str) -> FeatureSet:
    """A named raw set: ``text``, ``image``, ``concat`` or a precomputed modality name."""
    which = which.removeprefix("raw:")
    if which == "concat":
        parts = tuple(raw_parts(outputs))
        return FeatureSet(
            "raw:concat",
            raw_concat(outputs),
            parts,
            lambda drop: raw_concat(outputs, _canonical_drop(outputs, drop)),
        )
    if which in ("text", "image") and getattr(outputs, which) is not None:
        return FeatureSet(
            f"raw:{which}",
            raw_part(outputs, which),
            (which,),
            lambda drop: raw_part(outputs, which, _canonical_drop(outputs, drop)),
        )
    if which in outputs.vectors:
        key = f"vec:{which}"
        return FeatureSet(
            f"raw:{which}",
            raw_vector(outputs, which),
            (key,),
            lambda drop: raw_vector(outputs, which, _canonical_drop(outputs, drop)),
        )
    avail = ["concat", *[p.removeprefix("vec:") for p in raw_parts(outputs)]]
    raise DataError(
        f"raw feature set 'raw:{which}' is not available for this dataset; available: "
        + ", ".join(f"raw:{a}" for a in avail)
    )


def fusion_feature_set(model, outputs: EncoderOutputs, name: str = "stage1") -> FeatureSet:
    """Stage-1 features of a trained fusion encoder, rebuildable without a modality."""
    from alignrec.features.fusion import encode_items

    return FeatureSet(
        name,
        encode_items(model, outputs),
        tuple(model.layout.modalities),
        lambda drop: encode_items(model, outputs, drop=drop),
    )


def check_table(table: np.ndarray, n_items: int, name: str = "features") -> np.ndarray:
    """Validate a feature table: 2-D, one row per item, finite. Returns float32."""
    arr = np.asarray(table)
    if arr.ndim != 2:
        raise DataError(f"{name}: expected a 2-D table [n_items, D], got shape {arr.shape}")
    if arr.shape[0] != n_items:
        raise DataError(f"{name}: has {arr.shape[0]} rows but the dataset has {n_items} items")
    if arr.shape[1] == 0:
        raise DataError(f"{name}: has zero columns")
    if not np.issubdtype(arr.dtype, np.number):
        raise DataError(f"{name}: dtype {arr.dtype} is not numeric")
    arr = arr.astype(np.float32, copy=False)
    bad = ~np.isfinite(arr).all(axis=1)
    if bad.any():
        rows = np.flatnonzero(bad)
        raise DataError(
            f"{name}: {len(rows)} rows hold NaN or infinite values (first items: {rows[:5].tolist()})"
        )
    return arr


def load_table(path: str | Path, n_items: int) -> FeatureSet:
    """A feature table read from a ``.npy`` file and validated against the item count."""
    path = Path(path)
    if not path.is_file():
        raise DataError("feature file not found", file=path)
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DataError(f"not a readable .npy array: {exc}", file=path) from exc
    return FeatureSet(str(path), check_table(arr, n_items, str(path)))


def with_content_features(data, spec: str, cache_dir: str | Path | None = None):
    """``data`` with the feature set ``spec`` as ``features["content"]`` (what content models
    read); ``cache_dir``: the encoder cache a ``raw:``/``fusion:`` set is read from."""
    import dataclasses

    from alignrec.features.pipeline import resolve_features

    table = resolve_features(spec, data, cache_dir, progress=False).table
    return dataclasses.replace(data, features={**data.features, "content": table})
