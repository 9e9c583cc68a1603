"""Ticks of the weekly retrain schedule and the data-change sensor, evaluated in process.

The synthetic dataset's files live under the isolated ``ALIGNREC_HOME``, so the test can make
them appear, change and vanish; the real datasets stay as they are between ticks.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import dagster as dg

from orchestration.automation import FINGERPRINT_TAG, TRIGGER_TAG, data_changed, weekly_retrain
from orchestration.definitions import defs
from orchestration.partitions import dataset_partitions

PARTITION_TAG = "dagster/partition"


def test_weekly_schedule_requests_every_partition_once():
    assert weekly_retrain.cron_schedule == "0 3 * * 0"
    assert weekly_retrain.execution_timezone == "UTC"
    assert weekly_retrain.default_status == dg.DefaultScheduleStatus.STOPPED
    assert weekly_retrain.job_name == data_changed.job_name == "retrain_job"
    when = datetime(2026, 11, 1, 3, tzinfo=UTC)
    ctx = dg.build_schedule_context(
        scheduled_execution_time=when, repository_def=defs.get_repository_def()
    )
    requests = weekly_retrain.evaluate_tick(ctx).run_requests
    partitions = dataset_partitions.get_partition_keys()
    assert [r.partition_key for r in requests] == partitions
    for r in requests:
        assert r.run_key == f"{r.partition_key}:{when.isoformat()}"
        assert r.tags[PARTITION_TAG] == r.partition_key
        assert r.tags[TRIGGER_TAG] == "weekly_retrain"
        assert r.tags["dagster/schedule_name"] == "weekly_retrain"


def test_retrain_job_is_the_models_and_what_they_read():
    job = defs.resolve_job_def("retrain_job")
    assets = {k.to_user_string() for k in job.asset_layer.executable_asset_keys}
    assert {
        "raw_data",
        "dataset",
        "encoder_outputs",
        "stage1_features",
        "bpr_model",
        "lightgcn_model",
        "alignrec_model",
    } <= assets
    assert not assets & {"zero_shot_eval", "item_cf_eval", "mask_modality_eval", "benchmark"}
    nodes = {n.name for n in job.nodes}  # the blocking checks run in the job too
    assert {
        "raw_data_raw_interactions_valid",
        "dataset_interactions_valid",
        "stage1_features_stage1_features_valid",
    } <= nodes


def _tick(cursor: str | None):
    ctx = dg.build_sensor_context(cursor=cursor, definitions=defs)
    return data_changed.evaluate_tick(ctx)


def test_sensor_runs_only_the_dataset_whose_files_changed():
    from alignrec.data.prepare import ensure_generated
    from alignrec.data.registry import get_spec

    spec = get_spec("synthetic")
    assert not spec.root.exists()  # the isolated home starts empty

    missing = _tick(None)  # data missing: skipped with its reason, no crash
    assert not missing.run_requests
    assert "synthetic skipped: its data folder" in missing.skip_message
    assert "synthetic" not in json.loads(missing.cursor)

    ensure_generated(spec)
    first = _tick(missing.cursor)  # first sighting: a baseline, no run
    assert not first.run_requests and "synthetic: first hash" in first.skip_message
    hashes = json.loads(first.cursor)
    assert set(hashes) >= {"synthetic"}

    same = _tick(first.cursor)
    assert not same.run_requests and "synthetic" not in same.skip_message
    assert json.loads(same.cursor) == hashes

    with open(spec.root / "interactions.csv", "a") as fh:
        fh.write("0,1,1\n")
    changed = _tick(same.cursor)
    assert changed.skip_message is None
    [request] = changed.run_requests
    new_hash = json.loads(changed.cursor)["synthetic"]
    assert new_hash != hashes["synthetic"]
    assert request.partition_key == "synthetic" and request.tags[PARTITION_TAG] == "synthetic"
    assert request.run_key == f"synthetic:{new_hash}"
    assert request.tags[TRIGGER_TAG] == "data_changed" and request.tags[FINGERPRINT_TAG] == new_hash
    assert json.loads(changed.cursor) == {**hashes, "synthetic": new_hash}

    (spec.root / "items.csv").unlink()  # vanished after a baseline: skipped, last hash kept
    gone = _tick(changed.cursor)
    assert (
        not gone.run_requests and "synthetic skipped: 1 input file(s) missing" in gone.skip_message
    )
    assert json.loads(gone.cursor) == json.loads(changed.cursor)
