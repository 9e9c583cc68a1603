"""``alignrec benchmark``: every model on one dataset, validation-selected, over seeds.

Writes ``report.md``, ``report.json``, ``table.md``, ``manifest.json``, ``plots/`` and
``runs/<model>/s<seed>/`` into ``--out`` (default ``results/benchmark/<dataset>/<profile>/``,
which the repository keeps); finished runs are reused on a rerun. ``--cached-only`` without
``--dataset`` rebuilds every report under ``results/benchmark/`` from the stored runs.
See :mod:`alignrec.benchmark`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def split_models(values: list[str] | None) -> list[str] | None:
    """``["bpr,lightgcn", "alignrec"]`` -> ``["bpr", "lightgcn", "alignrec"]`` (None: all)."""
    names = [n.strip() for v in values or [] for n in v.split(",") if n.strip()]
    return names or None


def benchmark_command(
    dataset: Annotated[
        str | None,
        typer.Option(
            "--dataset",
            help="registered dataset name (omitted with --cached-only: rebuild every report "
            "under results/benchmark/)",
        ),
    ] = None,
    profile: Annotated[
        str | None,
        typer.Option(
            "--profile",
            help="quick (one seed, pinned points; the default, or $ALIGNREC_BENCHMARK) or full "
            "(the grids, 3 seeds: the paper protocol)",
        ),
    ] = None,
    models: Annotated[
        list[str] | None,
        typer.Option(
            "--models",
            help="models to run, comma-separated or repeated (default: all); the report still "
            "covers every model, the others as --out holds them (see --cached-only)",
        ),
    ] = None,
    seeds: Annotated[
        int | None,
        typer.Option(
            help="seeds per model; the grid is searched on seed 0 (default: the profile's, and "
            "the report adds the later seeds every model has finished in --out)"
        ),
    ] = None,
    features: Annotated[
        str | None,
        typer.Option(
            "--features",
            help="AlignRec's item features: a .npy (one row per item), raw:concat, fusion:<folder> ... "
            "(default: the stage-1 features in artifacts/datasets/NAME/stage1/features.npy)",
        ),
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="default results/benchmark/DATASET/PROFILE")
    ] = None,
    threads: Annotated[int, typer.Option(help="torch intra-op threads (0: torch's default)")] = 0,
    device: Annotated[str, typer.Option(help="torch device")] = "cpu",
    sets: Annotated[
        list[str] | None,
        typer.Option("--set", help="config key=value for every run, e.g. epochs=100 (repeatable)"),
    ] = None,
    grid: Annotated[
        list[str] | None,
        typer.Option(
            "--grid",
            help="MODEL.KEY=V1,V2 replaces that key's values in the model's grid (repeatable); "
            "one value per key pins the model, e.g. --grid lightgcn.n_layers=3",
        ),
    ] = None,
    mlflow: Annotated[
        bool,
        typer.Option(
            "--mlflow/--no-mlflow",
            help="log every run and a summary run to the experiment benchmark-DATASET",
        ),
    ] = False,
    progress: Annotated[bool, typer.Option(help="show the progress bar")] = True,
    cached_only: Annotated[
        bool,
        typer.Option(
            "--cached-only",
            help="train nothing: report the runs already finished in --out, listing the "
            "models with runs still to train as skipped; without --dataset, rebuild every "
            "report under results/benchmark/ from its stored runs alone",
        ),
    ] = False,
) -> None:
    """Benchmark the models on DATASET: grids selected on validation, test over seeds, a report."""
    from tqdm.contrib.logging import logging_redirect_tqdm

    from alignrec.benchmark import run_benchmark
    from alignrec.benchmark.grids import get_profile, parse_grid_changes, with_grid_changes
    from alignrec.benchmark.report import results_table
    from alignrec.benchmark.runner import model_names
    from alignrec.errors import ConfigError
    from alignrec.models import MODELS
    from alignrec.training import parse_assignments

    if dataset is None:
        if not cached_only:
            raise ConfigError("--dataset is required (only --cached-only rebuilds without it)")
        rebuild_all(out)
        return
    chosen = get_profile(profile)
    grids = with_grid_changes(parse_grid_changes(grid), chosen.grids) if grid else None
    tracking = None
    if mlflow:
        from alignrec.benchmark.tracking import BenchmarkTracking

        tracking = BenchmarkTracking(dataset)
    asked = split_models(models)
    # Some models only, into a folder whose report holds others: the report is rebuilt over
    # every model, so that it never shrinks to the last call's (the README's tables read it).
    some = bool(asked) and set(model_names(asked)) != set(MODELS) and not cached_only
    try:
        with logging_redirect_tqdm():  # log lines above the progress bar, not through it
            result = run_benchmark(
                dataset,
                asked,
                seeds,
                out,
                features,
                threads or None,
                device,
                logger_factory=tracking.logger_factory if tracking else None,
                grids=grids,
                progress=progress,
                overrides=parse_assignments(sets),
                write=not some,
                cached_only=cached_only,
                profile=chosen.name,
                finished_seeds=seeds is None,
            )
        if some:
            result = _report_with_the_folder(result)
    except BaseException:
        if tracking is not None:
            tracking.fail()
        raise
    if tracking is not None:
        tracking.log_report(result)
    typer.echo(results_table(result.report))
    for model, reason in result.skipped.items():
        typer.echo(f"skipped {model}: {reason}")
    typer.echo(f"wrote {result.report_md} ({result.wall_seconds:.1f}s)")
    if tracking is not None:
        typer.echo(f"MLflow: experiment benchmark-{result.dataset}, summary run {tracking.run_id}")


def _report_with_the_folder(result):
    """Write the report of a benchmark of some models: the folder's report, rebuilt from its
    stored runs with these added, when its manifest is of the same profile, seeds and
    settings and lists these models at the same grids (or as not trained yet); else this
    benchmark's alone. Returns the result the report was written from."""
    import json

    from alignrec.benchmark.report import rebuild, write_report
    from alignrec.benchmark.results import MANIFEST, NOT_TRAINED

    try:
        spec = json.loads((result.out / MANIFEST).read_text())
    except (OSError, ValueError):
        spec = None
    same = (
        spec is not None
        and result.profile is not None
        and (spec.get("profile"), spec.get("seeds"), spec.get("settings"))
        == (result.profile, result.seeds, dict(result.settings))
        and all(
            spec["grids"].get(m) == runs.grid
            if m in spec["grids"]
            else str(spec["skipped"].get(m, "")).startswith(NOT_TRAINED)
            for m, runs in result.models.items()
        )
    )
    if not same:
        write_report(result)
        return result
    rebuilt = rebuild(result.out, write=False)
    # the runs this call trained count as trained, and its wall time as the report's
    for m, runs in result.models.items():
        if m in rebuilt.models and len(rebuilt.models[m].reused) == len(runs.reused):
            rebuilt.models[m].reused = list(runs.reused)
    rebuilt.rebuilt, rebuilt.wall_seconds = False, result.wall_seconds
    write_report(rebuilt)
    return rebuilt


def rebuild_all(root: Path | None = None) -> None:
    """Rewrite the report of every benchmark folder (a ``manifest.json``) under ``root``
    (default ``results/benchmark/``) from its stored runs: no data, no training."""
    from alignrec.benchmark.report import rebuild, results_table
    from alignrec.errors import ConfigError
    from alignrec.paths import results_root

    root = root or results_root() / "benchmark"
    folders = sorted(p.parent for p in root.rglob("manifest.json"))
    if not folders:
        raise ConfigError(f"no benchmark reports under {root} to rebuild (no manifest.json)")
    for folder in folders:
        result = rebuild(folder)
        typer.echo(f"## {folder}\n\n{results_table(result.report)}\n")
        for model, reason in result.skipped.items():
            typer.echo(f"skipped {model}: {reason}")
        if result.report.get("stale_runs"):
            typer.echo(f"made by other code: {', '.join(result.report['stale_runs'])}")
        typer.echo(f"wrote {result.report_md}")


def compare_features_command(
    dataset: Annotated[str, typer.Option("--dataset", help="registered dataset name")],
    features: Annotated[
        list[str],
        typer.Option(
            "--features",
            help="a feature set (.npy, raw:concat, fusion:<folder> ..., or LABEL=SET to name "
            "it); repeat it: every set is compared with the first",
        ),
    ],
    model: Annotated[str, typer.Option(help="the model trained on each set")] = "alignrec",
    seeds: Annotated[int, typer.Option(help="seeds per feature set")] = 3,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="default results/feature-ablation/DATASET"),
    ] = None,
    threads: Annotated[int, typer.Option(help="torch intra-op threads (0: torch's default)")] = 0,
    device: Annotated[str, typer.Option(help="torch device")] = "cpu",
    sets: Annotated[
        list[str] | None,
        typer.Option("--set", help="config key=value for every run (repeatable)"),
    ] = None,
    progress: Annotated[bool, typer.Option(help="show the progress bar")] = True,
) -> None:
    """Train one model on several feature sets over seeds; test metrics and paired tests.

    Runs are cached in OUT/<set>/runs (a rerun resumes); OUT/comparison.md and .json hold
    the table. The configs are fixed (no grid): test is read once per run."""
    from alignrec.benchmark.ablation import compare_features, comparison_json, comparison_table
    from alignrec.errors import ConfigError
    from alignrec.io import write_json, write_text
    from alignrec.paths import results_root
    from alignrec.training import parse_assignments

    if len(features) < 2:
        raise ConfigError("--features: give at least two feature sets to compare")
    out = out or results_root() / "feature-ablation" / dataset
    overrides = {"patience": 30, **parse_assignments(sets)}
    rows = compare_features(dataset, features, out, model=model, seeds=seeds,
                            overrides=overrides, threads=threads or None, device=device,
                            progress=progress)
    table = comparison_table(rows)
    settings = ", ".join(f"{k}={v}" for k, v in overrides.items())
    write_text(out / "comparison.md",
               f"# {model} on {dataset}: feature sets compared over {seeds} seeds\n\n"
               f"Settings: {settings}, no grid. p-values: each user's test Recall@20 averaged "
               f"over seeds, paired with the first feature set's (Wilcoxon signed-rank and "
               f"paired t-test, two-sided).\n\n{table}\n")
    write_json(out / "comparison.json", {"model": model, "dataset": dataset, "seeds": seeds,
                                         "settings": overrides, "rows": comparison_json(rows)})
    typer.echo(table)
    typer.echo(f"wrote {out / 'comparison.md'}")
