"""The dataset YAML: how a folder of files becomes a canonical dataset.

One YAML per dataset describes where its files are and how to read them. The
four shipped datasets and any dataset a user brings are read through this one
schema. Unknown keys are refused with a suggestion, so a misspelled key never
silently falls back to a default. Relative paths resolve against the YAML's
own folder, never the current directory; ``root`` may start with
``${ALIGNREC_HOME}``, the artifacts folder (for generated data). Every path,
``..`` and symlinks resolved, must lie inside the YAML's folder or one of
:func:`alignrec.paths.data_roots`, so a YAML cannot read arbitrary files.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from alignrec.errors import ConfigError
from alignrec.paths import artifacts_root, data_roots

SplitName = Literal["train", "valid", "test"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Columns(_Strict):
    """Which columns hold the user id, the item id and the timestamp.

    Column names for files with a header, 0-based positions for files without.
    """

    user: str | int = "user"
    item: str | int = "item"
    timestamp: str | int | None = None


class InteractionsSpec(_Strict):
    """The interactions file(s).

    Formats:
      - ``table``: a delimited text file, one (user, item[, timestamp]) per row.
      - ``user_lists_json``: a JSON object mapping each user id to a list of item ids.
      - ``user_sequences``: one line per user: the user id then its item ids, separated by ``sep``.

    Give either ``path`` (one file) or ``paths`` (one file per split, for a dataset
    that ships its own split).
    """

    format: Literal["table", "user_lists_json", "user_sequences"] = "table"
    path: str | None = None
    paths: dict[SplitName, str] | None = None
    sep: str = ","
    header: bool = True
    encoding: str = "utf-8"
    columns: Columns = Columns()
    split_column: str | int | None = Field(
        None, description="column holding a shipped split label (table format only)"
    )
    split_labels: dict[str, SplitName] | None = Field(
        None, description="maps the values of split_column to train/valid/test"
    )

    @model_validator(mode="after")
    def _one_source(self) -> InteractionsSpec:
        if (self.path is None) == (self.paths is None):
            raise ValueError("give exactly one of 'path' or 'paths'")
        if self.paths is not None and set(self.paths) != {"train", "valid", "test"}:
            raise ValueError("'paths' needs exactly the keys train, valid and test")
        if (self.split_column is None) != (self.split_labels is None):
            raise ValueError("'split_column' and 'split_labels' go together")
        if self.split_column is not None and self.format != "table":
            raise ValueError("'split_column' needs format 'table'")
        return self


class ItemsSpec(_Strict):
    """An optional items file: one row per item with its text fields."""

    path: str
    sep: str = ","
    header: bool = True
    encoding: str = "utf-8"
    id_column: str | int = "item"
    text_columns: list[str | int] = Field(default_factory=list)
    duplicates: Literal["first", "error"] = Field(
        "first", description="what to do with repeated item ids: keep the first row, or fail"
    )


class ImagesSpec(_Strict):
    """An optional folder of images named by item id."""

    dir: str
    pattern: str = Field("{item}.jpg", description="file name of an item's image; {item} is its id")


class FeatureSpec(_Strict):
    """A precomputed modality: an ``.npy`` matrix with one row per item."""

    path: str
    ids: str | None = Field(
        None,
        description="text file naming the item id of each row, one per line; "
        "without it, row i belongs to item id i",
    )


class LabelsSpec(_Strict):
    """Optional item labels (0/1 columns, e.g. genres) for the stage-1 linear probe.

    Never used for training or for choosing stage 2's features by recommendation
    metrics; only :func:`alignrec.features.selection.label_probe` reads them.
    """

    path: str
    sep: str = ","
    header: bool = True
    encoding: str = "utf-8"
    id_column: str | int = "item"
    columns: list[str | int] = Field(min_length=1, description="the 0/1 label columns")


class SplitSpec(_Strict):
    """Filtering and splitting (see docs: 5-core, then a per-user random 8:1:1 split)."""

    core: int = Field(0, ge=0, description="k-core filter applied before splitting; 0 disables")
    seed: int = Field(2024, description="seed of the per-user random split")


class SyntheticSpec(_Strict):
    """Generate the files of a tiny synthetic dataset into ``root`` when it is missing."""

    users: int = Field(40, gt=1)
    items: int = Field(30, gt=1)
    per_user: int = Field(12, gt=2)
    seed: int = 0


class DatasetSpec(_Strict):
    """One dataset: its files and how to read them."""

    name: str
    description: str = ""
    root: Path
    id_type: Literal["int", "str"] = Field(
        "int", description="'int' refuses non-numeric user and item ids"
    )
    interactions: InteractionsSpec
    items: ItemsSpec | None = None
    images: ImagesSpec | None = None
    features: dict[str, FeatureSpec] = Field(default_factory=dict)
    labels: LabelsSpec | None = None
    split: SplitSpec = SplitSpec()
    synthetic: SyntheticSpec | None = None
    source: Path | None = Field(None, description="the YAML file this spec was read from")

    @field_validator("name")
    @classmethod
    def _name_ok(cls, v: str) -> str:
        if not v or any(c in v for c in "/\\ "):
            raise ValueError("a dataset name is non-empty and has no spaces or slashes")
        return v

    def file(self, rel: str) -> Path:
        """Absolute path of a file of this dataset."""
        return (self.root / rel).resolve()

    @property
    def ships_split(self) -> bool:
        i = self.interactions
        return i.paths is not None or i.split_column is not None


def load_spec(path: str | Path) -> DatasetSpec:
    """Read and validate a dataset YAML; errors name the file and the key."""
    path = Path(path).resolve()
    if not path.is_file():
        raise ConfigError(f"{path}: dataset YAML not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    raw.setdefault("name", path.stem)
    if "root" in raw and raw["root"] is not None:
        root = str(raw["root"]).replace("${ALIGNREC_HOME}", str(artifacts_root()))
        raw["root"] = (path.parent / root).resolve()
    raw["source"] = path
    try:
        spec = DatasetSpec.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {_explain(exc)}") from None
    _check_inside_roots(spec, path)
    return spec


def path_fields(spec: DatasetSpec) -> dict[str, Path]:
    """Every path a spec reads, keyed by its field (``root``, ``items.path`` ...), resolved.

    An image pattern is checked on a placeholder id: ``images.pattern`` names where
    ``{item}`` = ``0``'s image would be.
    """
    i = spec.interactions
    fields: dict[str, Path] = {"root": spec.root}
    if i.path is not None:
        fields["interactions.path"] = spec.file(i.path)
    for split, rel in (i.paths or {}).items():
        fields[f"interactions.paths.{split}"] = spec.file(rel)
    if spec.items is not None:
        fields["items.path"] = spec.file(spec.items.path)
    if spec.images is not None:
        fields["images.dir"] = spec.file(spec.images.dir)
        fields["images.pattern"] = (
            fields["images.dir"] / spec.images.pattern.replace("{item}", "0")
        ).resolve()
    if spec.labels is not None:
        fields["labels.path"] = spec.file(spec.labels.path)
    for mod, f in spec.features.items():
        fields[f"features.{mod}.path"] = spec.file(f.path)
        if f.ids is not None:
            fields[f"features.{mod}.ids"] = spec.file(f.ids)
    return fields


def _check_inside_roots(spec: DatasetSpec, yaml_path: Path) -> None:
    """Refuse a path that escapes the YAML's folder and the data roots (``..``, absolute,
    a symlink out): naming the YAML, the field and how to allow the folder."""
    roots = [yaml_path.parent.resolve(), *(r.resolve() for r in data_roots())]
    for key, target in path_fields(spec).items():
        if not any(target.is_relative_to(r) for r in roots):
            allowed = ", ".join(str(r) for r in roots)
            raise ConfigError(
                f"{yaml_path}: key {key!r}: {target} lies outside the folders a dataset may read "
                f"({allowed}); add its folder to ALIGNREC_DATA_ROOTS to allow it"
            )


def _explain(exc: ValidationError) -> str:
    msgs = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            key = str(err["loc"][-1])
            parent = _model_at(DatasetSpec, err["loc"][:-1])
            hint = ""
            if parent is not None:
                close = difflib.get_close_matches(key, list(parent.model_fields), n=1)
                if close:
                    hint = f" (did you mean {close[0]!r}?)"
            msgs.append(f"unknown key {loc!r}{hint}")
        else:
            msgs.append(f"key {loc!r}: {err['msg']}")
    return "; ".join(msgs)


def _model_at(model: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    """The pydantic model class found at a location path, where it is one."""
    import typing

    current: object = model
    for part in loc:
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        field = current.model_fields.get(str(part))
        if field is None:
            # a dict value: keep the value type
            return current if isinstance(part, int) else None
        ann = field.annotation
        candidates = [ann, *typing.get_args(ann)]
        nxt = None
        for c in candidates:
            for cc in [c, *typing.get_args(c)]:
                if isinstance(cc, type) and issubclass(cc, BaseModel):
                    nxt = cc
        current = nxt
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None
