"""Recommender models and their explicit registry.

``MODELS`` maps the name used on the command line and in configs to the class.
Every class follows :class:`~alignrec.models.base.RecModel` and declares its typed
config dataclass as ``config_class``.
"""

from __future__ import annotations

from alignrec.models.alignrec import AlignRec, AlignRecConfig
from alignrec.models.base import ModelConfig, RecModel
from alignrec.models.bpr import BPR, BPRConfig
from alignrec.models.lightgcn import LightGCN, LightGCNConfig

MODELS: dict[str, type[RecModel]] = {
    "bpr": BPR,
    "lightgcn": LightGCN,
    "alignrec": AlignRec,
}


def get_model_class(name: str) -> type[RecModel]:
    """The registered class of ``name`` (case-insensitive), or a ConfigError listing the known ones."""
    from alignrec.errors import ConfigError

    try:
        return MODELS[name.lower()]
    except KeyError:
        raise ConfigError(
            f"unknown model {name!r}; registered: {', '.join(sorted(MODELS))}"
        ) from None


__all__ = [
    "AlignRec",
    "AlignRecConfig",
    "BPR",
    "MODELS",
    "BPRConfig",
    "LightGCN",
    "LightGCNConfig",
    "ModelConfig",
    "RecModel",
    "get_model_class",
]
