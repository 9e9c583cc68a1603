"""Run the benchmark: every model on one dataset, selected on validation, over several seeds.

For each model the grid of :mod:`alignrec.benchmark.grids` is searched on seed 0
(:func:`alignrec.training.grid_search`: every point early-stopped on validation
recall@20, only the winner scored on test), then the winning configuration is
retrained on seeds ``1..n-1``. Every run writes the files of ``alignrec train``
(:func:`alignrec.runs.write_run`) under ``<out>/runs/<model>/s<seed>/``
plus ``benchmark.json``, written last, holding the run's cache key: a hash of the
resolved configs (every grid point's for seed 0), the seed, the data the model
reads, and the source of the code that decides the run (:mod:`alignrec.benchmark.code`).
A rerun reuses every run whose key still matches, so a benchmark killed
midway resumes at the run where it stopped, and a changed grid, config, data or code reruns.
The default folder is under ``results/`` (:func:`default_out`), which the repository keeps.
Within a run, the run folder keeps a checkpoint (one per grid point) and a ``status.json``
(:mod:`alignrec.training.checkpoint`): a run killed or stopped by a signal resumes from its
last checkpoint, and a grid from its unfinished point. A checkpoint is resumed only under
the run's key, so a changed config or data never resumes from a stale one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from alignrec import io
from alignrec.benchmark.code import git_commit, model_code_digest
from alignrec.benchmark.results import (
    NOT_TRAINED,
    OURS,
    STAMP,
    BenchmarkResult,
    ModelRuns,
    read_stamp,
)
from alignrec.data.dataset import Dataset
from alignrec.env import torch_device
from alignrec.errors import ConfigError
from alignrec.features.sets import with_content_features
from alignrec.models import MODELS, get_model_class
from alignrec.models.base import MODALITY_PREFIX
from alignrec.runs import METRICS, PER_USER, per_user_test, read_metrics, write_run
from alignrec.training import (
    TrainingError,
    config_to_dict,
    evaluate_test_once,
    grid_points,
    grid_search,
    resolve_configs,
    train,
)
from alignrec.training.checkpoint import (
    CHECKPOINT,
    Checkpointing,
    RunBusy,
    RunStatus,
    checkpoint_files,
    interactions_digest,
    remove_checkpoints,
    table_digest,
)

log = logging.getLogger("alignrec.benchmark")

CONTENT_KEY = "content"  # the feature table AlignRec reads (AlignRecConfig.features)
# Train keys that change neither what is learned nor the scores.
_NOT_IN_KEY = ("quiet", "eval_batch_size", "checkpoint_every_s")

# ``logger_factory(model, seed, tag)``: the metric logger of one training run (tag
# ``g<i>`` for grid point i on seed 0, None otherwise), or None for no logging.
LoggerFactory = Callable[[str, int, str | None], Any]


def default_out(dataset: str, profile: str | None = None) -> Path:
    """``results/benchmark/<dataset>/<profile>/``: the repository keeps every run's small files
    (metrics, per-user test values, history, config; weights are git-ignored), so a benchmark
    resumes in any checkout and ``--cached-only`` rebuilds its report."""
    from alignrec.benchmark.grids import get_profile
    from alignrec.paths import results_root

    return results_root() / "benchmark" / dataset / get_profile(profile).name


def run_benchmark(
    dataset: str | Dataset,
    models: list[str] | None = None,
    seeds: int | None = None,
    out: str | Path | None = None,
    features: str | None = None,
    threads: int | None = None,
    device: str = "cpu",
    logger_factory: LoggerFactory | None = None,
    grids: dict[str, dict[str, list[Any]]] | None = None,
    progress: bool = True,
    overrides: dict[str, Any] | None = None,
    skip: dict[str, str] | None = None,
    write: bool = True,
    cached_only: bool = False,
    cache_dir: str | Path | None = None,
    profile: str | None = None,
    reuse_from: str | Path | None = None,
    finished_seeds: bool = False,
) -> BenchmarkResult:
    """Benchmark ``models`` on ``dataset`` and write the report into ``out``.

    Args:
        dataset: a registered dataset name, or an in-memory :class:`Dataset`.
        models: registered model names (default: every model in ``MODELS``).
        seeds: runs per model; seed 0 searches the grid, seeds 1.. retrain the winner
            (default: the profile's).
        out: the benchmark folder (default :func:`default_out`).
        features: AlignRec's item features, as ``alignrec train --features`` takes them
            (a ``.npy``, ``raw:concat``, ``fusion:<folder>``). By default a ``content``
            table the dataset already holds, else the stage-1 features
            ``artifacts/datasets/<name>/stage1/features.npy``; without either AlignRec
            is skipped with the reason.
        threads: torch intra-op threads (None: torch's default).
        device: torch device of every run.
        logger_factory: see :data:`LoggerFactory` (the CLI and Dagster pass MLflow's).
        grids: model -> grid, replacing the profile's (a model absent from it trains with
            its defaults).
        progress: a bar over runs and one line per finished run (else the lines are logged).
        overrides: config keys set for every run (``{"epochs": 50}``), on top of
            :data:`alignrec.benchmark.grids.PROTOCOL`; a key set here is dropped from the
            grids.
        skip: models not to run, with the reason the report gives (the Dagster asset
            skips AlignRec when stage 1 was skipped).
        write: write the report. Without it only the runs are made (or found), so that
            several workers can each train some models into the same ``out`` (the Dagster
            asset runs one step per model) and a last call with every model, reusing all
            runs, writes the report.
        cached_only: train nothing: report the runs already finished in ``out``. A model
            with a run still to train is listed as skipped, saying how many of its runs are
            done, so a benchmark too large for one sitting can be reported as it stands.
        cache_dir: the encoder cache the multimodal models' modalities and a ``raw:`` or
            ``fusion:`` feature set are read from (default the dataset's under
            ``ALIGNREC_HOME``; the Dagster asset passes the one its run uses).
        profile: ``quick`` (one seed, pinned points) or ``full`` (grids, 3 seeds), see
            :data:`alignrec.benchmark.grids.PROFILES`; None: ``$ALIGNREC_BENCHMARK``, else
            ``quick``. It gives the default seeds, grids and folder.
        reuse_from: another benchmark folder: a run missing from ``out`` that is finished
            there under the same key (code, configuration, data, seed) is copied into ``out``
            instead of trained (``dvc repro`` reuses the repository's ``results/`` this way).
        finished_seeds: also report the seeds after ``seeds`` that every reported model has
            already finished in ``out`` under the same key, training none of them: a one-seed
            quick run in a folder that holds three seeds reports the three, so the report
            never shrinks below what the folder keeps (the CLI and Dagster set it when the
            seeds are the profile's).

    The report is written only once every run has finished (see
    :func:`alignrec.benchmark.report.write_report`). Models that need item modalities
    or content the dataset lacks are skipped, with the reason in the report.
    """
    from tqdm.auto import tqdm

    from alignrec.benchmark.grids import get_profile

    t_start = time.perf_counter()
    chosen = get_profile(profile)
    seeds = chosen.seeds if seeds is None else seeds
    grids = chosen.grids if grids is None else grids
    if int(seeds) < 1:
        raise ConfigError(f"seeds must be >= 1, got {seeds}")
    base = run_settings(overrides)
    plan = plan_models(models, overrides, grids)  # validates every config first
    device = str(torch_device(device))  # and the device
    names = list(plan)
    if threads:
        import torch

        torch.set_num_threads(int(threads))
    data = _load(dataset)
    out = Path(out) if out is not None else default_out(data.name, chosen.name)
    skip = {m.lower(): reason for m, reason in (skip or {}).items()}
    asked = [m for m in names if m not in skip]
    data, skipped, feature_spec = prepare_inputs(
        data, asked, features, progress=progress, cache_dir=cache_dir
    )
    skipped = {m: skip.get(m) or skipped[m] for m in names if m in skip or m in skipped}
    todo = [m for m in names if m not in skipped]
    signature = _DataSignature(data)
    bar = tqdm(
        total=len(todo) * seeds,
        disable=not progress,
        desc=f"benchmark {data.name}",
        unit="run",
        dynamic_ncols=True,
    )
    say = tqdm.write if progress else log.info

    def on_run(run: tuple[str, dict[str, Any], bool]) -> None:
        say(run_line(*run))
        bar.update(1)

    ran: dict[str, ModelRuns] = {}
    try:
        for m in todo:
            bar.set_postfix_str(m)
            runs = ModelRuns(m, grid=plan[m])
            try:
                _run_model(
                    runs,
                    data,
                    signature,
                    int(seeds),
                    base,
                    out,
                    device,
                    logger_factory,
                    on_run,
                    cached_only,
                    Path(reuse_from) if reuse_from is not None else None,
                )
            except NotCached as exc:
                skipped[m] = str(exc)
                bar.update(int(seeds) - len(runs.records))
                continue
            except TrainingError as exc:
                log.warning("%s failed: %s", m, exc)
                skipped[m] = f"training failed: {exc}"
                bar.update(int(seeds) - len(runs.records))
                continue
            ran[m] = runs
        if finished_seeds and ran:

            def grow(runs: int) -> None:  # the bar counts the seeds the folder adds
                bar.total += runs
                bar.refresh()

            seeds = _add_finished_seeds(
                ran, signature, int(seeds), base, out, on_run, cached_only,
                Path(reuse_from) if reuse_from is not None else None, on_seed=grow,
            )
    finally:
        bar.close()
    result = BenchmarkResult(
        data.name,
        out,
        int(seeds),
        ran,
        skipped,
        _shown(feature_spec) if OURS in ran else None,
        settings={k: v for k, v in base.items() if k not in _NOT_IN_KEY},
        profile=chosen.name if grids == chosen.grids else None,
        rebuilt=bool(cached_only),
    )
    if OURS in ran:
        from alignrec.benchmark.report import read_choice

        result.features_choice = read_choice(feature_spec)
    from alignrec.benchmark.report import write_report

    if not cached_only:  # a rebuilt report keeps no wall time, so rebuilding gives the same bytes
        result.wall_seconds = time.perf_counter() - t_start
    if write:
        write_report(result)
    return result


def _shown(spec: str | None) -> str | None:
    """A feature spec for the report: a file under the working directory as a relative path,
    so reports from different checkouts compare equal."""
    if spec is None or not Path(spec).is_absolute():
        return spec
    try:
        return str(Path(spec).relative_to(Path.cwd()))
    except ValueError:
        return spec


def run_line(model: str, rec: dict[str, Any], reused: bool = False) -> str:
    """One progress line for a finished run: its test figures, epochs and time."""
    test = rec.get("test") or {}
    figures = "  ".join(
        f"{k}={test[k]:.4f}" for k in ("recall@10", "recall@20", "ndcg@10", "ndcg@20") if k in test
    )
    point = rec.get("grid_point")
    return (
        f"{model} s{rec['seed']}: {figures}  valid recall@20={rec['valid']['recall@20']:.4f}  "
        f"{rec['epochs_run']} epochs (best {rec['best_epoch']}), {rec['train_seconds']:.1f}s"
        + (f"  grid winner {point}" if point else "")
        + ("  [reused]" if reused else "")
    )


def model_names(models: list[str] | None) -> list[str]:
    """Registered, lower-cased, de-duplicated names in the order given (default: all)."""
    if not models:
        return list(MODELS)
    names: list[str] = []
    for m in models:
        get_model_class(m)  # ConfigError naming the registered models
        if m.lower() not in names:
            names.append(m.lower())
    return names


def run_settings(overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The config keys every run starts from: the protocol, then ``overrides``."""
    from alignrec.benchmark.grids import PROTOCOL
    from alignrec.training.config import TrainConfig, _field_types, coerce

    # the trainer's keys take their declared types (``--set patience=20`` gives 20, not '20');
    # a model's keys are converted per model when its config is resolved
    train = _field_types(TrainConfig)
    typed = {k: coerce(k, v, train[k]) if k in train else v for k, v in (overrides or {}).items()}
    # quiet: the benchmark's own progress replaces the epoch bars
    return {"quiet": True, **PROTOCOL, **typed}


def plan_models(
    models: list[str] | None,
    overrides: dict[str, Any] | None = None,
    grids: dict[str, dict[str, list[Any]]] | None = None,
) -> dict[str, dict[str, list[Any]]]:
    """Each model's grid, in order; raises :class:`ConfigError` for an unknown model or an
    invalid config (a grid point, or an override) before anything trains."""
    base = run_settings(overrides)
    return {m: _model_grid(m, base, grids) for m in model_names(models)}


def _model_grid(model: str, base: dict[str, Any], grids) -> dict[str, list[Any]]:
    """``model``'s grid without the keys ``base`` sets; every point's config checked."""
    from alignrec.benchmark.grids import model_grid

    grid = {k: v for k, v in model_grid(model, grids).items() if k not in base}
    for point in grid_points(grid) if grid else [{}]:
        resolve_configs(model, {**base, **point})
    return grid


def _load(dataset: str | Dataset) -> Dataset:
    if isinstance(dataset, Dataset):
        return dataset
    from alignrec import data as data_layer

    return data_layer.load_dataset(dataset)


def has_content(data: Dataset) -> bool:
    """Whether items carry any content: text, images or precomputed vectors."""
    return data.has_text or data.has_images or bool(data.features)


def _has_modalities(data: Dataset) -> bool:
    return any(k.startswith(MODALITY_PREFIX) for k in data.features)


def prepare_inputs(
    data: Dataset,
    models: list[str],
    features: str | None,
    *,
    progress: bool = True,
    cache_dir: str | Path | None = None,
) -> tuple[Dataset, dict[str, str], str | None]:
    """Add what the models read to ``data``; say which models cannot run and why.

    Returns the dataset (with ``mm:<name>`` modality tables when a multimodal model is
    asked for, and AlignRec's ``content`` table), the skipped models with their
    reasons, and the name of AlignRec's feature set. ``cache_dir``: the encoder cache
    (default the dataset's under ``ALIGNREC_HOME``).
    """
    skipped: dict[str, str] = {}
    multimodal = [m for m in models if get_model_class(m).uses_modalities]
    if multimodal and not _has_modalities(data):
        if has_content(data):
            from alignrec.features.pipeline import with_modalities

            data = with_modalities(data, cache_dir, progress=progress)
        if not _has_modalities(data):
            for m in multimodal:
                skipped[m] = (
                    f"multimodal model: dataset {data.name!r} has no item modalities "
                    "(no text, images or precomputed vectors)"
                )
    spec = None
    if OURS in models:
        data, spec, reason = _content(data, features, cache_dir)
        if reason:
            skipped[OURS] = reason
    return data, skipped, spec


def stage1_path(dataset: str) -> Path:
    """Where the ``stage1_features`` asset writes a dataset's stage-1 item features."""
    from alignrec.paths import dataset_artifacts

    return dataset_artifacts(dataset) / "stage1" / "features.npy"


def _content(
    data: Dataset, features: str | None, cache_dir: str | Path | None = None
) -> tuple[Dataset, str | None, str | None]:
    """(dataset with AlignRec's ``content`` table, its spec, or the reason AlignRec is skipped)."""
    if features is not None:
        return _with_content(data, features, cache_dir), features, None
    if CONTENT_KEY in data.features:
        return data, f"dataset features[{CONTENT_KEY!r}]", None
    if not has_content(data):
        return (
            data,
            None,
            (
                f"dataset {data.name!r} has no item content (text, images or "
                "vectors), so there are no stage-1 features for AlignRec"
            ),
        )
    path = stage1_path(data.name)
    if path.is_file():
        return _with_content(data, str(path)), str(path), None
    return (
        data,
        None,
        (
            f"no stage-1 features at {path}: materialize stage1_features, run "
            f"`alignrec pretrain-features --dataset {data.name} --out {path}`, or "
            "pass --features (e.g. raw:concat)"
        ),
    )


def _with_content(data: Dataset, spec: str, cache_dir: str | Path | None = None) -> Dataset:
    """:func:`with_content_features`, and for a ``.npy`` stage 1 wrote, what decided it
    (:func:`alignrec.features.provenance.content_source`) in the dataset's feature sources,
    so that AlignRec's runs are keyed by that and not by the table's last bits."""
    import dataclasses

    from alignrec.features.provenance import content_source
    from alignrec.features.sets import FEATURE_SOURCES

    data = with_content_features(data, spec, cache_dir)
    source = content_source(spec, data.features[CONTENT_KEY]) if spec.endswith(".npy") else None
    if source is None:
        return data
    sources = {**data.meta.get(FEATURE_SOURCES, {}), CONTENT_KEY: f"stage1:{source}"}
    return dataclasses.replace(data, meta={**data.meta, FEATURE_SOURCES: sources})


class _DataSignature:
    """Digests of what a model reads from the dataset, for the run cache keys."""

    def __init__(self, data: Dataset) -> None:
        self.data = data
        self.interactions = interactions_digest(data)
        self._features: dict[str, str] = {}

    def feature(self, key: str) -> str:
        """A table's digest: of what decided it when that is recorded (an ``mm:`` table: the
        encoder cache key; stage-1 features: their ``features.source.json``, see
        :func:`_with_content`), so a run made on another CPU, whose tables differ in the last
        bits, is still found; else of its bytes."""
        from alignrec.features.sets import FEATURE_SOURCES

        if key not in self._features:
            source = self.data.meta.get(FEATURE_SOURCES, {}).get(key)
            if source:
                self._features[key] = hashlib.sha256(f"source:{source}".encode()).hexdigest()
            else:
                self._features[key] = table_digest(self.data.features[key])
        return self._features[key]

    def of(self, model: str, model_config: Any) -> dict[str, str]:
        """The interactions' digest and that of each feature table ``model`` reads."""
        keys = (
            [k for k in self.data.features if k.startswith(MODALITY_PREFIX)]
            if get_model_class(model).uses_modalities
            else []
        )
        own = getattr(model_config, "features", None)
        if isinstance(own, str) and own in self.data.features:
            keys.append(own)
        return {"interactions": self.interactions, **{k: self.feature(k) for k in sorted(keys)}}


def _resolved(model: str, overrides: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    train_cfg, model_cfg = resolve_configs(model, overrides)
    train_d = {k: v for k, v in config_to_dict(train_cfg).items() if k not in _NOT_IN_KEY}
    return {"train": train_d, "model": config_to_dict(model_cfg)}, model_cfg


def run_key(
    model: str,
    seed: int,
    configs: list[dict[str, Any]],
    data: dict[str, str],
    code: str | None = None,
) -> str:
    """The cache key of a run: model, seed, resolved config(s), data digests and, when given,
    the digest of the code that decides the run (:func:`alignrec.benchmark.code.model_code_digest`)."""
    fields: dict[str, Any] = {"model": model, "seed": seed, "configs": configs, "data": data}
    if code is not None:
        fields["code"] = code
    blob = json.dumps(fields, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def cached_record(
    folder: Path, key: str, config_key: str | None = None
) -> tuple[dict[str, Any], bool] | None:
    """``(metrics.json record, stale)`` when ``folder`` holds a finished run with ``key``
    (stale False), or, given ``config_key``, one with the same config and data made by other
    code (stale True); else None."""
    stamp = read_stamp(folder)
    if stamp is None:
        return None
    if stamp.get("key") == key:
        return read_metrics(folder), False
    if config_key is not None and stamp.get("config_key") == config_key:
        return read_metrics(folder), True
    return None


def copy_finished_run(source: Path, folder: Path, key: str) -> dict[str, Any] | None:
    """Copy the run in ``source`` to ``folder`` when it is finished under ``key``, and return
    its record; else None. The copy is made beside ``folder`` and moved into place whole, its
    stamp written last, so an interrupted copy is never taken for a finished run."""
    import shutil

    if cached_record(source, key) is None:
        return None
    partial = folder.with_name(f".{folder.name}.copying")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(source, partial, ignore=shutil.ignore_patterns(STAMP))
    shutil.copy2(source / STAMP, partial / STAMP)
    shutil.rmtree(folder, ignore_errors=True)
    partial.replace(folder)
    log.info("%s: reused the finished run in %s", folder, source)
    return read_metrics(folder)


class NotCached(Exception):
    """A run that ``cached_only`` does not train; the message is the report's reason."""


def _run_model(
    runs: ModelRuns,
    data: Dataset,
    signature: _DataSignature,
    seeds: int,
    base: dict[str, Any],
    out: Path,
    device: str,
    logger_factory: LoggerFactory | None,
    on_run: Callable[[tuple[str, dict[str, Any], bool]], Any],
    cached_only: bool = False,
    reuse_from: Path | None = None,
) -> None:
    """Seed 0 (the grid, if any), then the winner on seeds 1..n-1; each run cached.

    A run another process on this machine is training is left to it, and the next seed is
    trained, so that several processes share a model's seeds; the model then raises
    :class:`NotCached` naming those runs (a later ``--cached-only`` reports them). Only a
    grid's seed 0 is waited for by nobody: the later seeds need its winner, so it raises.
    """
    model = runs.model
    points = grid_points(runs.grid) if runs.grid else [{}]
    elsewhere: list[str] = []
    for seed in range(seeds):
        candidates = points if seed == 0 else [runs.winner]
        configs, key, config_key, code = _keys(model, seed, candidates, base, signature)
        folder = out / "runs" / model / f"s{seed}"
        # --cached-only reports a run made by other code, saying so; a training call retrains it
        found = cached_record(folder, key, config_key if cached_only else None)
        record, stale = found if found is not None else (None, False)
        if record is None and reuse_from is not None:
            record = copy_finished_run(reuse_from / "runs" / model / f"s{seed}", folder, key)
        reused = record is not None
        if record is None and cached_only:
            raise NotCached(
                f"{NOT_TRAINED}: {seed} of {seeds} runs finished (runs/{model}/s{seed} is "
                "missing; rerun without --cached-only to train it)"
            )
        if record is None:
            (folder / STAMP).unlink(missing_ok=True)
            make = _bind(logger_factory, model, seed)
            status = RunStatus(folder)
            try:
                previous = status.check_previous()
            except RunBusy as exc:
                if len(points) > 1 and seed == 0:
                    raise
                log.warning("%s s%d: %s; going on with the next seed", model, seed, exc)
                elsewhere.append(f"runs/{model}/s{seed}")
                if seed == 0:
                    runs.winner = dict(points[0])
                continue
            if previous:
                resumable = "resuming" if checkpoint_files(folder) else "no checkpoint left"
                log.warning("%s s%d: %s; %s", model, seed, previous, resumable)
            status.start(command="benchmark", model=model, seed=seed, key=key)
            checkpointing = _checkpointing(folder, key, status, f"{model} s{seed}")
            try:
                if seed == 0 and len(points) > 1:
                    record = _train_grid(
                        model, data, runs.grid, base, device, folder, make, checkpointing
                    )
                else:
                    record = _train_once(
                        model, data, {**base, **candidates[0]}, seed, device, folder, make,
                        checkpointing,
                    )
            except BaseException as exc:
                state = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
                status.finish(state, error=f"{type(exc).__name__}: {exc}")
                raise
            if record.get("stop_reason") == "signal":
                # Stopped by SIGINT/SIGTERM: the files stay for a look, but unstamped, so the
                # next benchmark resumes this run from its checkpoint; this one stops here.
                status.finish("interrupted", signal=record.get("stop_signal"), resumable=True)
                raise KeyboardInterrupt(f"{model} s{seed}: stopped by a signal ({folder})")
            io.write_json(
                folder / STAMP,
                {
                    "key": key,
                    "config_key": config_key,
                    "code": code,
                    "commit": git_commit(),
                    "device": device,
                    # torch's intra-op threads: the run's CPU time is about its time x these
                    "threads": _threads(device),
                    "seed": seed,
                    "configs": configs,
                    "point": candidates[0] if len(candidates) == 1 else None,
                },
            )
            remove_checkpoints(folder)
            status.finish(
                "finished",
                stop_reason=record.get("stop_reason"),
                best_epoch=record.get("best_epoch"),
                epochs_run=record.get("epochs_run"),
            )
        if seed == 0:
            runs.winner = dict(record.get("grid_point") or points[0])
        runs.records.append(record)
        runs.folders.append(folder)
        runs.reused.append(reused)
        runs.stale.append(stale)
        on_run((model, record, reused))
    if elsewhere:
        raise NotCached(
            f"{NOT_TRAINED}: {len(elsewhere)} of {seeds} runs are being trained by another process "
            f"({', '.join(elsewhere)}); once it is done, --cached-only reports them"
        )


def _keys(
    model: str,
    seed: int,
    candidates: list[dict[str, Any]],
    base: dict[str, Any],
    signature: _DataSignature,
) -> tuple[list[dict[str, Any]], str, str, str]:
    """``(configs, key, config_key, code)`` of one run: ``key`` with the code's digest,
    ``config_key`` without it."""
    resolved = [_resolved(model, {**base, **p}) for p in candidates]
    configs, data_keys = [r[0] for r in resolved], signature.of(model, resolved[0][1])
    code = model_code_digest(model)
    config_key = run_key(model, seed, configs, data_keys)
    return configs, run_key(model, seed, configs, data_keys, code), config_key, code


def _add_finished_seeds(
    ran: dict[str, ModelRuns],
    signature: _DataSignature,
    seeds: int,
    base: dict[str, Any],
    out: Path,
    on_run: Callable[[tuple[str, dict[str, Any], bool]], Any],
    cached_only: bool = False,
    reuse_from: Path | None = None,
    on_seed: Callable[[int], Any] | None = None,
) -> int:
    """Append seed ``seeds``, ``seeds + 1``, ... to every model's runs while each model has
    that seed finished in ``out`` under its key (the config's alone with ``cached_only``, as
    :func:`_run_model` accepts), or in ``reuse_from``, copied; return the seed count reached.
    Nothing is trained. ``on_seed(n)`` is called before the ``n`` runs of a seed are added."""
    while True:
        found = {}
        for model, runs in ran.items():
            _, key, config_key, _ = _keys(model, seeds, [runs.winner], base, signature)
            folder = out / "runs" / model / f"s{seeds}"
            hit = cached_record(folder, key, config_key if cached_only else None)
            if hit is None and reuse_from is not None:
                record = copy_finished_run(reuse_from / "runs" / model / f"s{seeds}", folder, key)
                hit = (record, False) if record is not None else None
            if hit is None:
                return seeds
            found[model] = (folder, *hit)
        if on_seed is not None:
            on_seed(len(found))
        for model, (folder, record, stale) in found.items():
            runs = ran[model]
            runs.records.append(record)
            runs.folders.append(folder)
            runs.reused.append(True)
            runs.stale.append(stale)
            on_run((model, record, True))
        seeds += 1


def _checkpointing(
    folder: Path, key: str, status: RunStatus, name: str
) -> Callable[..., Checkpointing]:
    """``f(file, **status_fields)``: a checkpoint in ``folder`` resumed only under ``key``; one
    written under another key (a changed config or data) is discarded, saying so."""

    def say(line: str) -> None:
        log.warning("%s: %s", name, line)

    def make(file: str = CHECKPOINT, **fields: Any) -> Checkpointing:
        return Checkpointing(
            folder / file, key=key, on_mismatch="fresh", status=status, say=say,
            status_fields=fields,
        )

    return make


def _threads(device: str) -> int | None:
    """The intra-op threads a CPU run trains with (None on an accelerator)."""
    import torch

    return torch.get_num_threads() if torch.device(device).type == "cpu" else None


def _bind(factory: LoggerFactory | None, model: str, seed: int) -> Callable[[str | None], Any]:
    return lambda tag=None: factory(model, seed, tag) if factory is not None else None


def _close(logger: Any, ok: bool) -> None:
    close = getattr(logger, "close", None)
    if close is not None:
        close("FINISHED" if ok else "FAILED")


def _log_test(logger: Any, result: Any, folder: Path) -> None:
    """The winner's test metrics (at its best epoch) and run files, to its logger."""
    if logger is None:
        return
    logger.log_metrics(
        {**result.test.prefixed("test"), "best_epoch": result.best_epoch}, step=result.best_epoch
    )
    logger.log_artifact(folder / METRICS)
    logger.log_artifact(folder / PER_USER)


def _train_once(
    model, data, overrides, seed, device, folder, make_logger, checkpointing=None
) -> dict[str, Any]:
    """Train one configuration, then score its best epoch on test once."""
    lg = make_logger(None)
    ok = False
    try:
        result = train(
            model, data, overrides, lg, seed=seed, device=device, evaluate_test=False,
            checkpoint=checkpointing() if checkpointing is not None else None,
        )
        evaluate_test_once(result, data, device)
        record = write_run(folder, result)
        _log_test(lg, result, folder)
        ok = True
        return record
    finally:
        _close(lg, ok)


def _train_grid(
    model, data, grid, base, device, folder, make_logger, checkpointing=None
) -> dict[str, Any]:
    """Search ``grid`` on seed 0 selecting on validation, then score the winner on test once."""
    loggers: list[Any] = []

    def factory(i: int, point: dict[str, Any]):
        lg = make_logger(f"g{i}")
        loggers.append(lg)
        return lg

    ok = False
    try:
        g = grid_search(
            model,
            data,
            grid,
            base,
            seed=0,
            device=device,
            logger_factory=factory,
            evaluate_test=False,
            checkpoints=(
                (lambda i: checkpointing(f"checkpoint-g{i}.pt", point=i))
                if checkpointing is not None
                else None
            ),
        )
        evaluate_test_once(g.best, data, device)
        record = write_run(folder, g.best, g)
        _log_test(loggers[g.winner_index], g.best, folder)
        ok = True
        return {**record, "stop_reason": "signal"} if g.interrupted else record
    finally:
        for lg in loggers:
            _close(lg, ok)


__all__ = [
    "OURS",
    "BenchmarkResult",
    "ModelRuns",
    "cached_record",
    "per_user_test",
    "default_out",
    "model_names",
    "plan_models",
    "prepare_inputs",
    "run_benchmark",
    "run_key",
    "stage1_path",
]
