"""Readers that turn a dataset's raw files into plain tables.

Everything read here is checked as it is read: a malformed row, an empty or
non-numeric id, an undecodable byte, an unknown item, a NaN feature or a matrix
of the wrong shape raises :class:`DataError` naming the file, row and field.
Problems the data survives (a corrupt or missing image, empty text, a repeated
item row) fall back, and are counted in :attr:`RawData.fallbacks` and logged.

Row numbers are 1-based data rows, the header not counted.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from alignrec.data.spec import DatasetSpec, InteractionsSpec, ItemsSpec
from alignrec.errors import DataError

log = logging.getLogger(__name__)

_INT_RE = re.compile(r"^[+-]?\d+$")


@dataclass
class RawData:
    """A dataset's raw content, read and checked but not yet filtered or split.

    Attributes:
        interactions: ``user_id``, ``item_id`` (str), ``timestamp`` (Int64) and
            ``split`` (train/valid/test where the dataset ships a split, else missing).
        items: ``item_id`` (str), ``text`` (str, may be empty), ``image`` (path
            relative to the dataset root, or None), plus the source text columns.
        features: modality -> (ids of the rows as str, float32 matrix).
        fallbacks: counts of the problems the data survived.
    """

    interactions: pd.DataFrame
    items: pd.DataFrame
    features: dict[str, tuple[list[str], np.ndarray]] = field(default_factory=dict)
    fallbacks: Counter = field(default_factory=Counter)


def read_raw(spec: DatasetSpec) -> RawData:
    """Read every file a spec names, checking each as it goes."""
    fallbacks: Counter = Counter()
    inter = read_interactions(spec)
    if spec.items is not None:
        items = read_items(spec.items, spec, fallbacks)
        known = set(items["item_id"])
        unknown = ~inter["item_id"].isin(known)
        if unknown.any():
            first = inter[unknown].iloc[0]
            raise DataError(
                f"interaction names item {first['item_id']!r}, which is not in the items file "
                f"{spec.file(spec.items.path)} ({int(unknown.sum())} such interactions)",
                file=first["_file"],
                row=int(first["_row"]),
                field="item",
            )
    else:
        ids = sorted(inter["item_id"].unique(), key=_sort_key(spec))
        items = pd.DataFrame({"item_id": ids, "text": [""] * len(ids)})
    items["image"] = _find_images(spec, items["item_id"], fallbacks) if spec.images else None
    if spec.items is not None:
        empty = int((items["text"].str.strip() == "").sum())
        if empty:
            fallbacks["items_with_empty_text"] += empty
            log.warning("%s: %d items have empty text; they get no text modality",
                        spec.file(spec.items.path), empty)
    features = {
        mod: read_feature(spec, mod, items["item_id"]) for mod in spec.features
    }
    inter = inter.drop(columns=["_file", "_row"])
    return RawData(inter, items.reset_index(drop=True), features, fallbacks)


def _sort_key(spec: DatasetSpec):
    return (lambda s: (int(s), "")) if spec.id_type == "int" else (lambda s: (0, s))


# ---------------------------------------------------------------- text files


def read_text(path: Path, encoding: str) -> str:
    """The whole file decoded; a bad byte raises an error naming its line.

    A UTF-8 file may start with a byte-order mark (spreadsheet exports write one): with
    ``encoding: utf-8`` it is dropped rather than read as part of the first field.
    """
    if not path.is_file():
        raise DataError("file not found", file=path)
    data = path.read_bytes()
    try:
        return data.decode(_without_bom(encoding))
    except UnicodeDecodeError as exc:
        start = exc.start + len(data) - len(exc.object)  # utf-8-sig reports past the mark
        line = data[:start].count(b"\n") + 1
        raise DataError(
            f"byte 0x{data[start]:02x} at offset {start} is not valid {encoding} "
            f"(set 'encoding:' in the dataset YAML if the file uses another one)",
            file=path,
            row=line - 1 if line > 1 else None,
        ) from None
    except LookupError:
        raise DataError(f"unknown encoding {encoding!r}", file=path) from None


def _without_bom(encoding: str) -> str:
    """The codec that reads ``encoding``, a leading UTF-8 byte-order mark dropped."""
    try:
        name = codecs.lookup(encoding).name
    except LookupError:
        return encoding  # read_text reports the unknown encoding
    return "utf-8-sig" if name == "utf-8" else encoding


def read_table(
    path: Path, *, sep: str, header: bool, encoding: str, required: list[str | int]
) -> pd.DataFrame:
    """A delimited file as strings; rows with too few or too many fields raise."""
    text = read_text(path, encoding)
    try:
        records = [r for r in csv.reader(io.StringIO(text, newline=""), delimiter=sep) if r]
    except csv.Error as exc:
        raise DataError(f"malformed file: {exc}", file=path) from None
    if not records:
        raise DataError("file is empty", file=path)
    if header:
        columns: list = [c.strip() for c in records[0]]
        records = records[1:]
    else:
        columns = list(range(len(records[0])))
    width = len(columns)
    for n, rec in enumerate(records, start=1):
        if len(rec) != width:
            kind = "truncated row" if len(rec) < width else "row with extra fields"
            raise DataError(f"{kind}: expected {width} fields, found {len(rec)}", file=path, row=n)
    for col in required:
        if col not in columns:
            have = ", ".join(map(str, columns))
            raise DataError(f"missing column (the file has: {have})", file=path, field=str(col))
    return pd.DataFrame(records, columns=columns, dtype=str)


def _check_ids(values: pd.Series, path: Path, field_name: str, id_type: str, rows=None) -> pd.Series:
    values = values.astype(str).str.strip()
    bad = values == ""
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataError("empty id", file=path, row=_row(rows, i), field=field_name)
    if id_type == "int":
        ok = values.str.match(_INT_RE)
        if not ok.all():
            i = int(np.flatnonzero(~ok.to_numpy())[0])
            raise DataError(
                f"id {values.iloc[i]!r} is not an integer (set 'id_type: str' for text ids)",
                file=path, row=_row(rows, i), field=field_name,
            )
        values = values.map(lambda s: str(int(s)))
    return values


def _row(rows, i: int) -> int:
    return int(rows[i]) if rows is not None else i + 1


def _check_timestamps(values: pd.Series, path: Path, field_name: str) -> pd.Series:
    num = pd.to_numeric(values.str.strip(), errors="coerce")
    bad = num.isna() & (values.str.strip() != "")
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataError(f"timestamp {values.iloc[i]!r} is not a number", file=path, row=i + 1,
                        field=field_name)
    return num.round().astype("Int64")


# --------------------------------------------------------------- interactions


def read_interactions(spec: DatasetSpec) -> pd.DataFrame:
    """All interactions as ``user_id, item_id, timestamp, split`` (+ source file and row)."""
    ispec = spec.interactions
    if ispec.paths is not None:
        parts = []
        for split, rel in ispec.paths.items():
            part = _read_interaction_file(spec, ispec, spec.file(rel))
            part["split"] = split
            parts.append(part)
        frame = pd.concat(parts, ignore_index=True)
    else:
        frame = _read_interaction_file(spec, ispec, spec.file(ispec.path))
    if frame.empty:
        raise DataError("no interactions", file=spec.file(ispec.path or ispec.paths["train"]))
    return frame


def _read_interaction_file(spec: DatasetSpec, ispec: InteractionsSpec, path: Path) -> pd.DataFrame:
    if ispec.format == "table":
        return _read_interaction_table(spec, ispec, path)
    if ispec.format == "user_lists_json":
        return _read_user_lists(spec, ispec, path)
    return _read_user_sequences(spec, ispec, path)


def _read_interaction_table(spec, ispec: InteractionsSpec, path: Path) -> pd.DataFrame:
    cols = ispec.columns
    required = [cols.user, cols.item]
    if cols.timestamp is not None:
        required.append(cols.timestamp)
    if ispec.split_column is not None:
        required.append(ispec.split_column)
    raw = read_table(path, sep=ispec.sep, header=ispec.header, encoding=ispec.encoding,
                     required=required)
    out = pd.DataFrame(
        {
            "user_id": _check_ids(raw[cols.user], path, str(cols.user), spec.id_type),
            "item_id": _check_ids(raw[cols.item], path, str(cols.item), spec.id_type),
        }
    )
    if cols.timestamp is not None:
        out["timestamp"] = _check_timestamps(raw[cols.timestamp], path, str(cols.timestamp))
    else:
        out["timestamp"] = pd.array([pd.NA] * len(out), dtype="Int64")
    if ispec.split_column is not None:
        labels = raw[ispec.split_column].str.strip()
        mapped = labels.map(ispec.split_labels)
        bad = mapped.isna()
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise DataError(
                f"split label {labels.iloc[i]!r} is not one of {sorted(ispec.split_labels)}",
                file=path, row=i + 1, field=str(ispec.split_column),
            )
        out["split"] = mapped
    else:
        out["split"] = None
    out["_file"] = str(path)
    out["_row"] = np.arange(1, len(out) + 1)
    return out


def _read_user_lists(spec, ispec: InteractionsSpec, path: Path) -> pd.DataFrame:
    text = read_text(path, ispec.encoding)
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"not valid JSON: {exc.msg} (column {exc.colno})", file=path,
                        row=exc.lineno) from None
    if not isinstance(obj, dict):
        raise DataError("expected a JSON object mapping user ids to lists of item ids", file=path)
    users, items = [], []
    for n, (user, lst) in enumerate(obj.items(), start=1):
        if not isinstance(lst, list):
            raise DataError(f"user {user!r}: expected a list of item ids, got {type(lst).__name__}",
                            file=path, row=n, field=str(user))
        users.extend([user] * len(lst))
        items.extend(lst)
    rows = np.repeat(np.arange(1, len(obj) + 1), [len(v) for v in obj.values()])
    out = pd.DataFrame(
        {
            "user_id": _check_ids(pd.Series(users, dtype=object).map(str), path, "user", spec.id_type, rows),
            "item_id": _check_ids(pd.Series(items, dtype=object).map(lambda x: "" if x is None else str(x)),
                                  path, "item", spec.id_type, rows),
        }
    )
    out["timestamp"] = pd.array([pd.NA] * len(out), dtype="Int64")
    out["split"] = None
    out["_file"] = str(path)
    out["_row"] = rows
    return out


def _read_user_sequences(spec, ispec: InteractionsSpec, path: Path) -> pd.DataFrame:
    text = read_text(path, ispec.encoding)
    users, items, rows = [], [], []
    sep = None if ispec.sep.strip() == "" else ispec.sep
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split(sep)
        if len(parts) < 2:
            raise DataError("truncated row: a user id needs at least one item id", file=path, row=n)
        users.extend([parts[0]] * (len(parts) - 1))
        items.extend(parts[1:])
        rows.extend([n] * (len(parts) - 1))
    rows_a = np.asarray(rows)
    out = pd.DataFrame(
        {
            "user_id": _check_ids(pd.Series(users, dtype=str), path, "user", spec.id_type, rows_a),
            "item_id": _check_ids(pd.Series(items, dtype=str), path, "item", spec.id_type, rows_a),
        }
    )
    out["timestamp"] = pd.array([pd.NA] * len(out), dtype="Int64")
    out["split"] = None
    out["_file"] = str(path)
    out["_row"] = rows_a
    return out


# ---------------------------------------------------------------------- items


def read_items(ispec: ItemsSpec, spec: DatasetSpec, fallbacks: Counter) -> pd.DataFrame:
    """The items file: one row per item id, text columns joined into ``text``."""
    path = spec.file(ispec.path)
    required = [ispec.id_column, *ispec.text_columns]
    raw = read_table(path, sep=ispec.sep, header=ispec.header, encoding=ispec.encoding,
                     required=required)
    ids = _check_ids(raw[ispec.id_column], path, str(ispec.id_column), spec.id_type)
    dup = ids.duplicated()
    if dup.any():
        if ispec.duplicates == "error":
            i = int(np.flatnonzero(dup.to_numpy())[0])
            raise DataError(f"item id {ids.iloc[i]!r} appears again", file=path, row=i + 1,
                            field=str(ispec.id_column))
        fallbacks["item_rows_repeated"] += int(dup.sum())
        log.warning("%s: %d repeated item ids; the first row of each is kept", path, int(dup.sum()))
    out = pd.DataFrame({"item_id": ids})
    fields = []
    for col in ispec.text_columns:
        name = f"text_{col}"
        out[name] = raw[col].astype(str).str.strip()
        fields.append(name)
    out["text"] = (
        out[fields].apply(lambda r: ". ".join(v for v in r if v), axis=1) if fields else ""
    )
    out = out[~dup.to_numpy()]
    return out.sort_values("item_id", key=lambda s: s.map(_sort_key(spec))).reset_index(drop=True)


def _find_images(spec: DatasetSpec, item_ids: pd.Series, fallbacks: Counter) -> list[str | None]:
    """Relative image path per item; missing or undecodable images become None."""
    from PIL import Image

    folder = spec.file(spec.images.dir)
    if not folder.is_dir():
        raise DataError("image folder not found", file=folder)
    out: list[str | None] = []
    for item in item_ids:
        rel = Path(spec.images.dir) / spec.images.pattern.format(item=item)
        path = spec.root / rel
        if not path.is_file():
            fallbacks["images_missing"] += 1
            out.append(None)
            continue
        try:
            with Image.open(path) as img:
                img.load()
                if img.width < 1 or img.height < 1:
                    raise OSError("empty image")
        except Exception as exc:  # PIL raises many types for a broken file
            fallbacks["images_corrupt"] += 1
            log.warning("%s: image does not decode (%s); the item gets no image", path, exc)
            out.append(None)
            continue
        out.append(str(rel))
    if fallbacks["images_missing"]:
        log.info("%s: %d items have no image", folder, fallbacks["images_missing"])
    return out


# ------------------------------------------------------------------- features


def read_feature(spec: DatasetSpec, modality: str, item_ids: pd.Series) -> tuple[list[str], np.ndarray]:
    """A precomputed modality matrix with the item id of each row, checked for shape and NaN."""
    fspec = spec.features[modality]
    path = spec.file(fspec.path)
    if not path.is_file():
        raise DataError(f"feature matrix of modality {modality!r} not found", file=path)
    try:
        mat = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise DataError(f"cannot read as .npy: {exc}", file=path) from None
    if mat.ndim != 2 or not np.issubdtype(mat.dtype, np.number):
        raise DataError(f"expected a 2-D numeric matrix, got shape {mat.shape} of {mat.dtype}",
                        file=path)
    if fspec.ids is not None:
        ids_path = spec.file(fspec.ids)
        lines = [ln.strip() for ln in read_text(ids_path, "utf-8").splitlines() if ln.strip()]
        ids = list(_check_ids(pd.Series(lines, dtype=str), ids_path, "id", spec.id_type))
        if len(ids) != mat.shape[0]:
            raise DataError(
                f"matrix has {mat.shape[0]} rows but {ids_path.name} names {len(ids)} ids",
                file=path,
            )
    else:
        ids = [str(i) for i in range(mat.shape[0])]
        if mat.shape[0] != len(item_ids):
            raise DataError(
                f"matrix has {mat.shape[0]} rows but the dataset has {len(item_ids)} items "
                f"(row i must be item id i; or name the row ids with 'ids:')",
                file=path,
            )
    finite = np.isfinite(mat)
    if not finite.all():
        r, c = np.argwhere(~finite)[0]
        raise DataError(f"value {mat[r, c]} is not finite ({int((~finite).sum())} such values)",
                        file=path, row=int(r) + 1, field=f"column {int(c)}")
    return ids, mat.astype(np.float32, copy=False)


def read_labels(spec: DatasetSpec, item_ids: pd.Series) -> tuple[list[str], np.ndarray]:
    """The spec's item labels as int8 [n_items, n_labels], rows in ``item_ids`` order.

    Repeated item ids keep their first row; an item without a row, or a value other
    than 0 or 1, is an error naming the file, row and column.
    """
    lspec = spec.labels
    if lspec is None:
        raise DataError(f"dataset {spec.name!r} declares no item labels ('labels:' in its YAML)")
    path = spec.file(lspec.path)
    raw = read_table(path, sep=lspec.sep, header=lspec.header, encoding=lspec.encoding,
                     required=[lspec.id_column, *lspec.columns])
    ids = _check_ids(raw[lspec.id_column], path, str(lspec.id_column), spec.id_type)
    first = ~ids.duplicated().to_numpy()
    row_of = pd.Series(np.flatnonzero(first), index=ids[first].to_numpy())
    wanted = item_ids.astype(str).to_numpy()
    missing = ~np.isin(wanted, row_of.index.to_numpy())
    if missing.any():
        raise DataError(f"no label row for item id {wanted[missing][0]!r} "
                        f"({int(missing.sum())} items lack one)", file=path,
                        field=str(lspec.id_column))
    rows = row_of.loc[wanted].to_numpy()
    out = np.zeros((len(wanted), len(lspec.columns)), np.int8)
    for j, col in enumerate(lspec.columns):
        values = raw[col].astype(str).str.strip().to_numpy()[rows]
        bad = ~np.isin(values, ["0", "1"])
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise DataError(f"label value {values[i]!r} is not 0 or 1", file=path,
                            row=int(rows[i]) + 1, field=str(col))
        out[:, j] = values == "1"
    return [str(c) for c in lspec.columns], out
