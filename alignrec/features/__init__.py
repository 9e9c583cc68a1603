"""Item content features: frozen encoders, stage-1 fusion pretraining, intermediate protocols.

- :mod:`~alignrec.features.encoders`: MiniLM and EfficientNet-Lite0, loaded offline from pip packages.
- :mod:`~alignrec.features.cache`: their per-item outputs, computed once and cached.
- :mod:`~alignrec.features.fusion`: the stage-1 fusion encoder and its BEiT-style pretraining.
- :mod:`~alignrec.features.sets`: raw and stage-1 feature tables.
- :mod:`~alignrec.features.protocols`: zero-shot, item-CF and mask-modality evaluation.
- :mod:`~alignrec.features.pipeline`: the whole of stage 1 on a dataset, and feature-set names.

Importing this package is cheap; torch and transformers load with the submodules that need them.
"""

from __future__ import annotations

__all__ = [
    "EncoderOutputs",
    "FeatureSet",
    "FusionConfig",
    "extract",
    "item_cf",
    "load_fusion",
    "mask_modality",
    "pretrain_features",
    "pretrain_fusion",
    "resolve_features",
    "save_fusion",
    "zero_shot",
]

_WHERE = {
    "EncoderOutputs": "cache",
    "extract": "cache",
    "FeatureSet": "sets",
    "FusionConfig": "fusion",
    "load_fusion": "fusion",
    "save_fusion": "fusion",
    "pretrain_fusion": "fusion",
    "item_cf": "protocols",
    "mask_modality": "protocols",
    "zero_shot": "protocols",
    "pretrain_features": "pipeline",
    "resolve_features": "pipeline",
}


def __getattr__(name: str):
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(f"alignrec.features.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'alignrec.features' has no attribute {name!r}")
