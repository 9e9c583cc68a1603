"""Shared fixtures: every test runs offline with artifacts in a temporary folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from alignrec.env import set_offline

set_offline()
os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SCALE_ENV = "ALIGNREC_SCALE_TESTS"
DATA_ROOT = PROJECT_ROOT / "data"
CORPUS = Path(__file__).resolve().parent / "corpus"


@pytest.fixture(autouse=True)
def isolated_home(tmp_path_factory, monkeypatch) -> Path:
    """Artifacts of each test go to a fresh folder, never the project's own."""
    home = tmp_path_factory.mktemp("alignrec_home")
    monkeypatch.setenv("ALIGNREC_HOME", str(home))
    monkeypatch.setenv("ALIGNREC_RESULTS", str(home / "results"))  # never the committed results/
    monkeypatch.delenv("ALIGNREC_BENCHMARK", raising=False)  # `BENCHMARK=full make test`: quick
    return home


@pytest.fixture
def synthetic_spec(tmp_path, monkeypatch) -> str:
    """Register a tiny generated dataset named ``tiny`` and return its name."""
    from alignrec.data.synthetic import generate, write_spec

    root = generate(tmp_path / "raw", users=24, items=18, per_user=8, seed=3)
    write_spec(tmp_path / "specs", root, name="tiny")
    monkeypatch.setenv("ALIGNREC_DATASETS", str(tmp_path / "specs"))
    monkeypatch.setenv("ALIGNREC_DATA_ROOTS", str(root))  # the files lie beside the specs folder
    return "tiny"


def needs_data(name: str):
    """Skip a smoke test when the real dataset has not been pulled with DVC."""
    return pytest.mark.skipif(
        not (DATA_ROOT / name).is_dir(), reason=f"data/{name} not pulled (run `dvc pull`)"
    )


def _scale_selected(config) -> bool:
    """Whether this session runs the ``scale`` tests: ``ALIGNREC_SCALE_TESTS=1`` (CI's
    ``.ci/run`` sets it) or a ``-m`` expression that names them (``pytest -m scale``)."""
    return os.environ.get(SCALE_ENV) == "1" or "scale" in (config.getoption("markexpr") or "")


def pytest_collection_modifyitems(config, items):
    """Leave the ``scale`` tests out of a plain run: they need Redis and PostgreSQL servers
    and requirements-scale.lock, which `make test` does not install. Selected, they fail
    (never skip) when a server cannot start, saying what to install."""
    if _scale_selected(config):
        return
    scale = [i for i in items if i.get_closest_marker("scale")]
    if scale:
        config.hook.pytest_deselected(items=scale)
        items[:] = [i for i in items if not i.get_closest_marker("scale")]
        config._alignrec_scale_left_out = len(scale)


def pytest_terminal_summary(terminalreporter, config):
    n = getattr(config, "_alignrec_scale_left_out", 0)
    if n:
        terminalreporter.write_line(
            f"{n} scale tests left out (Redis, PostgreSQL, Celery, MLflow server, multi-node "
            f"torchrun): {SCALE_ENV}=1 or -m scale runs them, after `apt-get install "
            "redis-server postgresql` and `pip install --no-deps -r requirements-scale.lock`"
        )
