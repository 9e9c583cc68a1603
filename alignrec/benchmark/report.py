"""The benchmark report: ``report.json``, ``report.md`` and ``plots/``.

Figures are test metrics of each run at its best validation epoch, as mean and
sample standard deviation (ddof=1) over seeds. AlignRec is compared with each
baseline by paired tests over the test users on recall@20, each user's value
averaged over the seeds first: the Wilcoxon signed-rank test
(``scipy.stats.wilcoxon``, two-sided) and the paired t-test
(``scipy.stats.ttest_rel``). Where every paired difference is zero, both p-values are 1.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from alignrec import io
from alignrec.benchmark.results import (
    MANIFEST,
    NOT_TRAINED,
    OURS,
    BenchmarkResult,
    ModelRuns,
    read_stamp,
)
from alignrec.errors import ConfigError, DataError
from alignrec.runs import PER_USER, per_user_test, read_history

METRICS = ("recall@10", "recall@20", "ndcg@10", "ndcg@20")
SHORT = {"recall@10": "R@10", "recall@20": "R@20", "ndcg@10": "N@10", "ndcg@20": "N@20"}
TEST_METRIC = "recall@20"  # what the paired tests compare, per user

# MMRec's published full-ranking results (docs/alignrec.md §6): R@10, R@20, N@10, N@20.
# ``multimodal`` rows used MMRec's image and text features, not the ones here.
PUBLISHED: dict[str, dict[str, dict[str, Any]]] = {
    "amazon-baby": {
        "bpr": {"values": (0.0357, 0.0575, 0.0192, 0.0249), "multimodal": False},
        "lightgcn": {"values": (0.0479, 0.0754, 0.0257, 0.0328), "multimodal": False},
        "vbpr": {"values": (0.0423, 0.0663, 0.0223, 0.0284), "multimodal": True},
        "lattice": {"values": (0.0547, 0.0850, 0.0292, 0.0370), "multimodal": True},
        "bm3": {"values": (0.0564, 0.0883, 0.0301, 0.0383), "multimodal": True},
        "freedom": {"values": (0.0627, 0.0992, 0.0330, 0.0424), "multimodal": True},
    },
    "amazon-sports": {
        "bpr": {"values": (0.0432, 0.0653, 0.0241, 0.0298), "multimodal": False},
        "lightgcn": {"values": (0.0569, 0.0864, 0.0311, 0.0387), "multimodal": False},
        "vbpr": {"values": (0.0558, 0.0856, 0.0307, 0.0384), "multimodal": True},
        "lattice": {"values": (0.0620, 0.0953, 0.0335, 0.0421), "multimodal": True},
        "bm3": {"values": (0.0656, 0.0980, 0.0355, 0.0438), "multimodal": True},
        "freedom": {"values": (0.0717, 0.1089, 0.0385, 0.0481), "multimodal": True},
    },
}


def key(metric: str, split: str = "test") -> str:
    """The report.json name of a metric: ``recall@20`` -> ``test_recall_at_20``."""
    return f"{split}_{metric.replace('@', '_at_')}"


def _mean_std(values: list[float]) -> tuple[float, float]:
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0


def model_summary(runs: ModelRuns) -> dict[str, Any]:
    """Mean, std and per-seed values of the test metrics, valid recall@20, timings, winner."""
    out: dict[str, Any] = {"seeds": len(runs.records)}
    for split, metrics in (("test", METRICS), ("valid", ("recall@20",))):
        for m in metrics:
            values = [float(r[split][m]) for r in runs.records]
            out[f"{key(m, split)}_mean"], out[f"{key(m, split)}_std"] = _mean_std(values)
            out[f"{key(m, split)}_per_seed"] = values
    for field in ("train_seconds", "epochs_run", "best_epoch"):
        values = [float(r[field]) for r in runs.records]
        out[f"{field}_mean"] = float(np.mean(values))
        out[f"{field}_per_seed"] = values
    out["grid_points"] = int(np.prod([len(v) for v in runs.grid.values()])) if runs.grid else 1
    out["compute_seconds"] = compute_seconds(runs)
    out["winner"] = dict(runs.winner)
    out["runs_reused"] = int(sum(runs.reused))
    return out


def compute_seconds(runs: ModelRuns) -> float | None:
    """Training seconds of every run of a model, each grid point of seed 0 included.

    None when a grid point's time is not on record (a failed point, or a run cached before
    ``grid.json`` recorded it): a resumed benchmark's wall time says nothing of the compute,
    this sum does.
    """
    total = 0.0
    for seed, (record, folder) in enumerate(zip(runs.records, runs.folders, strict=True)):
        grid = folder / "grid.json"
        if seed == 0 and grid.is_file():
            spent = [row.get("train_seconds") for row in json.loads(grid.read_text())]
            if any(s is None for s in spent):
                return None
            total += sum(spent)
        else:
            total += float(record["train_seconds"])
    return total


def seed_averaged(runs: ModelRuns, metric: str = TEST_METRIC) -> tuple[np.ndarray, np.ndarray]:
    """(users, each test user's ``metric`` averaged over the model's seeds)."""
    users, first = per_user_test(runs.folders[0], metric)
    total = first.astype(np.float64).copy()
    for folder in runs.folders[1:]:
        u, v = per_user_test(folder, metric)
        if not np.array_equal(u, users):
            raise DataError("test users differ between seeds", file=folder / PER_USER)
        total += v
    return users, total / len(runs.folders)


def paired_tests(
    ours: tuple[np.ndarray, np.ndarray], other: tuple[np.ndarray, np.ndarray]
) -> dict[str, float]:
    """Wilcoxon and paired-t p-values of two per-user samples, paired on their common users."""
    from scipy import stats

    common, i, j = np.intersect1d(ours[0], other[0], assume_unique=True, return_indices=True)
    a, b = ours[1][i], other[1][j]
    if len(common) == 0 or np.all(a == b):
        return {"p_wilcoxon": 1.0, "p_ttest": 1.0, "paired_users": int(len(common))}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        p_w = float(stats.wilcoxon(a, b).pvalue)
        p_t = float(stats.ttest_rel(a, b).pvalue)
    return {"p_wilcoxon": _unit(p_w), "p_ttest": _unit(p_t), "paired_users": int(len(common))}


def _unit(p: float) -> float:
    return 1.0 if math.isnan(p) else min(max(p, 0.0), 1.0)


def _patience_line(settings: dict[str, Any]) -> str:
    """Which early-stopping patience every model ran with, and why that one."""
    patience = settings.get("patience")
    if patience is None:
        return "Early stopping: each model's trainer default patience (see `alignrec/training/config.py`)."
    why = (
        "MMRec's `stopping_step` for every baseline; the AlignRec release uses 30 (`--set "
        "patience=30` gives every model that)"
        if patience == 20
        else "set for this benchmark"
    )
    return (
        f"Early stopping: one patience for every model, {patience} epochs without a gain in "
        f"validation Recall@20 ({why})."
    )


def _choice_line(choice: dict[str, Any]) -> str:
    """How AlignRec's features were chosen on validation (the stage-1 choice record)."""
    scores = ", ".join(f"{s['name']} {s['score']:.4f}" for s in choice.get("scores", []))
    return (
        f"They are `{choice['chosen']}`, chosen on validation among the stage-1 output and "
        f"the raw sets ({scores}; rule: {choice.get('rule', '')})."
    )


def read_choice(features: str | None) -> dict[str, Any] | None:
    """The stage-1 choice record of a features file, if any: ``choice.json`` beside it (the
    ``stage1_features`` asset's), or the ``stage2_choice`` of the summary ``<name>.json``
    that ``alignrec pretrain-features --out <name>.npy`` writes."""
    if not features or not features.endswith(".npy"):
        return None
    path = Path(features)
    for file, key in ((path.with_name("choice.json"), None), (path.with_suffix(".json"), "stage2_choice")):
        try:
            record = json.loads(file.read_text())
        except (OSError, ValueError):
            continue
        choice = record.get(key) if key else record
        if isinstance(choice, dict) and "chosen" in choice:
            return choice
    return None


def build_report(result: BenchmarkResult) -> dict[str, Any]:
    """The ``report.json`` object: per model figures, p-values, gains, skipped, timings."""
    models = {m: model_summary(r) for m, r in result.models.items()}
    report: dict[str, Any] = {
        "dataset": result.dataset,
        "profile": result.profile,
        "seeds": result.seeds,
        "alignrec_features": result.features,
        "alignrec_features_choice": result.features_choice,
        "patience": result.settings.get("patience"),
        "selection": "grid on seed 0, winner by valid recall@20; test scored once per run",
        "settings": dict(result.settings),
        "significance": f"test {TEST_METRIC} per user averaged over seeds; Wilcoxon signed-rank "
        "(scipy.stats.wilcoxon, two-sided) and paired t-test (scipy.stats.ttest_rel)",
        "models": models,
        "skipped": dict(result.skipped),
        "wall_seconds": round(result.wall_seconds, 3),
        "runs_trained": sum(len(r.reused) - sum(r.reused) for r in result.models.values()),
        "runs_reused": sum(sum(r.reused) for r in result.models.values()),
        "compute_seconds": _total([s["compute_seconds"] for s in models.values()]),
        "threads": _threads(result),
        "commits": sorted(_stamped(result, "commit")),
        "devices": sorted(_stamped(result, "device")),
        "stale_runs": [
            f"{m} s{i}" for m, r in result.models.items() for i, st in enumerate(r.stale) if st
        ],
    }
    baselines = [m for m in models if m != OURS]
    if OURS in models and baselines:
        ours = seed_averaged(result.models[OURS])
        for m in baselines:
            tests = paired_tests(ours, seed_averaged(result.models[m]))
            models[m].update({f"{k}_vs_{OURS}": v for k, v in tests.items()})
        report["gain"], report["best_baseline"] = {}, {}
        for metric in METRICS:
            k = f"{key(metric)}_mean"
            best = max(baselines, key=lambda b: models[b][k])
            ref = models[best][k]
            report["best_baseline"][key(metric)] = best
            report["gain"][key(metric)] = (models[OURS][k] - ref) / ref if ref > 0 else None
    if result.dataset in PUBLISHED:
        report["published"] = {
            m: {key(metric): v for metric, v in zip(METRICS, row["values"], strict=True)}
            for m, row in PUBLISHED[result.dataset].items()
        }
    return report


def _cell(summary: dict[str, Any], metric: str) -> str:
    """``mean ± std`` over seeds; a model with one seed has no spread to show, only its value."""
    k = key(metric)
    if summary["seeds"] < 2:
        return f"{summary[f'{k}_mean']:.4f}"
    return f"{summary[f'{k}_mean']:.4f} ± {summary[f'{k}_std']:.4f}"


# Below this a p-value is shown as a bound: scipy returns 0.0 once it underflows a double.
P_FLOOR = 1e-300


def _p(value: float | None) -> str:
    if value is None:
        return "-"
    if value < P_FLOOR:
        return f"< {P_FLOOR:.0e}"
    return f"{value:.2e}" if value < 1e-3 else f"{value:.3f}"


def results_table(report: dict[str, Any]) -> str:
    """The main markdown table: test metrics mean ± std, time per run, epochs, p-values."""
    models = report["models"]
    compared = bool(report.get("gain"))  # AlignRec and at least one baseline ran
    tests = [f"p Wilcoxon vs {OURS}", f"p t-test vs {OURS}"] if compared else []
    head = ["model", *(SHORT[m] for m in METRICS), "train s/run", "epochs", "best epoch", *tests]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for name, s in models.items():
        label = f"**{name}**" if name == OURS else name
        row = [
            label,
            *(_cell(s, m) for m in METRICS),
            f"{s['train_seconds_mean']:.1f}",
            f"{s['epochs_run_mean']:.1f}",
            f"{s['best_epoch_mean']:.1f}",
        ]
        if compared:
            row += [_p(s.get(f"p_wilcoxon_vs_{OURS}")), _p(s.get(f"p_ttest_vs_{OURS}"))]
        lines.append("| " + " | ".join(row) + " |")
    if compared:
        cells = []
        for metric in METRICS:
            g, best = report["gain"][key(metric)], report["best_baseline"][key(metric)]
            cells.append("-" if g is None else f"{100 * g:+.1f}% vs {best}")
        lines.append(
            f"| {OURS} gain over the best baseline | "
            + " | ".join(cells)
            + " |"
            + " |" * (len(head) - 1 - len(METRICS))
        )
    return "\n".join(lines)


def _pinned(grid: dict[str, list[Any]]) -> bool:
    """Whether a grid is one point given by the user (``--grid KEY=V`` for each key)."""
    return bool(grid) and all(len(v) == 1 for v in grid.values())


def _grid_table(result: BenchmarkResult, report: dict[str, Any]) -> str:
    lines = ["| model | searched | winner | valid R@20 (seed 0) |", "|---|---|---|---|"]
    for name, runs in result.models.items():
        searched = (
            "none (pinned)"
            if _pinned(runs.grid)
            else "; ".join(f"{k} ∈ {{{', '.join(map(str, v))}}}" for k, v in runs.grid.items())
        )
        winner = ", ".join(f"{k}={v}" for k, v in runs.winner.items())
        valid = report["models"][name][f"{key('recall@20', 'valid')}_per_seed"][0]
        lines.append(
            f"| {name} | {searched or 'defaults'} | {winner or 'defaults'} | {valid:.4f} |"
        )
    return "\n".join(lines)


def _published_table(result: BenchmarkResult, report: dict[str, Any]) -> str:
    models = report["models"]
    lines = [
        "| model | source | " + " | ".join(SHORT[m] for m in METRICS) + " |",
        "|---|---|" + "---|" * len(METRICS),
    ]
    asked = set(result.models) | set(result.skipped)
    for name, row in PUBLISHED[result.dataset].items():
        if name not in asked:
            continue
        source = (
            "published (MMRec), different features" if row["multimodal"] else "published (MMRec)"
        )
        lines.append(
            f"| {name} | {source} | " + " | ".join(f"{v:.4f}" for v in row["values"]) + " |"
        )
        ours = (
            " | ".join(_cell(models[name], m) for m in METRICS)
            if name in models
            else " | ".join(["skipped"] * len(METRICS))
        )
        lines.append(f"| {name} | ours | {ours} |")
    return "\n".join(lines)


def render_markdown(result: BenchmarkResult, report: dict[str, Any]) -> str:
    """``report.md``: results, gains and p-values, grid winners, published numbers, skipped."""
    seeds = result.seeds
    parts = [
        f"# Benchmark on {result.dataset}",
        "",
        f"{seeds} seed(s) per model (0..{seeds - 1}). Hyperparameters are chosen on **validation** "
        "recall@20 over each model's grid (`alignrec/benchmark/grids.py`) on seed 0; the winner is "
        "retrained on the other seeds. Each run is early-stopped on validation and scored on test "
        "once, at its best epoch."
        + (
            " Set for every run: "
            + ", ".join(f"`{k}={v}`" for k, v in sorted(result.settings.items()))
            + "."
            if result.settings
            else ""
        ),
        "",
        "## Test metrics",
        "",
        results_table(report),
        "",
        "Cells are mean ± sample std (ddof=1) over seeds (one seed: its value alone); "
        "`train s/run`, `epochs` (epochs run) and `best epoch` (0-based) are means over the seeds."
        + (
            " p-values compare AlignRec with each "
            f"baseline over the {_paired_users(report)} test users on recall@20, each user's value "
            "averaged over seeds: Wilcoxon signed-rank (scipy.stats.wilcoxon, two-sided) and paired "
            "t-test (scipy.stats.ttest_rel). The gain row is AlignRec's relative difference to the "
            "best baseline of each column."
            if report.get("gain")
            else ""
        ),
    ]
    if result.features:
        parts += ["", f"AlignRec's item features: `{result.features}`."]
        choice = report.get("alignrec_features_choice")
        if choice:
            parts += ["", _choice_line(choice)]
    parts += ["", _patience_line(result.settings)]
    parts += ["", "## Grid winners (seed 0)", "", _grid_table(result, report)]
    pinned = [m for m, runs in result.models.items() if _pinned(runs.grid)]
    if pinned:
        parts += [
            "",
            f"Not searched, trained at the values given (`--grid`): {', '.join(pinned)}.",
        ]
    if result.dataset in PUBLISHED and (set(result.models) | set(result.skipped)) & set(
        PUBLISHED[result.dataset]
    ):
        parts += [
            "",
            "## Published MMRec numbers",
            "",
            "From the MMRec benchmark (docs/alignrec.md §6), beside ours. Its multimodal rows "
            "used MMRec's image and text features, not the ones here, so only the ID-only rows "
            "(BPR, LightGCN) are a like-for-like reproduction.",
            "",
            _published_table(result, report),
        ]
    if result.skipped:
        parts += ["", "## Skipped", ""]
        parts += [f"- **{m}**: {reason}" for m, reason in result.skipped.items()]
    if result.models:
        parts += [
            "",
            "## Plots",
            "",
            *(f"![{m}](plots/{_plot_name(m)})" for m in METRICS),
            "![validation curves](plots/valid_curves.png)",
        ]
    timing = (
        "Rebuilt from the stored runs by `alignrec benchmark --cached-only` (nothing trained)"
        if result.rebuilt
        else f"Wall time {report['wall_seconds']:.1f}s"
    )
    parts += [
        "",
        f"{timing}; {report['runs_trained']} run(s) trained, "
        f"{report['runs_reused']} reused from an earlier benchmark. {_compute_line(report)}",
        "",
    ]
    return "\n".join(parts)


def _total(values: list[float | None]) -> float | None:
    return None if any(v is None for v in values) else float(sum(values))


def _compute_line(report: dict[str, Any]) -> str:
    """The training compute of every run, reused ones and grid points included."""
    if report.get("compute_seconds") is not None:
        return (
            f"Training compute over every run, grid points included: "
            f"{report['compute_seconds'] / 3600:.2f} h{_threads_note(report.get('threads'))}."
        )
    unknown = [m for m, s in report["models"].items() if s.get("compute_seconds") is None]
    if not unknown:
        return ""
    return (
        "Training compute is not on record for "
        + ", ".join(unknown)
        + " (a failed grid point, or grid runs cached before their time was recorded)."
    )


def _paired_users(report: dict[str, Any]) -> str:
    counts = {s.get(f"paired_users_vs_{OURS}") for s in report["models"].values()} - {None}
    return str(counts.pop()) if len(counts) == 1 else "common"


def _plot_name(metric: str) -> str:
    return f"{key(metric)}.png"


def _new_figure(width: float = 7.0, height: float = 4.0):
    """A figure on the Agg canvas, without pyplot (no global backend switch)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def write_plots(result: BenchmarkResult, report: dict[str, Any], folder: Path) -> list[Path]:
    """A bar chart with std error bars per metric, and validation recall@20 per epoch (seed 0)."""

    names = list(report["models"])
    paths = []
    for metric in METRICS:
        fig = _new_figure(max(5.0, 1.0 + 0.8 * len(names)))
        ax = fig.add_subplot()
        s = [report["models"][n] for n in names]
        colors = ["tab:red" if n == OURS else "tab:blue" for n in names]
        ax.bar(
            names,
            [x[f"{key(metric)}_mean"] for x in s],
            yerr=[x[f"{key(metric)}_std"] for x in s],
            color=colors,
            capsize=4,
        )
        ax.set_ylabel(f"test {metric}")
        ax.set_title(f"{result.dataset}: test {metric} (mean ± std over {result.seeds} seeds)")
        ax.tick_params(axis="x", labelrotation=30)
        path = folder / _plot_name(metric)
        fig.savefig(path)
        paths.append(path)
    fig = _new_figure(8.0)
    ax = fig.add_subplot()
    for i, (name, runs) in enumerate(result.models.items()):
        history = read_history(runs.folders[0])
        ax.plot(
            [h["epoch"] + 1 for h in history],
            [h["valid/recall@20"] for h in history],
            label=name,
            linewidth=2.0 if name == OURS else 1.2,
            linestyle=("-", "--", ":")[i // 10 % 3],
        )  # the 10 default colours repeat
    ax.set_xlabel("epoch")
    ax.set_ylabel("valid recall@20")
    ax.set_title(f"{result.dataset}: validation recall@20 per epoch (seed 0)")
    ax.legend(fontsize="small", loc="center left", bbox_to_anchor=(1.0, 0.5))
    path = folder / "valid_curves.png"
    fig.savefig(path)
    paths.append(path)
    return paths


def write_report(result: BenchmarkResult) -> dict[str, Any]:
    """Write ``manifest.json``, ``report.json``, ``plots/``, ``table.md`` and ``report.md``
    (last) into ``result.out``, each atomically."""
    report = build_report(result)
    result.report = report
    result.out.mkdir(parents=True, exist_ok=True)
    io.write_json(result.manifest, manifest(result))
    if result.models:
        with io.atomic_path(result.plots, is_dir=True) as tmp:
            write_plots(result, report, tmp)
    io.write_json(result.report_json, report)
    with io.atomic_path(result.table_md) as tmp:
        tmp.write_text(render_table(result, report))
    with io.atomic_path(result.report_md) as tmp:
        tmp.write_text(render_markdown(result, report))
    return report


def _threads(result: BenchmarkResult) -> dict[str, Any]:
    """The torch threads the runs trained with, as their stamps record them (CPU runs):
    ``{"per_run": sorted distinct counts, "unrecorded": runs stamped before they were}``."""
    counts, unrecorded = set(), 0
    for runs in result.models.values():
        for folder in runs.folders:
            n = (read_stamp(folder) or {}).get("threads")
            if n:
                counts.add(int(n))
            else:
                unrecorded += 1
    return {"per_run": sorted(counts), "unrecorded": unrecorded}


def _threads_note(threads: dict[str, Any] | None) -> str:
    """How many threads the compute ran on: its CPU-hours are the hours times that."""
    if not threads or not threads["per_run"]:
        return ""
    counts = ", ".join(map(str, threads["per_run"]))
    one = threads["per_run"] == [1]
    note = " (one torch thread per run" if one else f" (torch threads per run: {counts}"
    if threads["unrecorded"]:
        note += f", where recorded: not for {threads['unrecorded']} run(s) stamped before it was"
    return note + ")"


def _stamped(result: BenchmarkResult, field: str) -> set[str]:
    """The values of ``field`` (``commit``, ``device``) in the runs' stamps."""
    found = set()
    for runs in result.models.values():
        for folder in runs.folders:
            stamp = read_stamp(folder)
            if stamp and stamp.get(field):
                found.add(str(stamp[field]))
    return found


def manifest(result: BenchmarkResult) -> dict[str, Any]:
    """What the benchmark asked for, in order: see :attr:`BenchmarkResult.manifest`."""
    return {
        "dataset": result.dataset,
        "profile": result.profile,
        "seeds": result.seeds,
        "models": list(result.models) + [m for m in result.skipped if m not in result.models],
        "grids": {m: r.grid for m, r in result.models.items()},
        "skipped": dict(result.skipped),
        "features": result.features,
        "features_choice": result.features_choice,
        "settings": dict(result.settings),
    }


def rebuild(out: str | Path, write: bool = True) -> BenchmarkResult:
    """The benchmark in ``out`` from its ``manifest.json`` and stamped run folders alone (no
    data, no training), its report rewritten (unless ``write`` is false). A run made by other
    code than this checkout's is reported and named as such; a run not finished lists its
    model under skipped. A model the manifest lists as not trained yet is reported once its
    runs are all finished, at its profile's grid (only for a benchmark run at a profile's
    grids, since no other is kept)."""
    from alignrec.benchmark.code import model_code_digest
    from alignrec.runs import read_metrics
    from alignrec.training.grid import grid_points

    out = Path(out)
    if not (out / MANIFEST).is_file():
        raise ConfigError(
            f"{out}: no {MANIFEST} (a benchmark folder written by `alignrec benchmark`)"
        )
    spec = json.loads((out / MANIFEST).read_text())
    models: dict[str, ModelRuns] = {}
    # the manifest's keys are sorted: the report lists models in the order they were asked
    order = {m: i for i, m in enumerate(spec["models"])}
    grids = dict(spec["grids"])
    if spec.get("profile"):
        from alignrec.benchmark.grids import get_profile, model_grid

        profile_grids = get_profile(spec["profile"]).grids
        settings = spec.get("settings", {})
        for m in spec["models"]:
            if m not in grids and str(spec["skipped"].get(m, "")).startswith(NOT_TRAINED):
                grid = model_grid(m, profile_grids)
                grids[m] = {k: v for k, v in grid.items() if k not in settings}
    skipped = {
        m: spec["skipped"][m]
        for m in sorted(spec["skipped"], key=lambda m: (order.get(m, len(order)), m))
        if m not in grids
    }
    for m in spec["models"]:
        if m not in grids:
            continue
        runs = ModelRuns(m, grid=grids[m])
        points = grid_points(runs.grid) if runs.grid else [{}]
        for seed in range(spec["seeds"]):
            folder = out / "runs" / m / f"s{seed}"
            stamp = read_stamp(folder)
            if stamp is None or (
                m not in spec["grids"] and stamp.get("point") not in (None, *points)
            ):
                break  # (a run the manifest did not report is taken at its profile's grid only)
            runs.records.append(read_metrics(folder))
            runs.folders.append(folder)
            runs.reused.append(True)
            runs.stale.append(stamp.get("code") != model_code_digest(m))
        if len(runs.records) < spec["seeds"]:
            skipped[m] = (
                f"{NOT_TRAINED}: {len(runs.records)} of {spec['seeds']} runs finished "
                f"(runs/{m}/s{len(runs.records)} is missing)"
            )
            continue
        # a one-point grid is not searched, so its run names no grid_point: the point is it
        runs.winner = dict(
            runs.records[0].get("grid_point") or (grid_points(runs.grid) if runs.grid else [{}])[0]
        )
        models[m] = runs
    result = BenchmarkResult(
        spec["dataset"], out, spec["seeds"], models, skipped, spec.get("features"),
        settings=spec.get("settings", {}), profile=spec.get("profile"),
        features_choice=spec.get("features_choice") or _earlier_choice(out), rebuilt=True,
    )
    if write:
        write_report(result)
    return result


def _seeds_flag(result: BenchmarkResult) -> str:
    """`` --seeds N`` when the benchmark ran another number of seeds than its profile's."""
    from alignrec.benchmark.grids import get_profile

    return "" if result.seeds == get_profile(result.profile).seeds else f" --seeds {result.seeds}"


def _earlier_choice(out: Path) -> dict[str, Any] | None:
    """The feature choice of the report already in ``out``: manifests written before the
    manifest kept the choice (its features file may be gone from this work tree)."""
    try:
        return json.loads((out / "report.json").read_text()).get("alignrec_features_choice")
    except (OSError, ValueError):
        return None


def render_table(result: BenchmarkResult, report: dict[str, Any]) -> str:
    """``table.md``: a heading, how the table was made, the results table, the p-value line."""
    how = f"`alignrec benchmark --dataset {result.dataset}" + (
        f" --profile {result.profile}{_seeds_flag(result)}`" if result.profile
        else "` (custom settings)"
    )
    lines = [
        f"# Benchmark on {result.dataset}",
        "",
        f"{how}: {result.seeds} seed(s) per model; {_patience_line(result.settings)}"
        + (f" AlignRec reads `{result.features}`." if result.features else "")
        + (f" {_choice_line(report['alignrec_features_choice'])}"
           if report.get("alignrec_features_choice") else "")
        + " Test metrics, mean ± std over seeds.",
        "",
        results_table(report),
        "",
    ]
    if report.get("gain"):
        lines += [
            "p: each user's test recall@20 averaged over seeds, paired with AlignRec's "
            f"({_paired_users(report)} users), two-sided.",
            "",
        ]
    if result.skipped:
        lines += ["Skipped: " + "; ".join(f"{m} ({r})" for m, r in result.skipped.items()), ""]
    if report.get("stale_runs"):
        lines += [
            "Made by other code than this checkout's (a rerun retrains them): "
            + ", ".join(report["stale_runs"])
            + ".",
            "",
        ]
    compute = _compute_line(report)
    lines += [
        f"Runs made at commit(s) {', '.join(report['commits']) or 'unknown'}, on "
        f"{', '.join(report.get('devices') or []) or 'an unrecorded device'}."
        + (f" {compute}" if compute else ""),
        "",
    ]
    return "\n".join(lines)


__all__ = [
    "METRICS",
    "PUBLISHED",
    "build_report",
    "key",
    "paired_tests",
    "manifest",
    "rebuild",
    "render_markdown",
    "render_table",
    "results_table",
    "write_report",
]
