"""The final benchmark: every model on one dataset, selected on validation, over seeds.

``run_benchmark`` trains (or reuses) the runs and writes ``report.md``,
``report.json`` and ``plots/`` into ``artifacts/benchmark/<dataset>/``.
"""

from alignrec.benchmark.grids import GRIDS, model_grid
from alignrec.benchmark.results import OURS, BenchmarkResult, ModelRuns
from alignrec.benchmark.runner import run_benchmark

__all__ = ["GRIDS", "OURS", "BenchmarkResult", "ModelRuns", "model_grid", "run_benchmark"]
