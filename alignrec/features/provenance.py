"""What decided a stage-1 feature table, written beside it, for the run keys of its readers.

Stage 1 trains, and its output differs in the last bits from one CPU to another. Keyed by
those bytes, a benchmark run of AlignRec made on one machine is never found on another,
which retrains it although nothing that decides it changed. So stage 1 writes, beside
``features.npy``, ``features.source.json``: a digest of what decided the table

- the fusion config, without the settings that only decide how it runs (``num_threads``),
- each encoder input (:func:`alignrec.features.sets.raw_part_source`: the encoder and every
  input text or image file, or a precomputed matrix's bytes),
- the interactions and their split (the validation choice reads them),
- the source of stage 1's code (the modules :mod:`alignrec.features.pipeline` imports),
- the feature set chosen for stage 2,

and the digest of the table it describes. :func:`content_source` returns that digest only
for the table it describes, so a file replaced by other features is keyed by its bytes.
This module only writes and reads the record; it cannot change a table.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

SUFFIX = ".source.json"
# FusionConfig fields that decide how stage 1 runs, not what it computes (beyond the last
# bits of float sums, as the CPU does)
EXECUTION_ONLY = frozenset({"num_threads"})
STAGE1_ROOT = "alignrec.features.pipeline"


def sidecar(path: str | Path) -> Path:
    """``features.npy`` -> ``features.source.json``."""
    return Path(path).with_suffix(SUFFIX)


def stage1_fields(dataset: Any, outputs: Any, config: dict[str, Any]) -> dict[str, Any] | None:
    """What decides a stage-1 run on ``dataset``, less the chosen set; None when an input has
    no cache key (encoder outputs built in memory), whose tables are then keyed by bytes."""
    from alignrec.benchmark.code import closure_digest
    from alignrec.features.sets import raw_part_source, raw_parts
    from alignrec.training.checkpoint import interactions_digest

    inputs = {part: raw_part_source(outputs, part) for part in raw_parts(outputs)}
    if not inputs or any(v is None for v in inputs.values()):
        return None
    return {
        "config": {k: v for k, v in sorted(config.items()) if k not in EXECUTION_ONLY},
        "inputs": inputs,
        "interactions": interactions_digest(dataset),
        "code": closure_digest((STAGE1_ROOT,)),
    }


def source_digest(fields: dict[str, Any], chosen: str) -> str:
    """The digest of ``fields`` with the chosen set's name."""
    blob = json.dumps({**fields, "chosen": chosen}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def _table_digest(table: np.ndarray) -> str:
    from alignrec.training.checkpoint import table_digest

    # as a reader holds it: load_table casts to float32
    return table_digest(np.asarray(table).astype(np.float32, copy=False))


def write_features(
    path: str | Path, table: np.ndarray, fields: dict[str, Any] | None, chosen: str
) -> Path:
    """Write ``table`` to ``path`` (.npy) and, given ``fields``, its record beside it; each
    write atomic. A record left by an earlier table is replaced or removed (a stale one
    would not match the new table anyway, see :func:`content_source`)."""
    from alignrec.io import write_json, write_npy

    write_npy(path, table)
    record = sidecar(path)
    if fields is None:
        record.unlink(missing_ok=True)
    else:
        write_json(
            record,
            {
                "source": source_digest(fields, chosen),
                "table": _table_digest(table),
                "chosen": chosen,
                "fields": fields,
            },
        )
    return Path(path)


def content_source(path: str | Path, table: np.ndarray) -> str | None:
    """The source digest recorded beside ``path`` when the record describes ``table`` (the
    features read from it), else None: no record, an unreadable one, or another table's."""
    record = sidecar(path)
    if not record.is_file():
        return None
    try:
        data = json.loads(record.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("table") != _table_digest(table):
        return None
    source = data.get("source")
    return source if isinstance(source, str) and source else None


__all__ = ["content_source", "sidecar", "source_digest", "stage1_fields", "write_features"]
