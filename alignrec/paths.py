"""Where the library finds dataset specs and writes artifacts.

Nothing here depends on the current directory: defaults are anchored at the
project root (the folder holding ``pyproject.toml`` above this package), and the
environment variables ``ALIGNREC_HOME`` (artifacts) and ``ALIGNREC_DATASETS``
(extra folders of dataset YAMLs, ``os.pathsep``-separated) override them, and
``ALIGNREC_DATA_ROOTS`` (``os.pathsep``-separated) names extra folders a dataset
YAML may read from.
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
PROJECT_ROOT = PACKAGE_DIR.parent


def artifacts_root() -> Path:
    """Root folder of every generated artifact (canonical tables, features, runs)."""
    return Path(os.environ.get("ALIGNREC_HOME", PROJECT_ROOT / "artifacts")).resolve()


def dataset_dirs() -> list[Path]:
    """Folders searched for dataset YAMLs, in priority order."""
    dirs = [Path(p) for p in os.environ.get("ALIGNREC_DATASETS", "").split(os.pathsep) if p]
    dirs.append(PROJECT_ROOT / "datasets")
    return [d.resolve() for d in dirs]


def data_roots() -> list[Path]:
    """Folders any dataset YAML may read from, besides its own folder.

    The project's ``data/`` (where ``dvc pull`` puts the shipped datasets), the artifacts
    folder (generated datasets) and every folder in ``ALIGNREC_DATA_ROOTS``.
    """
    extra = [Path(p) for p in os.environ.get("ALIGNREC_DATA_ROOTS", "").split(os.pathsep) if p]
    return [PROJECT_ROOT / "data", artifacts_root(), *(p.resolve() for p in extra)]


def dataset_artifacts(name: str) -> Path:
    """Folder of everything made from one dataset (tables, raw tables, encoder cache, stage 1)."""
    return artifacts_root() / "datasets" / name


def dataset_tables(name: str) -> Path:
    """Folder of one dataset's canonical tables (replaced as a whole on each rebuild)."""
    return dataset_artifacts(name) / "tables"


def results_root() -> Path:
    """``results/`` in the project: small, committed records of finished runs and sweeps
    (``ALIGNREC_RESULTS`` moves it)."""
    import os

    return Path(os.environ.get("ALIGNREC_RESULTS") or PROJECT_ROOT / "results")
