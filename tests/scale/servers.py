"""Real servers for the scale-out tests, on loopback: Redis (the Celery broker), PostgreSQL
(MLflow's and Dagster's store) and an MLflow tracking server.

Each server runs under ``timeout``, so that it dies after ``ALIGNREC_TEST_SERVER_SECONDS``
(default 900) even when the test process is killed before its teardown; the teardown stops it
first, killing its whole process group. A server that cannot start fails the test with the
command that installs it: these tests never skip (see tests/conftest.py for how they are
selected).
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
INSTALL = "apt-get install redis-server postgresql"
INSTALL_PY = "pip install --no-deps -r requirements-scale.lock"
LIFETIME = int(os.environ.get("ALIGNREC_TEST_SERVER_SECONDS", "900"))
BIN = Path(sys.executable).parent


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def need_module(name: str) -> None:
    """Fail (not skip) when a package of the scale lock is missing."""
    try:
        __import__(name)
    except ImportError as exc:
        pytest.fail(f"{name} is not installed ({exc}): {INSTALL_PY}", pytrace=False)


def _which(name: str, *debian: str) -> str:
    """``name`` on PATH, else in Debian's versioned folders (``/usr/lib/postgresql/15/bin``)."""
    found = shutil.which(name)
    if found:
        return found
    for pattern in debian:
        hits = sorted(glob.glob(pattern), key=lambda p: [int(x) for x in p.split("/") if x.isdigit()])
        if hits:
            return hits[-1]
    pytest.fail(f"{name} not found: {INSTALL}", pytrace=False)


@dataclass
class Server:
    """A started server: its process (leader of its own process group) and log file."""

    name: str
    proc: subprocess.Popen
    log: Path

    def tail(self, n: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, grace: float = 15.0) -> None:
        """Signal the whole group, then kill what is left after ``grace`` seconds."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(grace)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # children the leader left behind
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)


def start(name: str, cmd: list[str], log: Path, env: dict | None = None, cwd=None,
          lifetime: int = LIFETIME, user: str | None = None) -> Server:
    """``cmd`` under ``timeout lifetime`` in a new process group, output to ``log``."""
    # --foreground keeps the command in this group, so that stop() reaches all of it
    full = ["timeout", "--foreground", "-s", "TERM", "-k", "10", str(lifetime), *cmd]
    if user:
        full = ["runuser", "-u", user, "--", *full]
    with open(log, "ab") as out:
        proc = subprocess.Popen(full, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                start_new_session=True)  # fmt: skip
    return Server(name, proc, log)


def wait_until(server: Server, ready, what: str, seconds: float = 120.0) -> None:
    """Poll ``ready()`` until it is true; fail with the server's log when it dies or is late."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not server.alive():
            pytest.fail(f"{server.name} exited ({server.proc.returncode}) before {what}:\n"
                        f"{server.tail()}", pytrace=False)  # fmt: skip
        with contextlib.suppress(Exception):
            if ready():
                return
        time.sleep(0.2)
    server.stop()
    pytest.fail(f"{server.name}: no {what} after {seconds:.0f} s:\n{server.tail()}", pytrace=False)


def _redis_ping(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
        s.sendall(b"PING\r\n")
        return s.recv(16).startswith(b"+PONG")


@contextlib.contextmanager
def redis(tmp: Path) -> Iterator[str]:
    """Debian's ``redis-server`` on 127.0.0.1:<free port>, no persistence; its URL."""
    exe = _which("redis-server")
    port = free_port()
    cmd = [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
           "--dir", str(tmp), "--protected-mode", "yes"]  # fmt: skip
    server = start("redis-server", cmd, tmp / "redis.log")
    try:
        wait_until(server, lambda: _redis_ping(port), "PONG", 30)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        server.stop()


@dataclass(frozen=True)
class Postgres:
    """A running PostgreSQL cluster: connect as ``user`` (trust auth, loopback only)."""

    host: str
    port: int
    user: str

    def url(self, db: str, driver: str = "postgresql+psycopg2") -> str:
        """SQLAlchemy's URL of ``db`` (psycopg2 named: SQLAlchemy 2.1 defaults to psycopg 3)."""
        return f"{driver}://{self.user}@{self.host}:{self.port}/{db}"

    def create_database(self, db: str) -> str:
        """A new empty database; its SQLAlchemy URL."""
        import psycopg2

        conn = psycopg2.connect(host=self.host, port=self.port, user=self.user, dbname="postgres")
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{db}"')
        conn.close()
        return self.url(db)

    def query(self, db: str, sql: str) -> list[tuple]:
        import psycopg2

        conn = psycopg2.connect(host=self.host, port=self.port, user=self.user, dbname=db)
        try:
            with conn.cursor() as cur:
                cur.execute(sql)
                return cur.fetchall()
        finally:
            conn.close()


@contextlib.contextmanager
def postgres() -> Iterator[Postgres]:
    """Debian's PostgreSQL: ``initdb`` into a fresh folder, ``postgres`` on 127.0.0.1:<free
    port>. PostgreSQL refuses to run as root, so as root it runs as the ``postgres`` user
    (created by Debian's package) through ``runuser``."""
    need_module("psycopg2")
    initdb = _which("initdb", "/usr/lib/postgresql/*/bin/initdb")
    exe = _which("postgres", "/usr/lib/postgresql/*/bin/postgres")
    user = None
    if os.geteuid() == 0:
        try:
            import pwd

            pw = pwd.getpwnam("postgres")
        except KeyError:
            pytest.fail(f"running as root and there is no 'postgres' user: {INSTALL}", pytrace=False)
        user = "postgres"
    root = Path(tempfile.mkdtemp(prefix="alignrec-pg-"))
    if user:
        os.chown(root, pw.pw_uid, pw.pw_gid)
    data = root / "data"
    run = ["runuser", "-u", user, "--"] if user else []
    init = subprocess.run([*run, initdb, "-D", str(data), "-U", "alignrec", "-A", "trust",
                           "-E", "UTF8", "--locale=C", "--no-sync"],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    if init.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        pytest.fail(f"initdb failed ({INSTALL}):\n{init.stdout[-2000:]}{init.stderr[-2000:]}",
                    pytrace=False)  # fmt: skip
    port = free_port()
    log = root / "postgres.log"
    if user:
        log.touch()
        os.chown(log, pw.pw_uid, pw.pw_gid)
    cmd = [exe, "-D", str(data), "-p", str(port), "-h", "127.0.0.1", "-k", str(root),
           "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
           "-c", "max_connections=200", "-c", "shared_buffers=32MB"]  # fmt: skip
    server = start("postgres", cmd, log, user=user)
    pg = Postgres("127.0.0.1", port, "alignrec")
    try:
        wait_until(server, lambda: pg.query("postgres", "SELECT 1") == [(1,)], "connection", 60)
        yield pg
    finally:
        server.stop(signal.SIGINT)  # fast shutdown
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def mlflow_server(backend: str, tmp: Path) -> Iterator[str]:
    """``mlflow server`` on 127.0.0.1:<free port> over ``backend``, serving artifacts from
    ``tmp/artifacts`` (clients upload through the server); its ``http://`` URL."""
    import urllib.request

    port = free_port()
    artifacts = tmp / "artifacts"
    artifacts.mkdir(parents=True, exist_ok=True)
    cmd = [str(BIN / "mlflow"), "server", "--backend-store-uri", backend,
           "--artifacts-destination", str(artifacts), "--host", "127.0.0.1", "--port", str(port),
           "--workers", "2"]  # fmt: skip
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "PATH": f"{BIN}:{os.environ['PATH']}"}
    server = start("mlflow server", cmd, tmp / "mlflow-server.log", env=env)
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
            return r.status == 200

    try:
        wait_until(server, healthy, "/health", 180)
        yield url
    finally:
        server.stop(grace=5)  # uvicorn waits on idle keep-alive connections


def dagster_home(pg: Postgres, folder: Path, db: str) -> dict[str, str]:
    """A ``DAGSTER_HOME`` in ``folder`` holding the shipped deploy/dagster-postgres.yaml, its
    storage in a new database ``db``, its tables created once by ``dagster instance migrate``
    (processes that open an empty database at the same moment race to create them); the
    environment variables that select and fill it."""
    need_module("dagster_postgres")
    pg.create_database(db)
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "deploy" / "dagster-postgres.yaml", folder / "dagster.yaml")
    env = {
        "DAGSTER_HOME": str(folder),
        "DAGSTER_PG_HOST": pg.host,
        "DAGSTER_PG_PORT": str(pg.port),
        "DAGSTER_PG_USER": pg.user,
        "DAGSTER_PG_PASSWORD": "",
        "DAGSTER_PG_DB": db,
    }
    migrate = subprocess.run([str(BIN / "dagster"), "instance", "migrate"], env={**os.environ, **env},
                             capture_output=True, text=True, timeout=120)  # fmt: skip
    assert migrate.returncode == 0, migrate.stderr[-3000:]
    return env
