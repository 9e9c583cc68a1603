"""Where an asset writes, so that DVC, Dagster and the registry agree on what made each file.

The rule:

- A run tagged ``alignrec/dvc_stage`` (what ``python -m orchestration.dvc_stage``, hence
  ``dvc repro``, launches) writes where ``dvc.yaml`` declares its outputs: the layout under
  ``ALIGNREC_HOME`` (params.yaml's ``artifacts``) itself: ``datasets/<name>/...``,
  ``runs/<name>/<model>/``, ``benchmark/<name>/``, ``provenance/<name>/``.
- Every other run (the UI, ``dagster asset materialize``, ``make pipeline``, the schedule and
  the sensor) writes the same layout under ``ALIGNREC_HOME/dagster/<run id>/``, where the run
  id is the run's root run: a re-execution writes where the run it re-executes wrote, so
  training and the benchmark resume there. Such a run never writes a file DVC tracks, and DVC
  never replaces a file it made.
- The frozen encoders' cache is DVC's ``datasets/<name>/encoders/`` for a DVC stage and
  ``dagster/encoders/<name>/`` for the other runs, which share it (entries are keyed by
  encoder version and input hash, so a run reuses only what matches its items).

Assets compute their output folders here; downstream assets read the paths their upstream
asset returned, never recompute them. :mod:`orchestration.provenance` records which run made
each folder.
"""

from __future__ import annotations

from pathlib import Path

DVC_STAGE_TAG = "alignrec/dvc_stage"
RUNS_DIR = "dagster"  # under ALIGNREC_HOME: the folders of runs that are not DVC stages
ENCODERS_DIR = "encoders"


def _run(context) -> tuple[dict[str, str], str]:
    """The run's tags and the id its folder is named after (the root run of a re-execution).
    A directly invoked asset (a test) has no run: no tags, and its ``run_id``."""
    from dagster._core.errors import DagsterInvalidPropertyError

    try:
        run = context.run
    except DagsterInvalidPropertyError:
        return {}, context.run_id
    return dict(run.tags), run.root_run_id or run.run_id


def dvc_stage(context) -> str | None:
    """The DVC stage the run belongs to (its ``alignrec/dvc_stage`` tag), else None."""
    return _run(context)[0].get(DVC_STAGE_TAG) or None


def output_root(context) -> Path:
    """Where the run's assets write: ``ALIGNREC_HOME`` for a DVC stage, else
    ``ALIGNREC_HOME/dagster/<root run id>``."""
    from alignrec.paths import artifacts_root

    tags, run_key = _run(context)
    if tags.get(DVC_STAGE_TAG):
        return artifacts_root()
    return artifacts_root() / RUNS_DIR / run_key


def dataset_folder(context, name: str) -> Path:
    """``<output root>/datasets/<name>``: raw and canonical tables, stage 1, the protocols."""
    return output_root(context) / "datasets" / name


def encoder_cache(context, name: str) -> Path:
    """The frozen encoders' cache of dataset ``name`` for this run (see the module)."""
    from alignrec.paths import artifacts_root

    if dvc_stage(context):
        return artifacts_root() / "datasets" / name / ENCODERS_DIR
    return artifacts_root() / RUNS_DIR / ENCODERS_DIR / name
