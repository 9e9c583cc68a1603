"""Start the Dagster webserver on these definitions in a subprocess, for scripts and tests.

``make ui`` (``scripts/ui.sh``) is the interactive way; this is the programmatic one: a
context manager that serves ``orchestration.definitions`` on a free local port with its own
``DAGSTER_HOME`` and environment, waits until the code location has loaded, and stops the
whole process group (webserver, code server, run workers) on exit.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path

import requests

from alignrec.paths import PROJECT_ROOT

MODULE = "orchestration.definitions"
HOST = "127.0.0.1"

IMMEDIATE_RUNS = """\
telemetry:
  enabled: false
nux:
  enabled: false
# Runs start at once, without the daemon that `dagster dev` adds.
run_coordinator:
  module: dagster._core.run_coordinator
  class: DefaultRunCoordinator
"""

_LOCATIONS = """
{ workspaceOrError { __typename
    ... on Workspace { locationEntries { name loadStatus
        locationOrLoadError { __typename ... on PythonError { message } } } } } }
"""


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def write_instance(dagster_home: Path) -> Path:
    """A ``dagster.yaml`` whose runs launch immediately (no daemon), telemetry off."""
    dagster_home.mkdir(parents=True, exist_ok=True)
    path = dagster_home / "dagster.yaml"
    path.write_text(IMMEDIATE_RUNS)
    return path


def location_ready(url: str) -> bool:
    """Whether the webserver answers and its code location has loaded; raises if it failed."""
    try:
        reply = requests.post(f"{url}/graphql", json={"query": _LOCATIONS}, timeout=10)
    except requests.ConnectionError:
        return False
    if reply.status_code != 200:
        return False
    entries = reply.json()["data"]["workspaceOrError"].get("locationEntries", [])
    for entry in entries:
        error = entry.get("locationOrLoadError") or {}
        if error.get("__typename") == "PythonError":
            raise RuntimeError(f"code location {entry['name']} failed to load: {error['message']}")
    return bool(entries) and all(e["loadStatus"] == "LOADED" for e in entries)


@contextmanager
def webserver(
    dagster_home: Path,
    *,
    port: int | None = None,
    env: Mapping[str, str] | None = None,
    log: Path | None = None,
    timeout: float = 300.0,
) -> Iterator[str]:
    """Serve the definitions until the block ends; yields the base URL.

    ``env`` is added to this process's environment (for example an ``ALIGNREC_HOME``: runs
    launched from the UI inherit it). ``log`` receives the server's output.
    """
    port = port or free_port()
    url = f"http://{HOST}:{port}"
    cmd = [sys.executable, "-m", "dagster_webserver", "-m", MODULE, "-h", HOST, "-p", str(port)]
    full_env = {**os.environ, **(env or {}), "DAGSTER_HOME": str(dagster_home)}
    out = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        cmd,
        cwd=PROJECT_ROOT,
        env=full_env,
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + timeout
        while not location_ready(url):
            if proc.poll() is not None:
                raise RuntimeError(f"dagster-webserver exited with {proc.returncode} (log: {log})")
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"dagster-webserver not ready after {timeout:.0f} s (log: {log})"
                )
            time.sleep(1.0)
        yield url
    finally:
        _stop(proc)
        if log:
            out.close()


def _stop(proc: subprocess.Popen, grace: float = 30.0) -> None:
    """SIGTERM the server's process group; SIGKILL whatever of it is left after ``grace`` s."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    with suppress(subprocess.TimeoutExpired):
        proc.wait(grace)
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
