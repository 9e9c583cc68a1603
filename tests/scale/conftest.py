"""The servers the scale-out tests share, started once per session and stopped at its end:
Redis, PostgreSQL and an MLflow tracking server on that PostgreSQL (see servers.py)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from tests.scale import servers
from tests.torch_threads import one_torch_thread  # noqa: F401  (autouse fixture)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    with servers.redis(tmp_path_factory.mktemp("redis")) as url:
        yield url


@pytest.fixture(scope="session")
def postgres():
    with servers.postgres() as pg:
        yield pg


@pytest.fixture(scope="session")
def mlflow_server(postgres, tmp_path_factory):
    """An MLflow tracking server on PostgreSQL (database ``mlflow``): ``url``, and
    ``artifacts``, the folder it stores artifacts in (clients upload through it)."""
    tmp = tmp_path_factory.mktemp("mlflow_server")
    with servers.mlflow_server(postgres.create_database("mlflow"), tmp) as url:
        yield SimpleNamespace(url=url, artifacts=tmp / "artifacts")
