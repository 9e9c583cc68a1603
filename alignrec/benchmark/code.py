"""Which source code decides a model's result, and its digest, for the benchmark's run keys.

A run is reused only when it was made by the same code as the one that would make it now.
The code of a model is the closure of ``alignrec`` modules its module imports, plus the
trainer's (sampler, evaluation, early stopping), but not the other models the registry
imports, found by reading the import lines of the
source files (no import, no AST: a cheap scan). Modules that cannot change a result (errors,
file writing, paths, logging, checkpoint files, MLflow) are left out, so a change there
does not retrain the benchmark.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
from functools import cache, lru_cache
from pathlib import Path

import alignrec

PACKAGE = Path(alignrec.__file__).resolve().parent
# What every training run executes besides the model's own module.
TRAINING_ROOTS = ("alignrec.training.trainer", "alignrec.training.sampler", "alignrec.training.grid")
# Modules whose changes cannot change a run's metrics.
NEUTRAL = frozenset(
    {
        "alignrec",
        "alignrec.errors",
        "alignrec.io",
        "alignrec.paths",
        "alignrec.env",
        "alignrec.tracking",
        "alignrec.runs",
        "alignrec.training.logger",
        "alignrec.training.checkpoint",
        "alignrec.training.distributed",
        "alignrec.features.provenance",
    }
)
# Hashed, but their imports not followed: the model registry imports every model, and a run
# executes only its own.
NOT_FOLLOWED = frozenset({"alignrec.models"})
_IMPORT = re.compile(
    r"^[ \t]*(?:from[ \t]+(alignrec(?:\.\w+)*)[ \t]+import[ \t]+(?:\(([^)]*)\)|([\w \t,]*))"
    r"|import[ \t]+(alignrec(?:\.\w+)*))",
    re.M,
)


def module_file(name: str) -> Path | None:
    """The source file of module ``name`` of the package (None: not a module of it)."""
    parts = name.split(".")
    if parts[0] != "alignrec":
        return None
    if len(parts) == 1:
        return PACKAGE / "__init__.py"
    rel = Path(*parts[1:])
    for candidate in (PACKAGE / rel.with_suffix(".py"), PACKAGE / rel / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(source: str) -> set[str]:
    """The ``alignrec`` modules a source file imports (``from alignrec.x import y`` counts
    ``alignrec.x``, and ``alignrec.x.y`` when ``y`` is a submodule)."""
    found: set[str] = set()
    for m in _IMPORT.finditer(source):
        base = m.group(1) or m.group(4)
        found.add(base)
        for name in (m.group(2) or m.group(3) or "").replace("\n", " ").split(","):
            name = name.strip().split(" ")[0]
            if name and module_file(f"{base}.{name}") is not None:
                found.add(f"{base}.{name}")
    return found


def closure(roots: tuple[str, ...] | list[str]) -> list[str]:
    """Every package module reachable from ``roots`` by imports, neutral ones excluded."""
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = module_file(name)
        if path is None or name in NOT_FOLLOWED:
            continue
        todo.extend(imported_modules(path.read_text(encoding="utf-8")) - seen)
    return sorted(n for n in seen if n not in NEUTRAL and module_file(n) is not None)


@cache
def closure_digest(roots: tuple[str, ...]) -> str:
    """A digest of the source of every module in :func:`closure` of ``roots``."""
    h = hashlib.sha256()
    for name in closure(roots):
        h.update(name.encode() + b"\0")
        h.update(module_file(name).read_bytes())  # type: ignore[union-attr]
        h.update(b"\0")
    return h.hexdigest()[:16]


def code_digest(model_module: str) -> str:
    """A digest of the source of every module that decides a run of the model defined in
    ``model_module`` (e.g. ``alignrec.models.lightgcn``)."""
    return closure_digest((model_module, *TRAINING_ROOTS))


def model_code_digest(model: str) -> str:
    """:func:`code_digest` of a registered model."""
    from alignrec.models import get_model_class

    return code_digest(get_model_class(model).__module__)


@lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The checkout's commit (``+dirty`` when tracked files differ), for the record; outside a
    git checkout (a copy of the tree on another machine), ``$ALIGNREC_GIT_COMMIT`` or None."""
    import os

    try:
        run = lambda *a: subprocess.run(  # noqa: E731
            ["git", *a], cwd=PACKAGE, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        commit = run("rev-parse", "--short=12", "HEAD")
        dirty = run("status", "--porcelain", "--untracked-files=no", "--", str(PACKAGE))
    except (OSError, subprocess.SubprocessError):
        return os.environ.get("ALIGNREC_GIT_COMMIT") or None
    return commit + ("+dirty" if dirty else "")


__all__ = ["closure", "closure_digest", "code_digest", "git_commit", "imported_modules", "model_code_digest"]
