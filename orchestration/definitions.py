"""The single Dagster entry point: assets, checks, jobs, schedules, sensors and resources."""

from __future__ import annotations

import os

import dagster as dg

from alignrec.env import configure_process
from alignrec.errors import ConfigError
from orchestration import automation
from orchestration.assets import benchmark, data, features, training
from orchestration.partitions import dataset_partitions
from orchestration.resources import ComputeResource, MLflowResource

configure_process()


def _env_int(name: str, default: int, minimum: int) -> int:
    """An integer setting from the environment; a clear error naming it when it is not one."""
    raw = os.environ.get(name, str(default))
    try:
        value = int(raw)
    except ValueError:
        value = minimum - 1
    if value < minimum:
        raise ConfigError(f"{name}={raw!r}: expected an integer >= {minimum}")
    return value


def _celery_executor() -> dg.ExecutorDefinition:
    """dagster-celery's executor: every step a task on the broker ``ALIGNREC_CELERY_BROKER``
    (default ``redis://127.0.0.1:6379/0``), results on ``ALIGNREC_CELERY_BACKEND`` (default:
    the broker), run by whichever worker takes it (README, *Scaling out*). dagster-celery is
    in requirements-scale.lock, not in the default install."""
    try:
        from dagster_celery import celery_executor
    except ImportError as exc:
        raise ConfigError(
            "ALIGNREC_EXECUTOR=celery needs dagster-celery: "
            "pip install --no-deps -r requirements-scale.lock"
        ) from exc
    broker = os.environ.get("ALIGNREC_CELERY_BROKER", "redis://127.0.0.1:6379/0")
    backend = os.environ.get("ALIGNREC_CELERY_BACKEND", broker)
    return celery_executor.configured(
        {"broker": broker, "backend": backend,
         # as deploy/celery.yaml: a worker takes a step only when it has a process free
         "config_source": {"task_acks_late": True, "worker_prefetch_multiplier": 1}}
    )  # fmt: skip


EXECUTORS = {
    "in_process": lambda: dg.in_process_executor,
    "multiprocess": lambda: dg.multiprocess_executor,
    "celery": _celery_executor,
}


def _executor() -> dg.ExecutorDefinition:
    """In-process locally (each extra process costs ~3 s on 2 cores); set
    ``ALIGNREC_EXECUTOR=multiprocess`` to fan steps out, or ``celery`` to hand them to
    Celery workers."""
    name = os.environ.get("ALIGNREC_EXECUTOR", "in_process")
    if name not in EXECUTORS:
        raise ConfigError(f"ALIGNREC_EXECUTOR={name!r}: expected one of {sorted(EXECUTORS)}")
    return EXECUTORS[name]()


data_job = dg.define_asset_job(
    "data_job",
    selection=dg.AssetSelection.groups(data.GROUP),
    partitions_def=dataset_partitions,
    description="Read, validate and split one dataset.",
)

pipeline_job = dg.define_asset_job(
    "pipeline_job",
    selection=dg.AssetSelection.all(),
    partitions_def=dataset_partitions,
    description="The whole pipeline for one dataset partition.",
)

defs = dg.Definitions(
    assets=[*data.assets, *features.assets, *training.assets, *benchmark.assets],
    asset_checks=[*data.checks, *features.checks, *training.checks],
    jobs=[data_job, pipeline_job],
    schedules=automation.schedules,
    sensors=automation.sensors,
    resources={
        "mlflow": MLflowResource(),
        "compute": ComputeResource(
            device=os.environ.get("ALIGNREC_DEVICE", "auto"),
            threads=_env_int("ALIGNREC_THREADS", 0, minimum=0),
            processes=_env_int("ALIGNREC_PROCESSES", 1, minimum=1),
        ),
    },
    executor=_executor(),
)


def pipeline_job_def() -> dg.JobDefinition:
    """``pipeline_job``, for ``dg.reconstructable``: the multiprocess executor rebuilds the
    job from this function in each step's process (``orchestration.dvc_stage`` uses it)."""
    return defs.resolve_job_def("pipeline_job")
