"""MLflow runs of a benchmark: one per training run, nested under a summary run.

Everything goes to the experiment ``benchmark-<dataset>``. The summary run is
opened first (so that each training run can name it as its parent) and, once the
benchmark is done, receives the report's headline figures as metrics and
``report.md``, ``report.json`` and ``plots/`` as artifacts. Runs reused from an
earlier benchmark are not logged again; the summary covers them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from alignrec.benchmark.results import BenchmarkResult

SUMMARY_TAGS = {"kind": "summary"}  # marks a benchmark's summary run

# ``new_logger(experiment, run_name, tags)`` -> an MLflowLogger (or anything with its methods).
NewLogger = Callable[[str, str, dict[str, str]], Any]


def mlflow_logger(experiment: str, run_name: str, tags: dict[str, str]):
    """The default :data:`NewLogger`: a run in the project's MLflow store."""
    from alignrec.tracking import MLflowLogger

    return MLflowLogger(experiment, run_name=run_name, tags=tags)


class BenchmarkTracking:
    """Opens the summary run; hands out nested training-run loggers; logs the report.

    Args:
        dataset: the benchmarked dataset (names the experiment).
        new_logger: makes one MLflow run (the Dagster ``mlflow`` resource's ``logger``).
        tags: added to every run (e.g. the Dagster run id).
        summary: the summary run's logger when it is already open (a worker process
            attached to the run another step opened); by default a new summary run.
    """

    def __init__(
        self,
        dataset: str,
        new_logger: NewLogger = mlflow_logger,
        tags: dict[str, str] | None = None,
        summary: Any = None,
    ) -> None:
        self.experiment = f"benchmark-{dataset}"
        self.new_logger = new_logger
        self.tags = {"dataset": dataset, **(tags or {})}
        if summary is None:
            summary = new_logger(self.experiment, "summary", {**self.tags, **SUMMARY_TAGS})
        self.summary = summary

    @property
    def run_id(self) -> str:
        """The summary run's id."""
        return self.summary.run_id

    def logger_factory(self, model: str, seed: int, tag: str | None = None):
        """A training run's logger (see :data:`alignrec.benchmark.runner.LoggerFactory`)."""
        name = f"{model}-s{seed}" + (f"-{tag}" if tag else "")
        return self.new_logger(
            self.experiment,
            name,
            {**self.tags, "model": model, "seed": str(seed), "mlflow.parentRunId": self.run_id},
        )

    def log_report(self, result: BenchmarkResult) -> None:
        """Headline figures as metrics, the report files as artifacts; closes the summary run."""
        report = result.report
        self.summary.log_params(
            {
                "models": ",".join(result.models),
                "seeds": result.seeds,
                "alignrec_features": result.features,
                "skipped": ",".join(result.skipped) or "none",
            }
        )
        self.summary.log_metrics(headline_metrics(report))
        self.summary.log_artifact(result.report_md)
        self.summary.log_artifact(result.report_json)
        if result.plots.is_dir():
            self.summary.log_artifacts(result.plots, "plots")
        self.summary.close()

    def fail(self) -> None:
        """Close the summary run as failed (the benchmark raised)."""
        self.summary.close("FAILED")


def headline_metrics(report: dict[str, Any]) -> dict[str, float]:
    """``<model>/<metric>_mean|_std``, p-values and AlignRec's gains, flat and numeric."""
    out: dict[str, float] = {}
    for model, summary in report["models"].items():
        for k, v in summary.items():
            if isinstance(v, int | float) and not k.endswith("_per_seed"):
                out[f"{model}/{k}"] = float(v)
    for k, v in (report.get("gain") or {}).items():
        if v is not None:
            out[f"gain/{k}"] = float(v)
    out["wall_seconds"] = float(report["wall_seconds"])
    return out
