"""What a benchmark produced: each model's runs and the benchmark's result.

Shared by :mod:`alignrec.benchmark.runner` (which fills them) and
:mod:`alignrec.benchmark.report` (which reads them), so neither imports the other's module
for its types.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OURS = "alignrec"  # the model compared with every baseline
NOT_TRAINED = "not trained yet"  # how a report's skipped list begins a model with runs to train


@dataclass
class ModelRuns:
    """One model's runs, seed order.

    Attributes:
        model: registered name.
        records: the ``metrics.json`` record of each seed.
        folders: each seed's run folder.
        reused: whether each run came from an earlier benchmark.
        stale: whether each reused run was made by other code than this checkout's (only
            ``cached_only`` reports such runs; a training call retrains them).
        winner: the grid point chosen on validation (``{}`` without a grid).
        grid: the grid searched (``{}``: defaults only).
    """

    model: str
    records: list[dict[str, Any]] = field(default_factory=list)
    folders: list[Path] = field(default_factory=list)
    reused: list[bool] = field(default_factory=list)
    stale: list[bool] = field(default_factory=list)
    winner: dict[str, Any] = field(default_factory=dict)
    grid: dict[str, list[Any]] = field(default_factory=dict)


@dataclass
class BenchmarkResult:
    """What :func:`run_benchmark` ran, skipped and reported.

    Attributes:
        dataset: the dataset's name.
        out: the benchmark folder (``report.md``, ``report.json``, ``plots/``, ``runs/``).
        seeds: seeds per model (``0..seeds-1``).
        models: the models that ran, in the order asked.
        skipped: model -> why it did not run.
        features: the feature set AlignRec read (None when it did not run).
        features_choice: how those features were chosen on validation (the stage-1 choice
            record read beside them when the benchmark ran), None when there is none.
        report: the contents of ``report.json``.
        wall_seconds: wall time of this call (0 when ``rebuilt``).
        rebuilt: made from the stored runs alone, training nothing
            (:func:`alignrec.benchmark.report.rebuild`, or ``run_benchmark(cached_only=True)``):
            the report states that instead of a wall time.
        settings: the config keys set for every run (the protocol and the overrides).
        profile: the benchmark profile whose grids the runs used (``quick``, ``full``; the
            seeds may differ from the profile's), None for custom grids.
    """

    dataset: str
    out: Path
    seeds: int
    models: dict[str, ModelRuns]
    skipped: dict[str, str]
    features: str | None = None
    features_choice: dict[str, Any] | None = None
    report: dict[str, Any] = field(default_factory=dict)
    wall_seconds: float = 0.0
    settings: dict[str, Any] = field(default_factory=dict)
    profile: str | None = None
    rebuilt: bool = False

    @property
    def report_md(self) -> Path:
        return self.out / "report.md"

    @property
    def report_json(self) -> Path:
        return self.out / "report.json"

    @property
    def plots(self) -> Path:
        return self.out / "plots"

    @property
    def table_md(self) -> Path:
        """The results table alone, with how it was made: what the README embeds."""
        return self.out / "table.md"

    @property
    def manifest(self) -> Path:
        """What was asked (models, seeds, grids, settings, features): enough, with the run
        folders, to rebuild the report without the data (``alignrec benchmark --cached-only``)."""
        return self.out / MANIFEST


MANIFEST = "manifest.json"
STAMP = "benchmark.json"  # a finished run's cache key, code digest and commit, written last


def read_stamp(folder: Path) -> dict[str, Any] | None:
    """A run folder's stamp, None when the run has not finished."""
    import json

    from alignrec.runs import has_run_files

    stamp = Path(folder) / STAMP
    if not stamp.is_file() or not has_run_files(folder):
        return None
    return json.loads(stamp.read_text())


__all__ = ["MANIFEST", "OURS", "STAMP", "BenchmarkResult", "ModelRuns", "read_stamp"]
