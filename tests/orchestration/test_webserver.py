"""End to end through the UI's API: a real ``dagster-webserver`` launches ``data_job`` on the
synthetic partition over GraphQL, and the run succeeds with its artifacts in the isolated home."""

from __future__ import annotations

import time

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.smoke]

RUN_TIMEOUT_S = 300


def _tail(path, lines: int = 40) -> str:
    return (
        "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""
    )


def test_graphql_launches_data_job_on_synthetic(tmp_path, isolated_home):
    from dagster import DagsterRunStatus
    from dagster_graphql import DagsterGraphQLClient

    from alignrec.paths import dataset_tables
    from orchestration.ui import HOST, webserver, write_instance

    home = tmp_path / "dagster_home"
    write_instance(home)
    log = tmp_path / "webserver.log"
    with webserver(home, env={"ALIGNREC_HOME": str(isolated_home)}, log=log) as url:
        client = DagsterGraphQLClient(HOST, port_number=int(url.rsplit(":", 1)[1]))
        run_id = client.submit_job_execution("data_job", tags={"dagster/partition": "synthetic"})
        deadline = time.monotonic() + RUN_TIMEOUT_S
        status = client.get_run_status(run_id)
        while (
            status
            not in (DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED)
            and time.monotonic() < deadline
        ):
            time.sleep(2)
            status = client.get_run_status(run_id)
    assert status == DagsterRunStatus.SUCCESS, f"run {run_id}: {status}\n{_tail(log)}"
    # A UI run writes under its own run folder of the isolated home, never DVC's folders
    # (orchestration/paths.py): ALIGNREC_HOME/dagster/<run id>/datasets/synthetic/tables.
    assert (isolated_home / "dagster" / run_id / "datasets" / "synthetic" / "tables" / "meta.json").is_file()
    assert not (dataset_tables("synthetic") / "meta.json").exists()
