"""Typed training config and the parsing of ``key=value`` overrides.

:class:`TrainConfig` is the single source of truth for trainer defaults. A model's
own hyperparameters live in its config dataclass (``MODELS[name].config_class``).
Overrides are flat ``{key: value}`` maps; a key is looked up in the trainer's
fields, then in the model's; ``train.<key>`` or ``model.<key>`` force the side.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, fields
from typing import Any

from alignrec.errors import ConfigError
from alignrec.models import ModelConfig, get_model_class


@dataclass
class TrainConfig:
    """How the shared trainer runs (defaults follow MMRec and alignrec.md §3)."""

    epochs: int = 1000  # maximum training epochs
    batch_size: int = 2048  # training pairs per optimiser step
    learning_rate: float = 1e-3  # Adam's initial learning rate
    lr_decay_factor: float = 1.0  # lr(epoch) = learning_rate * factor ** (epoch / lr_decay_step)
    lr_decay_step: int = 50  # see lr_decay_factor; MMRec's learning_rate_scheduler [factor, step]
    weight_decay: float = 0.0  # Adam weight decay (MMRec default 0)
    patience: int = 30  # stop after this many evaluations without a better valid metric
    valid_metric: str = "recall@20"  # early-stopping and model-selection metric (valid split)
    eval_batch_size: int = (
        1024  # users scored at once during evaluation (results do not depend on it)
    )
    ks: tuple[int, ...] = (5, 10, 20, 50)  # metric cut-offs
    quiet: bool = False  # hide the progress bar
    max_seconds: float = 0.0  # wall-time budget: stop after the epoch that exceeds it (0: none)
    # with a checkpoint file (alignrec train, the benchmark): write one at the end of the first
    # epoch this many seconds after the last (0: every epoch)
    checkpoint_every_s: float = 300.0

    def __post_init__(self) -> None:
        checks = {
            "epochs": self.epochs >= 1,
            "batch_size": self.batch_size >= 1,
            "learning_rate": self.learning_rate > 0,
            "lr_decay_factor": self.lr_decay_factor > 0,
            "lr_decay_step": self.lr_decay_step >= 1,
            "weight_decay": self.weight_decay >= 0,
            "patience": self.patience >= 1,
            "max_seconds": self.max_seconds >= 0,
            "checkpoint_every_s": self.checkpoint_every_s >= 0,
            "eval_batch_size": self.eval_batch_size >= 1,
            "ks": len(self.ks) > 0 and all(int(k) >= 1 for k in self.ks),
        }
        for key, ok in checks.items():
            if not ok:
                raise ConfigError(f"train config: bad value for {key!r}: {getattr(self, key)!r}")
        self.ks = tuple(int(k) for k in self.ks)
        name, _, k = self.valid_metric.partition("@")
        from alignrec.evaluation.metrics import METRICS

        if name not in METRICS or not k.isdigit() or int(k) not in self.ks:
            raise ConfigError(
                f"train config: bad value for 'valid_metric': {self.valid_metric!r} "
                f"(expected one of {sorted(METRICS)} @ a K in ks={self.ks})"
            )


def config_to_dict(config: Any) -> dict[str, Any]:
    """A config dataclass as a plain dict (tuples become lists, for JSON and MLflow)."""
    return {
        k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()
    }


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in fields(cls)}


def coerce(key: str, value: Any, annotation: Any) -> Any:
    """Convert ``value`` (often a string from the CLI) to the field's annotated type."""
    origin = typing.get_origin(annotation)
    try:
        if origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
                return None
            return coerce(key, value, args[0])
        if origin is tuple:
            item_t = typing.get_args(annotation)[0]
            items = value.split(",") if isinstance(value, str) else list(value)
            return tuple(coerce(key, v.strip() if isinstance(v, str) else v, item_t) for v in items)
        if annotation is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on"):
                return True
            if isinstance(value, str) and value.lower() in ("false", "0", "no", "off"):
                return False
            raise ValueError("expected true/false")
        if annotation is int:
            if isinstance(value, bool):
                raise ValueError("expected an integer")
            if isinstance(value, float):
                if not value.is_integer():
                    raise ValueError("expected an integer")
                return int(value)
            return int(value)
        if annotation is float:
            if isinstance(value, bool):
                raise ValueError("expected a number")
            return float(value)
        if annotation is str:
            return str(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"bad value for {key!r}: {value!r} ({getattr(annotation, '__name__', annotation)} expected; {exc})"
        ) from None
    return value


def parse_assignments(items: list[str] | None) -> dict[str, str]:
    """``["lr=1e-3", "model.reg_weight=1e-4"]`` -> ``{"lr": "1e-3", ...}``."""
    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"expected key=value, got {item!r}")
        out[key.strip()] = value.strip()
    return out


def parse_grid(items: list[str] | None) -> dict[str, list[str]]:
    """``["learning_rate=1e-3,5e-4"]`` -> ``{"learning_rate": ["1e-3", "5e-4"]}``."""
    out: dict[str, list[str]] = {}
    for key, value in parse_assignments(items).items():
        values = [v.strip() for v in value.split(",") if v.strip()]
        if not values:
            raise ConfigError(f"grid key {key!r} has no values")
        out[key] = values
    return out


def resolve_configs(
    model_name: str,
    overrides: dict[str, Any] | None = None,
    train_config: TrainConfig | None = None,
    model_config: ModelConfig | None = None,
) -> tuple[TrainConfig, ModelConfig]:
    """Apply flat overrides to the trainer's and the model's default configs.

    Unknown keys raise a :class:`ConfigError` naming the key and listing valid ones;
    values are converted to the declared field types.
    """
    model_cls = get_model_class(model_name)
    train_types = _field_types(TrainConfig)
    model_types = _field_types(model_cls.config_class)
    train_over: dict[str, Any] = {}
    model_over: dict[str, Any] = {}
    for raw_key, value in (overrides or {}).items():
        scope, dot, key = raw_key.rpartition(".")
        if not dot:
            scope = ""
        if scope not in ("", "train", "model"):
            raise ConfigError(
                f"unknown config key {raw_key!r}: prefix must be 'train.' or 'model.'"
            )
        if scope in ("", "train") and key in train_types:
            train_over[key] = coerce(raw_key, value, train_types[key])
        elif scope in ("", "model") and key in model_types:
            model_over[key] = coerce(raw_key, value, model_types[key])
        else:
            raise ConfigError(
                f"unknown config key {raw_key!r} for model {model_name!r}; "
                f"train keys: {', '.join(sorted(train_types))}; "
                f"model keys: {', '.join(sorted(model_types))}"
            )
    base_train = (
        train_config if train_config is not None else TrainConfig(**model_cls.train_defaults)
    )
    base_model = model_config if model_config is not None else model_cls.config_class()
    if not isinstance(base_model, model_cls.config_class):
        raise ConfigError(
            f"model {model_name!r} needs a {model_cls.config_class.__name__}, got {type(base_model).__name__}"
        )
    try:
        model_cfg = dataclasses.replace(base_model, **model_over)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"model config: {exc}") from None
    return dataclasses.replace(base_train, **train_over), model_cfg
