"""``python -m orchestration.dvc_stage STAGE [ASSET ...]``: one DVC stage, run as one Dagster run.

``dvc.yaml`` calls this for each of its stages. It reads ``params.yaml``, turns the sections the
stage declares into the run config of the stage's assets, and materializes those assets (with
their blocking checks) for the partition ``dataset`` on the persistent Dagster instance
(``DAGSTER_HOME``, ``.dagster/`` next to the params file by default), so every DVC run shows in
the Dagster UI with its metadata and MLflow runs. The code path is the assets' own.

The run is a subset of the global asset job: upstream assets are not recomputed, their values
are loaded by the IO manager from what the upstream stage's run stored under
``DAGSTER_HOME/storage/dvc``, where only DVC stages store (a run from the UI stores under
``DAGSTER_HOME/storage`` and its paths point into its own folder, which DVC does not track). A
stage is one or more asset groups (:data:`STAGES`); a new group must be given a stage, which
``tests/orchestration/test_dvc_stage.py`` enforces.

``artifacts`` in params.yaml becomes ``ALIGNREC_HOME``, and the run is tagged
``alignrec/dvc_stage``: :func:`orchestration.paths.output_root` then sends the assets' files
where dvc.yaml names the stages' outputs, so the files the assets write are the ones DVC
tracks. A run without the tag writes under ``ALIGNREC_HOME/dagster/<run id>/`` instead.

A stage that trains writes ``summary.json`` beside its full results (each model's
``metrics.json``, the benchmark's ``report.json``): the headline figures only, which dvc.yaml
declares as the stage's ``metrics``, so ``dvc metrics show`` prints a few columns, not hundreds.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alignrec.env import configure_process
from alignrec.errors import ConfigError

if TYPE_CHECKING:
    import dagster as dg

PARAMS_FILE = "params.yaml"
COMMON = ("dataset", "artifacts")  # read by every stage
STORAGE = ("storage", "dvc")  # under DAGSTER_HOME: the values DVC stages store and load


@dataclass(frozen=True)
class Stage:
    """One DVC stage: the asset groups it materializes, the params.yaml sections it reads
    besides :data:`COMMON` (dvc.yaml lists exactly these), and how they become op configs."""

    groups: tuple[str, ...]
    sections: tuple[str, ...] = ()
    ops: Callable[[dict[str, Any]], dict[str, dict]] | None = None


# ------------------------------------------------------------------ params -> op configs


def _mapping(value: Any, key: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{key} must be a mapping, got {value!r}")
    return value


def _known_keys(section: dict[str, Any], known: set[str], key: str) -> None:
    unknown = sorted(set(section) - known)
    if unknown:
        names = ", ".join(f"{key}.{k}" for k in unknown)
        raise ConfigError(f"unknown key(s) {names}; known under {key}: {sorted(known)}")


def _text(value: Any) -> str:
    """A params value as the string the assets' ``key=value`` configs take."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return ",".join(_text(v) for v in value)
    return "none" if value is None else str(value)


def _stage1_ops(params: dict[str, Any]) -> dict[str, dict]:
    """``stage1.fusion`` -> ``stage1_features``'s :class:`Stage1Config` overrides, each value
    checked against :class:`alignrec.features.fusion.FusionConfig`."""
    from alignrec.features.fusion import FusionConfig
    from alignrec.training.config import coerce

    section = _mapping(params.get("stage1"), "stage1")
    _known_keys(section, {"fusion"}, "stage1")
    fusion = _mapping(section.get("fusion"), "stage1.fusion")
    types = typing.get_type_hints(FusionConfig)
    _known_keys(fusion, {f.name for f in fields(FusionConfig)}, "stage1.fusion")
    typed = {k: coerce(f"stage1.fusion.{k}", v, types[k]) for k, v in fusion.items()}
    try:
        FusionConfig.from_dict(typed)
    except ConfigError as exc:
        raise ConfigError(f"stage1.fusion: {exc}") from None
    overrides = {k: json.dumps(v) for k, v in typed.items()}  # YAML text, as Stage1Config reads it
    return {"stage1_features": {"config": {"overrides": overrides}}}


def _train_config(model: str, cfg: dict[str, Any], key: str, config_class: type) -> dict[str, Any]:
    """One training asset's config from ``stage2.<model>``, validated by the library's
    ``resolve_configs`` (the check ``alignrec train`` runs before loading data)."""
    from alignrec.training.config import resolve_configs

    _known_keys(cfg, set(config_class.model_fields), key)
    seed = cfg.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"{key}.seed must be an integer, got {seed!r}")
    sets = {k: _text(v) for k, v in _mapping(cfg.get("sets"), f"{key}.sets").items()}
    grid = {}
    for name, values in _mapping(cfg.get("grid"), f"{key}.grid").items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{key}.grid.{name} must be a non-empty list, got {values!r}")
        grid[name] = [_text(v) for v in values]
    try:
        resolve_configs(model, sets)
        for name, values in grid.items():
            for value in values:
                resolve_configs(model, {**sets, name: value})
    except ConfigError as exc:
        raise ConfigError(f"{key}: {exc}") from None
    config: dict[str, Any] = {"seed": seed, "sets": sets, "grid": grid}
    if "features" in cfg:
        config["features"] = str(cfg["features"])
    return config


def _stage2_ops(params: dict[str, Any]) -> dict[str, dict]:
    """``stage2.<model>`` -> ``<model>_model``'s :class:`TrainConfig` (``AlignRecConfig``)."""
    from orchestration.assets import training

    classes = {
        asset.key.to_user_string().removesuffix("_model"): training.TrainConfig
        for asset in training.assets
    }
    classes["alignrec"] = training.AlignRecConfig
    section = _mapping(params.get("stage2"), "stage2")
    _known_keys(section, set(classes), "stage2")
    return {
        f"{model}_model": {
            "config": _train_config(
                model, _mapping(cfg, f"stage2.{model}"), f"stage2.{model}", classes[model]
            )
        }
        for model, cfg in section.items()
    }


def _benchmark_ops(params: dict[str, Any]) -> dict[str, dict]:
    """``benchmark`` -> the ``benchmark`` asset's :class:`BenchmarkConfig`; ``sets`` are checked
    against every benchmarked model, as the benchmark applies them to each."""
    from alignrec.benchmark.grids import with_grid_changes
    from alignrec.benchmark.runner import plan_models
    from alignrec.models import MODELS
    from alignrec.training.config import resolve_configs
    from orchestration.assets.benchmark import BenchmarkConfig

    section = _mapping(params.get("benchmark"), "benchmark")
    _known_keys(section, set(BenchmarkConfig.model_fields), "benchmark")
    config: dict[str, Any] = {}
    if "models" in section:
        models = section["models"] or []
        if not isinstance(models, list) or not all(isinstance(m, str) for m in models):
            raise ConfigError(f"benchmark.models must be a list of model names, got {models!r}")
        unknown = sorted(set(models) - set(MODELS))
        if unknown:
            raise ConfigError(
                f"benchmark.models: unknown model(s) {unknown}; registered: {sorted(MODELS)}"
            )
        config["models"] = models
    if "profile" in section:
        from alignrec.benchmark.grids import get_profile

        get_profile(_text(section["profile"]) or None)  # ConfigError naming the profiles
        config["profile"] = _text(section["profile"])
    if "seeds" in section:
        seeds = section["seeds"]
        if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 0:
            raise ConfigError(
                f"benchmark.seeds must be an integer >= 1 (0: the profile's), got {seeds!r}"
            )
        config["seeds"] = seeds
    if "cached_only" in section:
        if not isinstance(section["cached_only"], bool):
            raise ConfigError(
                f"benchmark.cached_only must be true or false, got {section['cached_only']!r}"
            )
        config["cached_only"] = section["cached_only"]
    sets = {k: _text(v) for k, v in _mapping(section.get("sets"), "benchmark.sets").items()}
    for model in config.get("models") or MODELS:
        try:
            resolve_configs(model, sets)
        except ConfigError as exc:
            raise ConfigError(f"benchmark.sets: {exc}") from None
    config["sets"] = sets
    grids: dict[str, dict[str, list[str]]] = {}
    for model, keys in _mapping(section.get("grids"), "benchmark.grids").items():
        for name, values in _mapping(keys, f"benchmark.grids.{model}").items():
            if not isinstance(values, list) or not values:
                raise ConfigError(
                    f"benchmark.grids.{model}.{name} must be a non-empty list, got {values!r}"
                )
            grids.setdefault(model, {})[name] = [_text(v) for v in values]
    try:
        from alignrec.benchmark.grids import get_profile

        profile = get_profile(config.get("profile") or None)
        plan_models(config.get("models") or None, sets, with_grid_changes(grids, profile.grids))
    except ConfigError as exc:
        raise ConfigError(f"benchmark.grids: {exc}") from None
    config["grids"] = grids
    return {"benchmark": {"config": config}}


STAGES: dict[str, Stage] = {
    "data": Stage(groups=("data",)),
    "stage1": Stage(groups=("features",), sections=("stage1",), ops=_stage1_ops),
    "protocols": Stage(groups=("evaluation",)),
    "stage2": Stage(groups=("training",), sections=("stage2",), ops=_stage2_ops),
    "benchmark": Stage(groups=("benchmark",), sections=("benchmark",), ops=_benchmark_ops),
}


def load_params(path: str | Path) -> dict[str, Any]:
    """Read and check params.yaml's top level: known sections, a registered ``dataset``."""
    import yaml

    from alignrec.data.registry import list_datasets, unknown_dataset

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such params file")
    try:
        params = _mapping(yaml.safe_load(path.read_text()), str(path))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    known = set(COMMON) | {s for stage in STAGES.values() for s in stage.sections}
    unknown = sorted(set(params) - known)
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {unknown}; known: {sorted(known)}")
    for key in COMMON:
        if not isinstance(params.get(key), str) or not params[key]:
            raise ConfigError(f"{path}: {key} must be a non-empty string, got {params.get(key)!r}")
    datasets = sorted(list_datasets())
    if params["dataset"] not in datasets:
        raise ConfigError(f"{path}: key 'dataset': {unknown_dataset(params['dataset'], datasets)}")
    return params


def op_configs(stage: str, params: dict[str, Any]) -> dict[str, dict]:
    """The ``ops`` run config of ``stage``'s assets, built only from the sections it declares."""
    spec = STAGES[stage]
    if spec.ops is None:
        return {}
    return spec.ops({k: params[k] for k in (*COMMON, *spec.sections) if k in params})


# ------------------------------------------------------------------ running a stage


def stage_asset_keys(defs: dg.Definitions, stage: str) -> list[dg.AssetKey]:
    """The keys of the assets in ``stage``'s groups, in definition order."""
    groups = set(STAGES[stage].groups)
    return [spec.key for spec in defs.resolve_all_asset_specs() if spec.group_name in groups]


def _select(defs: dg.Definitions, stage: str, only: Sequence[str]) -> list[dg.AssetKey]:
    keys = stage_asset_keys(defs, stage)
    if not keys:
        raise ConfigError(
            f"stage {stage!r}: orchestration.definitions has no asset in group(s) "
            f"{list(STAGES[stage].groups)}"
        )
    names = [k.to_user_string() for k in keys]
    stray = sorted(set(only) - set(names))
    if stray:
        raise ConfigError(f"stage {stage!r} has no asset(s) {stray}; its assets: {names}")
    return [k for k in keys if not only or k.to_user_string() in only]


def _use_homes(params: dict[str, Any], root: Path) -> None:
    """Point the library at params' ``artifacts`` and Dagster at its instance folder."""
    home = str((root / params["artifacts"]).resolve())
    if os.environ.get("ALIGNREC_HOME", home) != home:
        print(
            f"note: ALIGNREC_HOME set to {home} (params 'artifacts'), where dvc.yaml's outputs are",
            file=sys.stderr,
        )
    os.environ["ALIGNREC_HOME"] = home
    dagster_home = Path(os.environ.setdefault("DAGSTER_HOME", str(root / ".dagster")))
    dagster_home.mkdir(parents=True, exist_ok=True)


def dvc_storage() -> Path:
    """``DAGSTER_HOME/storage/dvc``: where DVC stages' runs store their asset values."""
    return Path(os.environ["DAGSTER_HOME"]).resolve().joinpath(*STORAGE)


def run_stage(
    stage: str, params_path: str | Path = PARAMS_FILE, only: Sequence[str] = ()
) -> dg.ExecuteInProcessResult:
    """Materialize ``stage``'s assets (or the named ``only`` ones) for ``params.dataset``.

    Bad params raise :class:`ConfigError` before anything runs; a failed run is returned
    (``result.success`` is false), see :func:`failure_report`.
    """
    import dagster as dg

    if stage not in STAGES:
        raise ConfigError(f"unknown stage {stage!r}; stages: {list(STAGES)}")
    params_path = Path(params_path)
    params = load_params(params_path)
    try:
        ops = op_configs(stage, params)
    except ConfigError as exc:
        raise ConfigError(f"{params_path}: {exc}") from None
    _use_homes(params, params_path.resolve().parent)
    from orchestration.definitions import defs

    keys = _select(defs, stage, only)
    names = {k.to_user_string() for k in keys}
    from orchestration.paths import DVC_STAGE_TAG

    run_config = {
        "ops": {op: cfg for op, cfg in ops.items() if op in names},
        "loggers": {"console": {"config": {"log_level": "INFO"}}},  # DEBUG buries DVC's output
        "resources": {"io_manager": {"config": {"base_dir": str(dvc_storage())}}},
    }
    tags = {DVC_STAGE_TAG: stage}  # output_root: write where dvc.yaml declares the outputs
    with dg.DagsterInstance.get() as instance:
        if os.environ.get("ALIGNREC_EXECUTOR") in ("multiprocess", "celery"):
            result = _execute_multiprocess(instance, keys, run_config, tags, params, params_path)
        else:
            job = defs.resolve_implicit_job_def_def_for_assets(keys)
            try:
                result = job.execute_in_process(
                    run_config=run_config,
                    instance=instance,
                    partition_key=params["dataset"],
                    asset_selection=keys,
                    tags=tags,
                    raise_on_error=False,
                )
            except dg.DagsterInvalidConfigError as exc:
                raise _refused(params_path, stage, exc) from None
    if result.success:
        write_summaries(stage, params["dataset"], sorted(names))
    return result


def _refused(params_path: Path, stage: str, exc: Exception) -> ConfigError:
    return ConfigError(
        f"{params_path}: stage {stage!r}: the assets refuse the config built from it: {exc}"
    )


def _execute_multiprocess(instance, keys, run_config, tags, params, params_path):
    """The stage as a run of the multiprocess executor (``ALIGNREC_EXECUTOR=multiprocess``,
    or ``celery``): independent steps, such as the benchmark's per-model steps, run in
    parallel processes (Celery workers)."""
    import dagster as dg

    from orchestration import definitions
    from orchestration.paths import DVC_STAGE_TAG

    try:
        with dg.execute_job(
            dg.reconstructable(definitions.pipeline_job_def),
            instance,
            run_config=run_config,
            tags={**tags, "dagster/partition": params["dataset"]},
            asset_selection=keys,
        ) as result:
            return result
    except dg.DagsterInvalidConfigError as exc:
        raise _refused(params_path, tags[DVC_STAGE_TAG], exc) from None


# ------------------------------------------------------------------ compact DVC metrics

SUMMARY_FILE = "summary.json"
HEADLINE = ("recall@20", "ndcg@20")  # per split, of a training run
BENCHMARK_HEADLINE = "test_recall_at_20_mean"  # per model, of the benchmark's report.json
BENCHMARK_COLUMN = "R@20"  # its name in summary.json (`dvc metrics show`: R@20.<model>)


def run_summary(metrics: dict[str, Any]) -> dict[str, Any]:
    """A training run's headline figures from its ``metrics.json``: valid and test
    recall@20 and ndcg@20."""
    return {
        split: {k: metrics[split][k] for k in HEADLINE if k in metrics[split]}
        for split in ("valid", "test")
        if isinstance(metrics.get(split), dict)
    }


def benchmark_summary(report: dict[str, Any]) -> dict[str, Any]:
    """The benchmark's headline figures from its ``report.json``: each model's test recall@20,
    mean over seeds, as ``{"R@20": {model: mean}}`` (short, as the report's tables name it)."""
    return {
        BENCHMARK_COLUMN: {
            model: figures[BENCHMARK_HEADLINE]
            for model, figures in report.get("models", {}).items()
            if BENCHMARK_HEADLINE in figures
        }
    }


def summary_sources(stage: str, dataset: str, assets: Sequence[str]) -> list[tuple[Path, Callable]]:
    """``(full results file, summary function)`` of each result ``stage`` writes for the named
    assets; the summary goes beside it as :data:`SUMMARY_FILE`."""
    if stage == "stage2":
        from alignrec.runs import METRICS
        from orchestration.assets.training import run_dir

        return [
            (run_dir(dataset, name.removesuffix("_model")) / METRICS, run_summary)
            for name in assets
        ]
    if stage == "benchmark" and "benchmark" in assets:
        from alignrec.paths import artifacts_root

        # the DVC stage's benchmark folder (orchestration.paths: the output root of a DVC stage)
        return [(artifacts_root() / "benchmark" / dataset / "report.json", benchmark_summary)]
    return []


def write_summaries(stage: str, dataset: str, assets: Sequence[str]) -> list[Path]:
    """Write the ``summary.json`` of every full result the stage wrote (a skipped asset has
    none); returns the files written."""
    from alignrec import io

    written = []
    for source, summarize in summary_sources(stage, dataset, assets):
        if source.is_file():
            written.append(
                io.write_json(source.with_name(SUMMARY_FILE), summarize(json.loads(source.read_text())))
            )
    return written


LOAD_INPUT_HINT = (
    "  an upstream asset's stored value is missing from DAGSTER_HOME/storage/dvc, where only DVC "
    "stages store (another DAGSTER_HOME, `make clean-state`, or DVC restored the upstream stage's "
    "files from its cache without running it): rerun the upstream stage alone, e.g. "
    "`dvc repro -f -s stage1`"
)


def _root_cause(error: Any) -> str:
    """The innermost error of a Dagster step failure, where the actual reason is."""
    while error.cause is not None:
        error = error.cause
    return error.message.strip()


def failure_report(result: dg.ExecuteInProcessResult) -> str:
    """Each failed step with its innermost error, and each failed asset check."""
    failures = [event for event in result.all_events if event.is_step_failure]
    lines = [f"  step {e.step_key}: {_root_cause(e.step_failure_data.error)}" for e in failures]
    if any(
        e.step_failure_data.error.cls_name == "DagsterExecutionLoadInputError" for e in failures
    ):
        lines.append(LOAD_INPUT_HINT)
    lines += [
        f"  check {ev.asset_key.to_user_string()}:{ev.check_name} failed"
        for ev in result.get_asset_check_evaluations()
        if not ev.passed
    ]
    return "\n".join(lines) or "  (no step failure recorded; see the run in the Dagster UI)"


def main(argv: Sequence[str] | None = None) -> int:
    """Run one stage; exit 0 on success, 1 if the Dagster run failed, 2 on bad params."""
    configure_process()
    parser = argparse.ArgumentParser(
        prog="python -m orchestration.dvc_stage",
        description="Materialize one DVC stage's Dagster assets for params.yaml's dataset.",
    )
    parser.add_argument("stage", choices=list(STAGES))
    parser.add_argument("assets", nargs="*", help="only these assets of the stage (default: all)")
    parser.add_argument("--params", default=PARAMS_FILE, help="params file (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        result = run_stage(args.stage, args.params, args.assets)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not result.success:
        print(
            f"error: stage {args.stage}: Dagster run {result.run_id} failed\n"
            f"{failure_report(result)}",
            file=sys.stderr,
        )
        return 1
    done = sorted({e.asset_key.to_user_string() for e in result.get_asset_materialization_events()})
    print(f"stage {args.stage}: Dagster run {result.run_id} materialized {', '.join(done)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
