"""One model, several feature sets: which features make stage 2 better on test?

:func:`compare_features` trains the same model (AlignRec by default) on each feature set
over the same seeds, reusing the benchmark's run cache (one benchmark folder per feature
set), then compares every set with the first one: test metrics as mean ± std over seeds,
and the paired tests of :func:`alignrec.benchmark.report.paired_tests` over the test
users on Recall@20, each user's value averaged over the seeds. Nothing is selected here:
the configs are fixed, so the test split is read once per run, as in the benchmark.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from alignrec.benchmark.report import METRICS, key, paired_tests, seed_averaged
from alignrec.benchmark.runner import run_benchmark


@dataclass
class FeatureRow:
    """One feature set's results: per-seed test metrics and the paired test vs the first."""

    features: str
    per_seed: dict[str, list[float]]
    epochs: list[float]
    p_wilcoxon: float | None = None
    p_ttest: float | None = None

    def mean(self, metric: str) -> float:
        return float(np.mean(self.per_seed[metric]))

    def std(self, metric: str) -> float:
        values = self.per_seed[metric]
        return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def _folder_name(features: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", features).strip("_") or "features"


def split_label(value: str) -> tuple[str, str]:
    """``"stage1=path.npy"`` -> ``("stage1", "path.npy")``; without a label, the set names itself."""
    label, sep, spec = value.partition("=")
    if sep and label and "/" not in label and ":" not in label:
        return label, spec
    return value, value


def compare_features(
    dataset,
    feature_sets: list[str],
    out: str | Path,
    *,
    model: str = "alignrec",
    seeds: int = 3,
    overrides: dict[str, Any] | None = None,
    threads: int | None = None,
    device: str = "cpu",
    progress: bool = False,
) -> list[FeatureRow]:
    """Train ``model`` on every feature set and seed (cached under ``out/<set>/``).

    A set is given as ``.npy``/``raw:...``/``fusion:...``, or ``LABEL=SPEC`` to name it."""
    out = Path(out)
    rows: list[FeatureRow] = []
    runs = []
    for value in feature_sets:
        fs, spec = split_label(value)
        result = run_benchmark(
            dataset, [model], seeds=seeds, out=out / _folder_name(fs), features=spec,
            threads=threads, device=device, grids={}, progress=progress,
            overrides=overrides, write=False,
        )
        mr = result.models[model]
        runs.append(mr)
        per_seed = {m: [float(r["test"][m]) for r in mr.records] for m in METRICS}
        rows.append(FeatureRow(fs, per_seed, [float(r["epochs_run"]) for r in mr.records]))
    ref = seed_averaged(runs[0])
    for row, mr in zip(rows[1:], runs[1:], strict=True):
        p = paired_tests(seed_averaged(mr), ref)
        row.p_wilcoxon, row.p_ttest = p["p_wilcoxon"], p["p_ttest"]
    return rows


def comparison_table(rows: list[FeatureRow]) -> str:
    """Markdown: one row per feature set, mean ± std over seeds, p-values vs the first."""
    metrics = ["recall@10", "recall@20", "ndcg@10", "ndcg@20"]
    head = "| features | " + " | ".join(f"test {m}" for m in metrics)
    head += " | epochs | p Wilcoxon vs first | p t-test vs first |"
    lines = [head, "|" + "---|" * (len(metrics) + 4)]
    for row in rows:
        cells = [f"{row.mean(m):.4f} ± {row.std(m):.4f}" for m in metrics]
        pw = "-" if row.p_wilcoxon is None else f"{row.p_wilcoxon:.3g}"
        pt = "-" if row.p_ttest is None else f"{row.p_ttest:.3g}"
        lines.append(f"| {row.features} | " + " | ".join(cells)
                     + f" | {np.mean(row.epochs):.0f} | {pw} | {pt} |")
    return "\n".join(lines)


def comparison_json(rows: list[FeatureRow]) -> list[dict[str, Any]]:
    return [
        {"features": r.features, "per_seed": r.per_seed, "epochs": r.epochs,
         **{f"{key(m)}_mean": r.mean(m) for m in METRICS},
         "p_wilcoxon_vs_first": r.p_wilcoxon, "p_ttest_vs_first": r.p_ttest}
        for r in rows
    ]
