"""Registered datasets: every ``*.yaml`` in the dataset folders (see alignrec.paths)."""

from __future__ import annotations

import difflib
from pathlib import Path

from alignrec.data.spec import DatasetSpec, load_spec
from alignrec.errors import ConfigError
from alignrec.paths import dataset_dirs


def list_datasets() -> dict[str, Path]:
    """Dataset name -> YAML path; earlier folders win on a name clash."""
    found: dict[str, Path] = {}
    for folder in dataset_dirs():
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob("*.yaml")):
            found.setdefault(path.stem, path)
    return dict(sorted(found.items()))


def get_spec(name: str) -> DatasetSpec:
    """The validated spec of a registered dataset, or a clear error listing the known ones."""
    known = list_datasets()
    if name not in known:
        close = difflib.get_close_matches(name, list(known), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(
            f"unknown dataset {name!r}.{hint} Registered datasets: {', '.join(known) or 'none'}"
            " (a dataset is registered by a NAME.yaml in datasets/ or in $ALIGNREC_DATASETS)"
        )
    spec = load_spec(known[name])
    if spec.name != name:
        raise ConfigError(f"{known[name]}: 'name: {spec.name}' differs from the file name {name!r}")
    return spec
