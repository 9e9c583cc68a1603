"""Errors that tell the user which file, row and field is at fault."""

from __future__ import annotations

from pathlib import Path


class AlignRecError(Exception):
    """Base class of every error the library raises on purpose."""


class ConfigError(AlignRecError):
    """A configuration file or value is wrong."""


class DataError(AlignRecError):
    """Input data is malformed.

    The message always starts with the file, and adds the row (1-based line of
    the file, header included) and the field where they are known.
    """

    def __init__(
        self,
        message: str,
        *,
        file: str | Path | None = None,
        row: int | None = None,
        field: str | None = None,
    ) -> None:
        self.file = str(file) if file is not None else None
        self.row = row
        self.field = field
        self.reason = message
        where = []
        if self.file is not None:
            where.append(self.file)
        if row is not None:
            where.append(f"row {row}")
        if field is not None:
            where.append(f"field {field!r}")
        prefix = ", ".join(where)
        super().__init__(f"{prefix}: {message}" if prefix else message)
