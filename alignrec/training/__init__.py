"""The shared trainer, its configs, negative sampler, metric logger interface and grid search."""

from alignrec.training.config import (
    TrainConfig,
    config_to_dict,
    parse_assignments,
    parse_grid,
    resolve_configs,
)
from alignrec.training.grid import GridResult, grid_points, grid_search
from alignrec.training.logger import ConsoleLogger, MemoryLogger, MetricLogger, NullLogger
from alignrec.training.sampler import NegativeSampler
from alignrec.training.trainer import (
    TrainingError,
    TrainResult,
    evaluate_model,
    evaluate_test_once,
    set_seed,
    train,
)

__all__ = [
    "ConsoleLogger",
    "GridResult",
    "MemoryLogger",
    "MetricLogger",
    "NegativeSampler",
    "NullLogger",
    "TrainConfig",
    "TrainResult",
    "TrainingError",
    "config_to_dict",
    "evaluate_model",
    "evaluate_test_once",
    "grid_points",
    "grid_search",
    "parse_assignments",
    "parse_grid",
    "resolve_configs",
    "set_seed",
    "train",
]
