"""Dagster's run and event storage on PostgreSQL (deploy/dagster-postgres.yaml): a
materialization launched from the command line is seen by every other process on the
instance (the webserver, the daemon and the Celery workers read the same database)."""

from __future__ import annotations

import json
import os
import subprocess

import dagster as dg
import pytest

from tests.scale import servers

pytestmark = [pytest.mark.scale, pytest.mark.slow]


def test_a_materialization_through_postgres_storage_is_seen_by_other_processes(
    postgres, tmp_path, monkeypatch
):
    home = servers.dagster_home(postgres, tmp_path / "dagster", "dagster_cli")
    env = {**os.environ, **home, "ALIGNREC_HOME": str(tmp_path / "home"),
           "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}", "OMP_NUM_THREADS": "1",
           "ALIGNREC_THREADS": "1"}  # fmt: skip
    config = {"ops": {"bpr_model": {"config": {"sets": {"epochs": "2"}}}}}
    cmd = [str(servers.BIN / "dagster"), "asset", "materialize", "-m", "orchestration.definitions",
           "--select", "*bpr_model", "--partition", "synthetic", "--config-json", json.dumps(config)]  # fmt: skip
    run = subprocess.run(cmd, env=env, cwd=servers.ROOT, capture_output=True, text=True,
                         timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]

    # another process on the instance (what `dagster-webserver` or the daemon would be)
    listed = subprocess.run([str(servers.BIN / "dagster"), "run", "list"], env=env,
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert listed.returncode == 0, listed.stderr[-3000:]
    ids = [line.split()[1] for line in listed.stdout.splitlines() if line.startswith("Run: ")]

    for key, value in home.items():
        monkeypatch.setenv(key, value)
    with dg.DagsterInstance.get() as instance:
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        [record] = instance.get_run_records()
        assert ids == [record.dagster_run.run_id]
        assert record.dagster_run.status == dg.DagsterRunStatus.SUCCESS
        assert record.dagster_run.tags["dagster/partition"] == "synthetic"
        event = instance.get_latest_materialization_event(dg.AssetKey("bpr_model"))
        assert event is not None and event.run_id == record.dagster_run.run_id
        assert event.asset_materialization.partition == "synthetic"
        assert event.asset_materialization.metadata["epochs_run"].value == 2
        check = instance.event_log_storage.get_latest_asset_check_execution_by_key(
            [dg.AssetCheckKey(dg.AssetKey("bpr_model"), "bpr_model_valid")]
        )
        [execution] = check.values()
        assert execution.status.value == "SUCCEEDED"
    # and it is all in the database, nowhere else
    assert postgres.query("dagster_cli", "SELECT status FROM runs") == [("SUCCESS",)]
    assert not (tmp_path / "dagster" / "history").exists()
