"""Recommender models and their explicit registry.

``MODELS`` maps the name used on the command line and in configs to the class.
Every class follows :class:`~alignrec.models.base.RecModel` and declares its typed
config dataclass as ``config_class``.
"""

from __future__ import annotations

from alignrec.models.alignrec import AlignRec, AlignRecConfig
from alignrec.models.base import ModelConfig, RecModel
from alignrec.models.bm3 import BM3, BM3Config
from alignrec.models.bpr import BPR, BPRConfig
from alignrec.models.dualgnn import DualGNN, DualGNNConfig
from alignrec.models.freedom import FREEDOM, FREEDOMConfig
from alignrec.models.grcn import GRCN, GRCNConfig
from alignrec.models.lattice import LATTICE, LATTICEConfig
from alignrec.models.lightgcn import LightGCN, LightGCNConfig
from alignrec.models.mgcn import MGCN, MGCNConfig
from alignrec.models.mmgcn import MMGCN, MMGCNConfig
from alignrec.models.slmrec import SLMRec, SLMRecConfig
from alignrec.models.vbpr import VBPR, VBPRConfig

MODELS: dict[str, type[RecModel]] = {
    "bpr": BPR,
    "lightgcn": LightGCN,
    "alignrec": AlignRec,
    "vbpr": VBPR,
    "mmgcn": MMGCN,
    "grcn": GRCN,
    "dualgnn": DualGNN,
    "lattice": LATTICE,
    "bm3": BM3,
    "slmrec": SLMRec,
    "freedom": FREEDOM,
    "mgcn": MGCN,
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
    "BM3",
    "BM3Config",
    "BPR",
    "MODELS",
    "BPRConfig",
    "DualGNN",
    "DualGNNConfig",
    "FREEDOM",
    "FREEDOMConfig",
    "GRCN",
    "GRCNConfig",
    "LATTICE",
    "LATTICEConfig",
    "LightGCN",
    "LightGCNConfig",
    "MGCN",
    "MGCNConfig",
    "MMGCN",
    "MMGCNConfig",
    "ModelConfig",
    "RecModel",
    "SLMRec",
    "SLMRecConfig",
    "VBPR",
    "VBPRConfig",
    "get_model_class",
]
