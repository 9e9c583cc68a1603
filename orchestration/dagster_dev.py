"""``dagster dev`` without its false warning about the project's ``dagster.yaml``.

``python -m orchestration.dagster_dev ARGS`` is ``dagster dev ARGS`` (``scripts/ui.sh`` starts
it from the project root, as ``make ui``). Started in a folder holding a ``dagster.yaml``, with
``DAGSTER_HOME`` elsewhere, ``dagster dev`` logs that this file "will not be used to configure
Dagster". Its check compares folders only, so it also fires here, where the instance settings
sit at the top level and ``.dagster/dagster.yaml`` links to them: the file *is* used. This
wrapper drops that one log record when the home's ``dagster.yaml`` is the same file as the one
in the working folder, and keeps it otherwise (a different file in the home is a real mistake).
Nothing else changes: same process, working folder, environment and arguments.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

# The tail of the message dagster/_cli/dev.py logs on the "dagster" logger.
FALSE_WARNING = "will not be used to configure Dagster"


class _DropFalseWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return FALSE_WARNING not in record.getMessage()


def settings_are_shared(cwd: Path | None = None, home: str | None = None) -> bool:
    """Whether the ``dagster.yaml`` (or ``.yml``) that ``dagster dev`` finds in ``cwd`` is the
    very file the instance in ``home`` (default ``$DAGSTER_HOME``) reads."""
    cwd = Path.cwd() if cwd is None else Path(cwd)
    home = os.environ.get("DAGSTER_HOME") if home is None else home
    if not home:
        return False
    here = cwd / "dagster.yaml"
    if not here.exists():  # dagster dev looks at dagster.yml only when dagster.yaml is absent
        here = cwd / "dagster.yml"
    there = Path(home) / "dagster.yaml"
    try:
        return here.exists() and there.exists() and os.path.samefile(here, there)
    except OSError:
        return False


def quiet_false_warning() -> bool:
    """Drop the "will not be used" record from the ``dagster`` logger when it is false here;
    returns whether it did."""
    if not settings_are_shared():
        return False
    logging.getLogger("dagster").addFilter(_DropFalseWarning())
    return True


def main(args: list[str] | None = None) -> None:
    """Run ``dagster dev`` with ``args`` (default: this process's arguments)."""
    quiet_false_warning()
    from dagster._cli import main as dagster_main

    sys.argv = ["dagster", "dev", *(sys.argv[1:] if args is None else args)]
    dagster_main()


if __name__ == "__main__":
    main()
