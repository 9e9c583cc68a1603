"""Stage 1 end to end: extract (cached) -> pretrain the fusion encoder -> item features.

Also resolves the feature-set names the CLI and the orchestration accept:
a ``.npy`` path, ``raw:text|image|concat|<precomputed>``, or ``fusion:<saved model folder>``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from alignrec.errors import ConfigError
from alignrec.features.cache import EncoderOutputs, extract
from alignrec.features.fusion import (
    FusionConfig,
    MetricsLogger,
    TrainResult,
    encode_items,
    load_fusion,
    pretrain_fusion,
)
from alignrec.features.sets import FeatureSet, fusion_feature_set, load_table, raw_feature_set


def default_cache_dir(dataset_name: str) -> Path:
    """``artifacts/datasets/<name>/encoders/``: where encoder outputs are cached by default."""
    from alignrec.paths import dataset_artifacts

    return dataset_artifacts(dataset_name) / "encoders"


@dataclass
class Stage1Result:
    """Output of :func:`pretrain_features`.

    Attributes:
        features: float32 [n_items, hidden_size], row i = item i (see FusionConfig.pooling
            and normalize_output for what the vector is).
        train: the trained model, loss history and training seconds.
        outputs: the encoder outputs it was trained on (for mask-modality reruns).
    """

    features: np.ndarray
    train: TrainResult
    outputs: EncoderOutputs

    @property
    def extraction_seconds(self) -> dict[str, float]:
        return dict(self.outputs.seconds)


def pretrain_features(
    dataset,
    cache_dir: str | Path | None = None,
    config: FusionConfig | None = None,
    *,
    logger: MetricsLogger | None = None,
    progress: bool = True,
    device: str = "cpu",
) -> Stage1Result:
    """Stage 1 (ICA) on one dataset: cached frozen encoders, then fusion pretraining.

    Uses only item content (texts, images, precomputed vectors), never interactions.
    ``device`` runs the frozen encoders and the fusion training (``auto``: a GPU if any).
    """
    from alignrec.env import torch_device

    device = torch_device(device)  # a ConfigError before any work
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir(dataset.name)
    outputs = extract(dataset, cache_dir, progress=progress, device=device)
    result = pretrain_fusion(outputs, config, logger=logger, progress=progress, device=device)
    return Stage1Result(encode_items(result.model, outputs), result, outputs)


def resolve_features(
    spec: str, dataset, cache_dir: str | Path | None = None, *, progress: bool = True
) -> FeatureSet:
    """A feature set by name: ``path.npy``, ``raw:<set>`` or ``fusion:<model folder>``."""
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir(dataset.name)
    if spec.startswith("raw:"):
        which = spec.removeprefix("raw:")
        # Encode only what the set needs: a precomputed modality needs no encoder at all.
        mods = {"text": ("text",), "image": ("image",), "concat": None}.get(which, ())
        if which in ("text", "image") and which in dataset.features and not _has(dataset, which):
            mods = ()  # e.g. lastfm-2k: "text" is a precomputed vector, not item texts
        return raw_feature_set(
            extract(dataset, cache_dir, modalities=mods, progress=progress), spec
        )
    if spec.startswith("fusion:"):
        model = load_fusion(spec.removeprefix("fusion:"))
        return fusion_feature_set(model, extract(dataset, cache_dir, progress=progress), spec)
    if spec.endswith(".npy") or Path(spec).is_file():
        return load_table(spec, dataset.n_items)
    raise ConfigError(
        f"unknown feature set {spec!r}: give a .npy file [n_items, D], raw:text, raw:image, "
        "raw:concat, raw:<precomputed modality> or fusion:<saved fusion encoder folder>"
    )


def with_modalities(dataset, cache_dir: str | Path | None = None, *, progress: bool = True):
    """``dataset`` with each raw item modality as ``features["mm:<name>"]``.

    This is what the multimodal baselines read (see
    :func:`alignrec.models.base.modality_features`): ``mm:text`` and ``mm:image`` from the
    cached frozen encoders, ``mm:vec:<name>`` for precomputed vectors, each L2-normalised
    per row with zeros for an item that lacks the modality. A dataset with no content
    (``amazon-baby``) gets none.
    """
    import dataclasses

    from alignrec.features.sets import raw_part, raw_parts

    if not (dataset.has_text or dataset.has_images or dataset.features):
        return dataset
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir(dataset.name)
    outputs = extract(dataset, cache_dir, progress=progress)
    tables = {f"mm:{part}": raw_part(outputs, part) for part in raw_parts(outputs)}
    return dataclasses.replace(dataset, features={**dataset.features, **tables})


def _has(dataset, modality: str) -> bool:
    return dataset.has_text if modality == "text" else dataset.has_images
