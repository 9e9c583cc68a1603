"""``prepare``: raw files -> canonical tables, written atomically, rebuilt only when inputs change."""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from alignrec import io
from alignrec.data import dataset as ds_mod
from alignrec.data.dataset import Dataset, read_dataset
from alignrec.data.readers import RawData, read_raw
from alignrec.data.registry import get_spec
from alignrec.data.spec import DatasetSpec
from alignrec.data.split import dedupe, k_core, random_split
from alignrec.errors import ConfigError, DataError
from alignrec.paths import dataset_tables

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
_LABELS = np.array(["train", "valid", "test"], dtype=object)
MIN_ITEMS = 2  # fewer, and there is nothing to rank: every metric would be trivially 0 or 1


def fingerprint(spec: DatasetSpec) -> str:
    """Content hash of a spec and every file it reads; any change rebuilds the tables."""
    h = hashlib.md5()
    h.update(f"schema={SCHEMA_VERSION}\n".encode())
    h.update(spec.model_dump_json(exclude={"source", "description"}).encode())
    for path in input_files(spec):
        h.update(str(path.relative_to(spec.root) if path.is_relative_to(spec.root) else path).encode())
        if path.is_file():
            with open(path, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
        else:
            h.update(b"<missing>")
    return h.hexdigest()


def input_files(spec: DatasetSpec) -> list[Path]:
    """Every file a spec reads."""
    i = spec.interactions
    files = [spec.file(p) for p in ([i.path] if i.path else list(i.paths.values()))]
    if spec.items:
        files.append(spec.file(spec.items.path))
    for f in spec.features.values():
        files.append(spec.file(f.path))
        if f.ids:
            files.append(spec.file(f.ids))
    if spec.images:
        folder = spec.file(spec.images.dir)
        if folder.is_dir():
            files.extend(sorted(p for p in folder.rglob("*") if p.is_file()))
    return files


def build_dataset(raw: RawData, spec: DatasetSpec) -> Dataset:
    """Filter, index and split raw tables into a canonical :class:`Dataset`."""
    fallbacks = Counter(raw.fallbacks)
    inter = dedupe(raw.interactions, fallbacks)
    shipped = spec.ships_split
    if shipped and spec.split.core > 0:
        raise ConfigError(f"{spec.source}: 'split.core' cannot filter a dataset that ships its split")
    source = _interactions_file(spec)
    if not shipped:
        before = len(inter)
        inter = k_core(inter, spec.split.core)
        fallbacks["interactions_removed_by_core"] += before - len(inter)
        if inter.empty:
            raise DataError(
                f"no interactions left after the {spec.split.core}-core filter (all {before} "
                f"removed; lower 'split.core' in {spec.source})",
                file=source,
            )

    sort_key = (lambda s: s.map(int)) if spec.id_type == "int" else None
    user_ids = pd.Series(inter["user_id"].unique()).sort_values(key=sort_key, ignore_index=True)
    item_ids = pd.Series(inter["item_id"].unique()).sort_values(key=sort_key, ignore_index=True)
    n_users_read = len(user_ids)
    user_index = pd.Series(np.arange(len(user_ids), dtype=np.int32), index=user_ids)
    item_index = pd.Series(np.arange(len(item_ids), dtype=np.int32), index=item_ids)
    out = pd.DataFrame(
        {
            "user": user_index.loc[inter["user_id"]].to_numpy(),
            "item": item_index.loc[inter["item_id"]].to_numpy(),
            "timestamp": inter["timestamp"].to_numpy(),
        }
    )
    if shipped:
        out["split"] = inter["split"].to_numpy()
    else:
        out["split"] = _LABELS[random_split(out["user"].to_numpy(), spec.split.seed)]
    # Validation and test users absent from training are dropped.
    train_users = np.unique(out.loc[out["split"] == "train", "user"])
    orphan = (out["split"] != "train") & ~out["user"].isin(train_users)
    if orphan.any():
        fallbacks["eval_interactions_of_users_without_train"] += int(orphan.sum())
        out = out[~orphan]
    # Re-index users so that every user has training data and indices stay dense.
    kept_users = np.unique(out["user"])
    if len(kept_users) < len(user_ids):
        remap = np.full(len(user_ids), -1, dtype=np.int32)
        remap[kept_users] = np.arange(len(kept_users), dtype=np.int32)
        out["user"] = remap[out["user"].to_numpy()]
        user_ids = user_ids.iloc[kept_users].reset_index(drop=True)
    if len(user_ids) == 0:
        raise DataError(
            f"0 users: none of the {n_users_read} users has a training interaction (their "
            f"{int(orphan.sum())} validation and test interactions are dropped without one)",
            file=source,
        )
    if len(item_ids) < MIN_ITEMS:
        raise DataError(
            f"{len(item_ids)} item(s) with interactions; a recommender needs at least "
            f"{MIN_ITEMS} items to rank",
            file=source,
        )
    out = out.sort_values(["user", "item"], kind="stable").reset_index(drop=True)
    out["user"] = out["user"].astype("int32")
    out["item"] = out["item"].astype("int32")
    out["timestamp"] = out["timestamp"].astype("Int64")
    out["split"] = out["split"].astype(str)

    items = raw.items.set_index("item_id").loc[item_ids].reset_index()
    items.insert(0, "item", np.arange(len(items), dtype=np.int32))
    fallbacks["items_without_interactions"] += len(raw.items) - len(items)
    users = pd.DataFrame({"user": np.arange(len(user_ids), dtype=np.int32), "user_id": user_ids.astype(str)})

    features = {}
    for mod, (ids, mat) in raw.features.items():
        row_of = pd.Series(np.arange(len(ids)), index=pd.Index(ids))
        missing = ~item_ids.isin(row_of.index)
        if missing.any():
            raise DataError(
                f"modality {mod!r} has no row for item id {item_ids[missing].iloc[0]!r} "
                f"({int(missing.sum())} items missing)",
                file=spec.file(spec.features[mod].path),
            )
        features[mod] = np.ascontiguousarray(mat[row_of.loc[item_ids].to_numpy()])

    meta = {
        "name": spec.name,
        "schema": SCHEMA_VERSION,
        "root": str(spec.root),
        "source": str(spec.source),
        "users": int(len(users)),
        "items": int(len(items)),
        "interactions": int(len(out)),
        "splits": {s: int((out["split"] == s).sum()) for s in ds_mod.SPLITS},
        "split_method": "shipped" if shipped else f"random(seed={spec.split.seed})",
        "core": spec.split.core,
        "features": {m: list(f.shape) for m, f in features.items()},
        "images": int(items["image"].notna().sum()),
        "texts": int((items["text"].str.len() > 0).sum()),
        "raw": {
            "interactions": int(len(raw.interactions)),
            "users": int(raw.interactions["user_id"].nunique()),
            "items": int(len(raw.items)),
        },
        "fallbacks": dict(sorted(fallbacks.items())),
    }
    return Dataset(spec.name, len(users), len(items), out, items, users, features, meta)


def _interactions_file(spec: DatasetSpec) -> Path:
    """The interactions file an empty-data error names (a shipped split's train file)."""
    i = spec.interactions
    return spec.file(i.path if i.path is not None else i.paths["train"])


def write_dataset(dataset: Dataset, folder: Path, fingerprint_: str) -> None:
    """Write all tables into ``folder`` at once: a failed write leaves the old folder intact."""
    meta = dict(dataset.meta, fingerprint=fingerprint_, folder=str(folder))
    with io.atomic_path(folder, is_dir=True) as tmp:
        dataset.interactions.to_parquet(tmp / ds_mod.INTERACTIONS_FILE, index=False)
        dataset.items.to_parquet(tmp / ds_mod.ITEMS_FILE, index=False)
        dataset.users.to_parquet(tmp / ds_mod.USERS_FILE, index=False)
        (tmp / ds_mod.FEATURES_DIR).mkdir()
        for mod, mat in dataset.features.items():
            np.save(tmp / ds_mod.FEATURES_DIR / f"{mod}.npy", mat)
        (tmp / ds_mod.META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")


def is_current(name: str, spec: DatasetSpec | None = None) -> bool:
    """Whether the prepared tables of ``name`` match its spec and files."""
    spec = spec or get_spec(name)
    meta_path = dataset_tables(name) / ds_mod.META_FILE
    if not meta_path.is_file():
        return False
    return json.loads(meta_path.read_text()).get("fingerprint") == fingerprint(spec)


def prepare(name: str, *, force: bool = False) -> Dataset:
    """Build (or reuse, when inputs are unchanged) the canonical tables of a registered dataset."""
    spec = get_spec(name)
    ensure_generated(spec)
    folder = dataset_tables(name)
    fp = fingerprint(spec)
    if not force and is_current(name, spec):
        log.info("%s: canonical tables are up to date (%s)", name, folder)
        return read_dataset(folder, name)
    raw = read_raw(spec)
    dataset = build_dataset(raw, spec)
    write_dataset(dataset, folder, fp)
    log.info("%s: wrote canonical tables to %s", name, folder)
    return read_dataset(folder, name)


def load_dataset(name: str) -> Dataset:
    """The canonical dataset ``name``, prepared first if its tables are missing or stale."""
    return prepare(name)


def ensure_generated(spec: DatasetSpec) -> None:
    """Generate a synthetic dataset's files when its spec asks for it and they are missing."""
    if spec.synthetic is None:
        return
    from alignrec.data.synthetic import generate

    marker = spec.root / ".complete"
    if not marker.is_file():
        s = spec.synthetic
        generate(spec.root, users=s.users, items=s.items, per_user=s.per_user, seed=s.seed)


# ------------------------------------------------------------------ raw tables
# The orchestration keeps the raw tables as their own artifact so that they can
# be validated before the canonical tables are built from them.

RAW_DIR = "raw"


def write_raw(raw: RawData, folder: Path) -> None:
    """Write raw tables (and features with their row ids) atomically into ``folder``."""
    with io.atomic_path(folder, is_dir=True) as tmp:
        raw.interactions.to_parquet(tmp / "interactions.parquet", index=False)
        raw.items.to_parquet(tmp / "items.parquet", index=False)
        for mod, (ids, mat) in raw.features.items():
            np.save(tmp / f"{mod}.npy", mat)
            (tmp / f"{mod}.ids.txt").write_text("\n".join(ids) + "\n")
        (tmp / "fallbacks.json").write_text(json.dumps(dict(raw.fallbacks), indent=2) + "\n")


def read_raw_tables(folder: Path, spec: DatasetSpec) -> RawData:
    """Read what :func:`write_raw` wrote."""
    inter = pd.read_parquet(folder / "interactions.parquet")
    items = pd.read_parquet(folder / "items.parquet")
    items["image"] = items["image"].astype(object).where(items["image"].notna(), None)
    features = {}
    for mod in spec.features:
        ids = (folder / f"{mod}.ids.txt").read_text().split()
        features[mod] = (ids, np.load(folder / f"{mod}.npy"))
    fallbacks = Counter(json.loads((folder / "fallbacks.json").read_text()))
    return RawData(inter, items, features, fallbacks)
