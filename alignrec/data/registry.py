"""Registered datasets: every ``*.yaml`` in the dataset folders (see alignrec.paths)."""

from __future__ import annotations

import difflib
import os
import sys
from pathlib import Path

from alignrec.data.spec import DatasetSpec, load_spec
from alignrec.errors import ConfigError
from alignrec.paths import dataset_dirs

REGISTER_HINT = (
    "A dataset is registered by NAME.yaml in datasets/ or in a folder listed in "
    "$ALIGNREC_DATASETS. Dagster reads its dataset partitions when the code location loads: set "
    "ALIGNREC_DATASETS where Dagster runs (`make ui`, `dagster dev`, `dagster asset "
    "materialize`) and restart it (a new YAML in a folder already listed: reload the code "
    "location)."
)


def list_datasets() -> dict[str, Path]:
    """Dataset name -> YAML path; earlier folders win on a name clash."""
    found: dict[str, Path] = {}
    for folder in dataset_dirs():
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob("*.yaml")):
            found.setdefault(path.stem, path)
    return dict(sorted(found.items()))


def unknown_dataset(name: str, known: list[str] | None = None) -> ConfigError:
    """The error for a name that no dataset folder registers: a close name, the registered
    ones, and how a dataset (and a Dagster partition) is added."""
    known = list(list_datasets()) if known is None else known
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    extra = os.environ.get("ALIGNREC_DATASETS")
    where = f"ALIGNREC_DATASETS={extra}" if extra else "ALIGNREC_DATASETS is unset"
    return ConfigError(
        f"unknown dataset {name!r}.{hint} Registered datasets: {', '.join(known) or 'none'} "
        f"({where} here). {REGISTER_HINT}"
    )


def get_spec(name: str) -> DatasetSpec:
    """The validated spec of a registered dataset, or a clear error listing the known ones."""
    known = list_datasets()
    if name not in known:
        raise unknown_dataset(name, list(known))
    spec = load_spec(known[name])
    if spec.name != name:
        raise ConfigError(f"{known[name]}: 'name: {spec.name}' differs from the file name {name!r}")
    return spec


def check_registered(name: str) -> int:
    """Exit status 0 when ``name`` is registered, else 2 with the reason on stderr (the
    Makefile checks ``DATASET`` this way before Dagster refuses an unknown partition)."""
    if name in list_datasets():
        return 0
    print(f"error: {unknown_dataset(name)}", file=sys.stderr)
    return 2
