"""Stage 1 end to end: extract (cached) -> pretrain the fusion encoder -> item features.

Also resolves the feature-set names the CLI and the orchestration accept:
a ``.npy`` path, ``raw:text|image|concat|<precomputed>``, or ``fusion:<saved model folder>``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
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
from alignrec.features.pretext import PretextScore, flagged
from alignrec.features.selection import Choice
from alignrec.features.sets import FeatureSet, fusion_feature_set, load_table, raw_feature_set


def default_cache_dir(dataset_name: str) -> Path:
    """``artifacts/datasets/<name>/encoders/``: where encoder outputs are cached by default."""
    from alignrec.paths import dataset_artifacts

    return dataset_artifacts(dataset_name) / "encoders"


@dataclass
class Stage1Result:
    """Output of :func:`pretrain_features`.

    Attributes:
        features: float32 [n_items, D], row i = item i: the stage-1 encoder's output (see
            FusionConfig.readout for what the vector is).
        train: the trained model, loss history and training seconds.
        outputs: the encoder outputs it was trained on (for mask-modality reruns).
        pretext: the pretext-difficulty check of the trained model.
        choice: which feature set stage 2 should read, chosen on validation
            (:func:`alignrec.features.selection.choose_features`); None when not asked.
        stage2_features: that set's table (``features`` when stage 1 wins).
    """

    features: np.ndarray
    train: TrainResult
    outputs: EncoderOutputs
    pretext: list[PretextScore] = field(default_factory=list)
    choice: Choice | None = None
    stage2_features: np.ndarray | None = None

    @property
    def extraction_seconds(self) -> dict[str, float]:
        return dict(self.outputs.seconds)

    def summary(self) -> dict:
        """What a run record keeps: timings, pretext check, the choice for stage 2."""
        return {
            "extraction_seconds": self.extraction_seconds,
            "training_seconds": self.train.seconds,
            "pretext": [s.to_dict() for s in self.pretext],
            "pretext_flagged": flagged(self.pretext),
            "stage2_choice": self.choice.to_dict() if self.choice else None,
        }


def pretrain_features(
    dataset,
    cache_dir: str | Path | None = None,
    config: FusionConfig | None = None,
    *,
    logger: MetricsLogger | None = None,
    progress: bool = True,
    device: str = "cpu",
    choose: bool = True,
) -> Stage1Result:
    """Stage 1 (ICA) on one dataset: cached frozen encoders, then fusion pretraining.

    Pretraining uses only item content (texts, images, precomputed vectors), never
    interactions. Afterwards the pretext-difficulty check runs, and with ``choose`` the
    stage-1 features compete with the raw sets on validation for stage 2
    (:func:`alignrec.features.selection.choose_features`). ``device`` runs the frozen
    encoders and the fusion training (``auto``: a GPU if any).
    """
    from alignrec.env import torch_device
    from alignrec.features.pretext import pretext_check, pretext_metrics
    from alignrec.features.selection import choose_features, raw_candidates, readout_candidates

    device = torch_device(device)  # a ConfigError before any work
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir(dataset.name)
    outputs = extract(dataset, cache_dir, progress=progress, device=device)
    result = pretrain_fusion(outputs, config, logger=logger, progress=progress, device=device)
    features = encode_items(result.model, outputs)
    pretext = pretext_check(result.model, outputs)
    if logger is not None:
        logger.log_metrics(pretext_metrics(pretext))
    choice, table = None, None
    if choose:
        candidates = {**readout_candidates(result.model, features), **raw_candidates(outputs)}
        choice = choose_features(dataset, candidates)
        table = candidates[choice.chosen]
    return Stage1Result(features, result, outputs, pretext, choice, table)


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

    from alignrec.features.sets import FEATURE_SOURCES, raw_part, raw_part_source, raw_parts

    if not (dataset.has_text or dataset.has_images or dataset.features):
        return dataset
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir(dataset.name)
    outputs = extract(dataset, cache_dir, progress=progress)
    tables = {f"mm:{part}": raw_part(outputs, part) for part in raw_parts(outputs)}
    sources = {f"mm:{part}": raw_part_source(outputs, part) for part in raw_parts(outputs)}
    known = {**dataset.meta.get(FEATURE_SOURCES, {}), **{k: v for k, v in sources.items() if v}}
    return dataclasses.replace(
        dataset,
        features={**dataset.features, **tables},
        meta={**dataset.meta, FEATURE_SOURCES: known},
    )


def _has(dataset, modality: str) -> bool:
    return dataset.has_text if modality == "text" else dataset.has_images
