"""Resources: the one door to each outside system, swapped per environment."""

from __future__ import annotations

import dagster as dg


class MLflowResource(dg.ConfigurableResource):
    """Where runs are tracked. Locally SQLite under ``mlruns/``; in a deployment set
    ``MLFLOW_TRACKING_URI`` (or ``tracking_uri``) to a tracking server backed by SQL."""

    tracking_uri: str | None = None
    experiment_prefix: str = ""

    def uri(self) -> str:
        from alignrec.tracking import default_tracking_uri

        return self.tracking_uri or default_tracking_uri()

    def loggers(self, experiment: str, run_name: str, tags: dict[str, str] | None = None):
        """A factory of MLflow runs in ``experiment`` (``factory(tag)``, one run per call, as
        ``run_train`` takes), picklable into the processes of a data-parallel run."""
        from alignrec.tracking import MLflowLoggers

        return MLflowLoggers(f"{self.experiment_prefix}{experiment}", run_name, dict(tags or {}),
                             self.uri())

    def logger(self, experiment: str, run_name: str, tags: dict[str, str] | None = None):
        """A new MLflow run wrapped in the library's metric-logger interface."""
        return self.loggers(experiment, run_name, tags)()

    def attach(self, run_id: str):
        """A logger on an existing run (one another step of the run opened)."""
        from alignrec.tracking import MLflowLogger

        return MLflowLogger.attach(run_id, tracking_uri=self.uri())


class ComputeResource(dg.ConfigurableResource):
    """Where training runs: ``device`` is ``cpu``, ``cuda`` or ``auto`` (CUDA when present);
    ``threads`` caps torch's CPU threads (0: torch's default); ``processes`` above 1 trains
    the training assets data-parallel in that many local processes (one per GPU with
    ``cuda``; :mod:`alignrec.training.distributed`). The definitions read them from
    ``ALIGNREC_DEVICE`` / ``ALIGNREC_THREADS`` / ``ALIGNREC_PROCESSES`` so ``make``, ``dvc
    repro`` and the UI share them; on a machine shared with other jobs,
    ``ALIGNREC_THREADS=1`` avoids oversubscription."""

    device: str = "auto"
    threads: int = 0
    processes: int = 1

    def limit_threads(self) -> None:
        """Cap torch's CPU threads at ``threads`` in this process (0 leaves torch's default)."""
        import torch

        if self.threads:
            torch.set_num_threads(self.threads)

    def torch_device(self) -> str:
        """The device to train on, after capping the threads (:meth:`limit_threads`)."""
        from alignrec.env import torch_device

        self.limit_threads()
        return str(torch_device(self.device))  # ConfigError for a device this machine lacks
