"""Grid search that selects on the validation split only.

Every grid point is trained with test scoring switched off; the winner is the
point with the best validation metric at its best epoch, and only the winner is
then scored on the test split — once.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from alignrec.data.dataset import Dataset
from alignrec.errors import ConfigError
from alignrec.training.checkpoint import Checkpointing
from alignrec.training.config import resolve_configs
from alignrec.training.logger import MetricLogger
from alignrec.training.trainer import TrainingError, TrainResult, evaluate_test_once, train

log = logging.getLogger("alignrec.training")


@dataclass
class GridResult:
    """All grid points with their validation scores, and the winner's full result."""

    points: list[dict[str, Any]]  # overrides of each point
    valid_scores: list[float | None]  # selection metric per point (None: training failed)
    errors: list[str | None]
    winner_index: int
    best: TrainResult  # the winner, its test split scored once
    metric: str
    all_valid: list[dict[str, float] | None] = field(default_factory=list)
    interrupted: bool = False  # a signal stopped a point; the later points did not run
    seconds: list[float | None] = field(default_factory=list)  # each point's train_seconds
    stop_signal: int | None = None  # the signal that stopped the search

    def table(self) -> list[dict[str, Any]]:
        """One JSON-able row per point: overrides, valid metrics, error, whether it won.

        Points a signal kept from running have no scores and the error ``not run``."""
        rows = []
        for i, p in enumerate(self.points):
            if i >= len(self.valid_scores):
                rows.append(
                    {
                        "point": p,
                        f"valid/{self.metric}": None,
                        "valid": None,
                        "error": "not run (the search was stopped by a signal)",
                        "winner": False,
                        "train_seconds": None,
                    }
                )
                continue
            s, e = self.valid_scores[i], self.errors[i]
            rows.append(
                {
                    "point": p,
                    f"valid/{self.metric}": s,
                    "valid": self.all_valid[i] if self.all_valid else None,
                    "error": e,
                    "winner": i == self.winner_index,
                    "train_seconds": self.seconds[i] if self.seconds else None,
                }
            )
        return rows


def grid_points(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Cartesian product of the grid's values, in a stable order."""
    keys = list(grid)
    return [
        dict(zip(keys, combo, strict=True)) for combo in itertools.product(*(grid[k] for k in keys))
    ]


def grid_search(
    model_name: str,
    dataset: Dataset,
    grid: dict[str, list[Any]],
    base: dict[str, Any] | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    logger_factory: Any = None,
    evaluate_test: bool = True,
    checkpoints: Callable[[int], Checkpointing | None] | None = None,
) -> GridResult:
    """Train every point of ``grid`` (over ``base`` overrides) and keep the best on validation.

    Args:
        grid: key -> candidate values (config keys as in :func:`resolve_configs`).
        base: overrides shared by all points.
        logger_factory: ``f(index, point) -> MetricLogger | None`` for per-point tracking.
        evaluate_test: score the winner on test (once). Off, the test split is never read.
        checkpoints: ``f(index) -> Checkpointing`` for each point's checkpoint: a search
            stopped midway resumes its current point, and a point that had finished is not
            trained again (its finished checkpoint holds its best epoch).
    """
    if not grid:
        raise ConfigError("empty grid")
    base = dict(base or {})
    overlap = set(base) & set(grid)
    if overlap:
        raise ConfigError(f"keys both set and gridded: {sorted(overlap)}")
    points = grid_points(grid)
    for p in points:  # fail fast on unknown keys / bad values before any training
        resolve_configs(model_name, {**base, **p})
    scores: list[float | None] = []
    errors: list[str | None] = []
    valids: list[dict[str, float] | None] = []
    seconds: list[float | None] = []
    best: TrainResult | None = None
    winner = -1
    interrupted, stop_signal = False, None
    metric = resolve_configs(model_name, base)[0].valid_metric
    for i, point in enumerate(points):
        logger: MetricLogger | None = logger_factory(i, point) if logger_factory else None
        try:
            res = train(
                model_name,
                dataset,
                {**base, **point},
                logger,
                seed,
                device,
                evaluate_test=False,
                checkpoint=checkpoints(i) if checkpoints is not None else None,
            )
        except TrainingError as exc:
            log.warning("grid point %s failed: %s", point, exc)
            scores.append(None)
            errors.append(str(exc))
            valids.append(None)
            seconds.append(None)
            continue
        score = res.valid.metrics[metric]
        scores.append(score)
        errors.append(None)
        valids.append(dict(res.valid.metrics))
        seconds.append(res.train_seconds)
        log.info("grid point %d/%d %s: valid/%s=%.5f", i + 1, len(points), point, metric, score)
        if best is None or score > best.valid.metrics[metric]:
            if best is not None:
                best.model = None  # type: ignore[assignment]  # free the loser's weights
            best, winner = res, i
        else:
            res.model = None  # type: ignore[assignment]
        if res.stop_reason == "signal":  # SIGINT/SIGTERM: stop the search, keep what ran
            log.warning("grid search stopped by a signal after point %d/%d", i + 1, len(points))
            interrupted, stop_signal = True, res.stop_signal
            break
    if best is None:
        raise TrainingError(f"every grid point failed: {errors}")
    if evaluate_test:
        evaluate_test_once(best, dataset, device)
    return GridResult(
        points, scores, errors, winner, best, metric, valids, interrupted, seconds, stop_signal
    )
