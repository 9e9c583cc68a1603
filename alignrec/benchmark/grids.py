"""The hyperparameter grid of each model in the benchmark, in one place.

Each grid is a small slice (2-4 points, sized for a 2-core CPU) of the values the
reference implementations search: MMRec's ``src/configs/model/<MODEL>.yaml`` for
the baselines and the AlignRec release's ``ALIGNREC.yaml``. Keys are config keys
as :func:`alignrec.training.resolve_configs` accepts them (a model's config
dataclass field, or a :class:`~alignrec.training.TrainConfig` field). A model
without an entry trains once per seed with its defaults. The winner is chosen on
validation recall@20, on seed 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from alignrec.errors import ConfigError

# Config keys every benchmark run starts from (``--set`` / ``overrides`` replace them).
# MMRec's ``stopping_step``: validation Recall@20 is checked every epoch, and a run stops
# 20 epochs after its best one (the trainer's own default, 30, costs ~1.5x the CPU time).
PROTOCOL: dict[str, Any] = {"patience": 20}

GRIDS: dict[str, dict[str, list[Any]]] = {
    # MMRec BPR.yaml: reg_weight in {2.0, 1.0, 1e-1, 1e-2, 1e-3, 1e-4, 1e-5}
    "bpr": {"reg_weight": [1e-1, 1e-3, 1e-5]},
    # MMRec LightGCN: n_layers in {1, 2, 3, 4} x reg_weight in {1e-2, ..., 1e-6}
    "lightgcn": {"n_layers": [2, 3], "reg_weight": [1e-3, 1e-4]},
    # AlignRec release: cl_loss (our alpha) in {1e-4, 1e-3, 5e-3, 1e-2, 1e-1}
    "alignrec": {"alpha": [1e-3, 1e-2, 1e-1]},
    # MMRec VBPR.yaml: reg_weight in {2.0, 1.0, 1e-1, 1e-2, 1e-3, 1e-4, 1e-5}
    "vbpr": {"reg_weight": [1e-1, 1e-3, 1e-5]},
    # MMRec MMGCN.yaml: reg_weight in {0, 1e-5, ..., 1e-1} x learning_rate in {1e-4, ..., 1e-2}
    # (the slowest baseline: two points)
    "mmgcn": {"reg_weight": [1e-5, 1e-3]},
    # MMRec GRCN.yaml: reg_weight in {1e-1, ..., 1e-5} x learning_rate in {1, ..., 1e-4}
    "grcn": {"reg_weight": [1e-2, 1e-4]},
    # MMRec DualGNN.yaml: reg_weight in {1e-1, ..., 1e-5} x learning_rate in {1e-1, ..., 1e-5}
    "dualgnn": {"reg_weight": [1e-2, 1e-4]},
    # MMRec LATTICE.yaml: reg_weight in {0, 1e-5, 1e-4, 1e-3} x learning_rate in {1e-4, ..., 5e-3}
    "lattice": {"reg_weight": [0.0, 1e-4]},
    # MMRec BM3.yaml: n_layers in {1, 2} x dropout in {0.3, 0.5} x reg_weight in {0.1, 0.01}
    "bm3": {"dropout": [0.3, 0.5], "reg_weight": [1e-1, 1e-2]},
    # MMRec SLMRec.yaml: ssl_alpha in {0.01, 0.05, 0.1, 0.5, 1.0} x ssl_temp x learning_rate x reg
    "slmrec": {"ssl_alpha": [0.01, 0.1, 0.5]},
    # MMRec FREEDOM.yaml: dropout in {0.8, 0.9} x reg_weight in {0, 1e-5, 1e-4, 1e-3}
    "freedom": {"dropout": [0.8, 0.9], "reg_weight": [0.0, 1e-4]},
    # MMRec MGCN.yaml: cl_loss (our cl_weight) in {1e-3, 1e-2, 1e-1}
    "mgcn": {"cl_weight": [1e-3, 1e-2, 1e-1]},
}


# The quick profile's point for each model: one documented point of its grid, trained once,
# with no search. The source of each point is written beside it.
PINS: dict[str, dict[str, Any]] = {
    # the winner of BPR's grid on amazon-sports
    "bpr": {"reg_weight": 1e-1},
    # the winner of LightGCN's grid on amazon-baby
    "lightgcn": {"n_layers": 3, "reg_weight": 1e-3},
    # the AlignRec release's cl_loss for the Amazon sets
    "alignrec": {"alpha": 1e-2},
    # the winner of VBPR's grid on amazon-sports
    "vbpr": {"reg_weight": 1e-1},
    # the lower point of the grid above (MMRec's default reg_weight is 0 or 1e-5 per dataset)
    "mmgcn": {"reg_weight": 1e-5},
    # the lower point of the grid above
    "grcn": {"reg_weight": 1e-4},
    # the point pinned on amazon-sports (README, Results on the Amazon sets)
    "dualgnn": {"reg_weight": 1e-4},
    # MMRec LATTICE.yaml's first reg_weight
    "lattice": {"reg_weight": 0.0},
    # the point pinned on amazon-sports
    "bm3": {"dropout": 0.5, "reg_weight": 1e-1},
    # the point pinned on amazon-sports
    "slmrec": {"ssl_alpha": 0.1},
    # the point pinned on amazon-sports (FREEDOM's published setting for Baby and Sports)
    "freedom": {"dropout": 0.8, "reg_weight": 1e-4},
    # MGCN's published cl_loss
    "mgcn": {"cl_weight": 1e-2},
}


@dataclass(frozen=True)
class Profile:
    """A benchmark protocol: seeds per model and the grid each model searches on seed 0.

    Attributes:
        name: ``quick`` or ``full``; also the results folder's name.
        seeds: runs per model.
        grids: model -> grid (one value per key: pinned, no search).
        description: one line for the report.
    """

    name: str
    seeds: int
    grids: dict[str, dict[str, list[Any]]]
    description: str


PROFILES: dict[str, Profile] = {
    "quick": Profile(
        "quick",
        1,
        {m: {k: [v] for k, v in point.items()} for m, point in PINS.items()},
        "one seed, each model at its documented point (alignrec/benchmark/grids.py PINS), no search",
    ),
    "full": Profile(
        "full",
        3,
        GRIDS,
        "the paper protocol: each model's grid searched on seed 0 (validation Recall@20), "
        "the winner retrained on seeds 1 and 2",
    ),
}
DEFAULT_PROFILE_ENV = "ALIGNREC_BENCHMARK"  # what `BENCHMARK=full make pipeline` sets


def get_profile(name: str | None = None) -> Profile:
    """The profile ``name``; None: ``$ALIGNREC_BENCHMARK``, else ``quick``."""
    import os

    name = name or os.environ.get(DEFAULT_PROFILE_ENV) or "quick"
    if name not in PROFILES:
        raise ConfigError(
            f"unknown benchmark profile {name!r} (from {DEFAULT_PROFILE_ENV} or --profile); "
            f"expected one of {', '.join(PROFILES)}"
        )
    return PROFILES[name]


def model_grid(
    model: str, grids: dict[str, dict[str, list[Any]]] | None = None
) -> dict[str, list[Any]]:
    """The grid searched for ``model`` (``{}``: train with the defaults)."""
    return dict((GRIDS if grids is None else grids).get(model.lower(), {}))


def with_grid_changes(
    changes: dict[str, dict[str, list[Any]]] | None,
    grids: dict[str, dict[str, list[Any]]] | None = None,
) -> dict[str, dict[str, list[Any]]]:
    """``grids`` (default :data:`GRIDS`) with ``changes[model][key]`` replacing that key's
    values in that model's grid (a key the grid lacks is added).

    Pinning each key of a model to one value trains that model once per seed, with no
    search: what a dataset too large for the full grid on one machine needs. Model names
    are checked here; keys and values when the benchmark resolves each grid point.
    """
    from alignrec.models import get_model_class

    merged = {m: dict(g) for m, g in (GRIDS if grids is None else grids).items()}
    for model, keys in (changes or {}).items():
        get_model_class(model)  # ConfigError naming the registered models
        for key, values in keys.items():
            if not isinstance(values, list | tuple) or not values:
                raise ConfigError(
                    f"grid {model}.{key}: expected a non-empty list of values, got {values!r}"
                )
            merged.setdefault(model.lower(), {})[key] = list(values)
    return merged


def parse_grid_changes(items: list[str] | None) -> dict[str, dict[str, list[str]]]:
    """``["lightgcn.n_layers=2,3"]`` -> ``{"lightgcn": {"n_layers": ["2", "3"]}}``."""
    from alignrec.training.config import parse_grid

    out: dict[str, dict[str, list[str]]] = {}
    for item in items or []:
        ((target, values),) = parse_grid([item]).items()
        model, dot, key = target.partition(".")
        if not dot or not model or not key:
            raise ConfigError(f"expected MODEL.KEY=V1,V2 (e.g. lightgcn.n_layers=2,3), got {item!r}")
        out.setdefault(model.lower(), {})[key] = values
    return out
