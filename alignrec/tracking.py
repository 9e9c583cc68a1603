"""MLflow implementation of the trainer's :class:`~alignrec.training.logger.MetricLogger`.

mlflow is imported lazily, inside :class:`MLflowLogger`, so that the library stays
importable (and fast to import) without it. The store is SQLite at
``<project>/mlruns/mlflow.db`` with artifacts under ``<project>/mlruns/artifacts``;
``MLFLOW_TRACKING_URI`` overrides the default.

MLflow refuses ``@`` in metric names, so a key such as ``valid/recall@20`` is
stored as ``valid/recall_at_20`` (see :func:`mlflow_key`).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alignrec.paths import PROJECT_ROOT

MLRUNS_DIR = PROJECT_ROOT / "mlruns"


def default_tracking_uri(root: str | Path | None = None) -> str:
    """``sqlite:///<root>/mlflow.db`` (root defaults to the project's ``mlruns/``)."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env and root is None:
        return env
    base = Path(root) if root is not None else MLRUNS_DIR
    base.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{base.resolve() / 'mlflow.db'}"


def default_artifact_root(root: str | Path | None = None) -> Path:
    base = Path(root) if root is not None else MLRUNS_DIR
    return (base / "artifacts").resolve()


def _artifact_root_beside(tracking_uri: str) -> Path | None:
    """``artifacts/`` beside a SQLite store's file (``mlruns/artifacts`` for the default
    store), so that a store elsewhere keeps its artifacts with it; ``None`` for a tracking
    server (``http(s)://``), which chooses where its experiments' artifacts go (its
    ``--artifacts-destination``, uploaded through it): a folder on this machine would be
    out of reach of every other machine; else the default."""
    prefix = "sqlite:///"
    if tracking_uri.startswith(prefix):
        return (Path(tracking_uri[len(prefix) :]).parent / "artifacts").resolve()
    if tracking_uri.split("://", 1)[0].lower() in ("http", "https"):
        return None
    return default_artifact_root()


class MLflowLogger:
    """Logs one run to MLflow through an explicit client (no global active run).

    Args:
        experiment: experiment name; created with an explicit ``artifact_location``
            under the artifact root when missing.
        run_name: the run's display name.
        tags: extra run tags.
        tracking_uri: defaults to :func:`default_tracking_uri`.
        artifact_root: folder holding every experiment's artifacts (default: ``artifacts/``
            beside a SQLite store, else :func:`default_artifact_root`).
    """

    def __init__(
        self,
        experiment: str,
        run_name: str | None = None,
        tags: dict[str, str] | None = None,
        tracking_uri: str | None = None,
        artifact_root: str | Path | None = None,
    ) -> None:
        self._connect(tracking_uri)
        exp = self.client.get_experiment_by_name(experiment)
        if exp is None:
            root = (
                Path(artifact_root)
                if artifact_root is not None
                else _artifact_root_beside(self.tracking_uri)
            )
            location = None
            if root is not None:
                location = (root / experiment).resolve()
                location.mkdir(parents=True, exist_ok=True)
            self.experiment_id = self._create_experiment(
                experiment, location.as_uri() if location is not None else None
            )
        else:
            self.experiment_id = exp.experiment_id
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags=tags or {})
        self.run_id = run.info.run_id
        self._closed = False

    def _connect(self, tracking_uri: str | None) -> None:
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        from mlflow.tracking import MlflowClient

        self.tracking_uri = tracking_uri or default_tracking_uri()
        self.client = MlflowClient(tracking_uri=self.tracking_uri)

    def _create_experiment(self, name: str, location: str | None) -> str:
        """Create ``name``; when another process (a parallel step, a Celery worker) created
        it first, use theirs."""
        from mlflow.exceptions import MlflowException

        try:
            return self.client.create_experiment(name, artifact_location=location)
        except MlflowException as exc:
            if exc.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
                raise
            exp = self.client.get_experiment_by_name(name)
            if exp is None:
                raise
            return exp.experiment_id

    @classmethod
    def attach(cls, run_id: str, tracking_uri: str | None = None) -> MLflowLogger:
        """A logger on an existing run, e.g. one another process opened."""
        self = cls.__new__(cls)
        self._connect(tracking_uri)
        self.run_id = run_id
        self.experiment_id = self.client.get_run(run_id).info.experiment_id
        self._closed = False
        return self

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        items = [
            Metric(mlflow_key(k), float(v), ts, int(step or 0))
            for k, v in metrics.items()
            if v is not None and math.isfinite(float(v))
        ]
        for i in range(0, len(items), 1000):
            self.client.log_batch(self.run_id, metrics=items[i : i + 1000])

    def set_tags(self, tags: dict[str, Any]) -> None:
        """Set run tags (values as strings)."""
        for k, v in tags.items():
            self.client.set_tag(self.run_id, k, str(v))

    def log_artifact(self, path: str | Path) -> None:
        self.client.log_artifact(self.run_id, str(path))

    def log_artifacts(self, folder: str | Path, artifact_path: str | None = None) -> None:
        """Attach every file of ``folder`` (under ``artifact_path`` in the run)."""
        self.client.log_artifacts(self.run_id, str(folder), artifact_path)

    def close(self, status: str = "FINISHED") -> None:
        """End the run (idempotent)."""
        if not self._closed:
            self.client.set_terminated(self.run_id, status=status)
            self._closed = True

    def __enter__(self) -> MLflowLogger:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close("FAILED" if exc_type else "FINISHED")


@dataclass(frozen=True)
class MLflowLoggers:
    """A logger factory (``factory(tag)``, what ``run_train`` takes) made of plain values, so
    that it crosses into the processes of a data-parallel run: one MLflow run per call, named
    ``run_name`` or ``run_name-tag`` (a grid point)."""

    experiment: str
    run_name: str
    tags: dict[str, str] = field(default_factory=dict)
    tracking_uri: str | None = None

    def __call__(self, tag: str | None = None) -> MLflowLogger:
        name = self.run_name + (f"-{tag}" if tag else "")
        return MLflowLogger(self.experiment, name, dict(self.tags), self.tracking_uri)


def mlflow_key(key: str) -> str:
    """The MLflow name of a metric key: ``valid/recall@20`` -> ``valid/recall_at_20``."""
    return key.replace("@", "_at_")
