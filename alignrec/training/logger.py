"""Where the trainer reports params and metrics: a tiny protocol and two implementations.

The MLflow implementation lives in :mod:`alignrec.tracking` so that the library
does not import mlflow unless it is asked to.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

log = logging.getLogger("alignrec.training")


@runtime_checkable
class MetricLogger(Protocol):
    """What the trainer needs from an experiment tracker.

    Metric keys carry the split: ``train/loss``, ``valid/recall@20``, ``test/ndcg@10``.
    """

    def log_params(self, params: dict[str, Any]) -> None:
        """Record the resolved configuration of a run (flat dict)."""

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        """Record metric values at ``step`` (the epoch, 0-based)."""

    def log_artifact(self, path: str | Path) -> None:
        """Attach a file to the run."""


class NullLogger:
    """Drops everything; the trainer's default."""

    def log_params(self, params: dict[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        pass

    def log_artifact(self, path: str | Path) -> None:
        pass


class ConsoleLogger:
    """Writes params and selected metrics through :mod:`logging`."""

    def __init__(
        self,
        keys: tuple[str, ...] = (
            "train/loss",
            "valid/recall@20",
            "valid/ndcg@20",
            "time/epoch_seconds",
            "time/eval_seconds",
        ),
    ) -> None:
        self.keys = keys

    def log_params(self, params: dict[str, Any]) -> None:
        log.info("params: %s", ", ".join(f"{k}={v}" for k, v in sorted(params.items())))

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        shown = {k: v for k, v in metrics.items() if k in self.keys or k.startswith("test/")}
        if shown:
            log.info(
                "step %s: %s", step, ", ".join(f"{k}={v:.5g}" for k, v in sorted(shown.items()))
            )

    def log_artifact(self, path: str | Path) -> None:
        log.info("artifact: %s", path)


class MemoryLogger:
    """Keeps everything in lists; handy in tests and notebooks."""

    def __init__(self) -> None:
        self.params: dict[str, Any] = {}
        self.metrics: list[tuple[int | None, dict[str, float]]] = []
        self.artifacts: list[str] = []

    def log_params(self, params: dict[str, Any]) -> None:
        self.params.update(params)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.metrics.append((step, dict(metrics)))

    def log_artifact(self, path: str | Path) -> None:
        self.artifacts.append(str(path))
