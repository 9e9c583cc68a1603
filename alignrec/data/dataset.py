"""The canonical dataset that every model, protocol and evaluator consumes.

A :class:`Dataset` is what ``alignrec data prepare NAME`` writes and what
:func:`load_dataset` reads back: integer user and item indices, a split label per
interaction, an item table with text and image paths, and one feature matrix per
precomputed modality, row ``i`` belonging to item index ``i``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class Dataset:
    """A prepared dataset in canonical form.

    Attributes:
        name: the dataset's registered name.
        n_users: number of users; user indices are ``0..n_users-1``.
        n_items: number of items; item indices are ``0..n_items-1``.
        interactions: columns ``user`` (int32), ``item`` (int32), ``timestamp``
            (Int64, missing where unknown) and ``split`` (``train|valid|test``).
        items: columns ``item`` (index), ``item_id`` (original id, str), ``text``
            (str, may be empty), ``image`` (absolute path, or missing: test with
            ``pd.isna``), one column per
            source text field, sorted by ``item``.
        users: columns ``user`` (index) and ``user_id`` (original id, str).
        features: modality name -> float32 matrix [n_items, D].
        meta: counts and provenance written next to the tables.
    """

    name: str
    n_users: int
    n_items: int
    interactions: pd.DataFrame
    items: pd.DataFrame
    users: pd.DataFrame
    features: dict[str, np.ndarray] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)

    def pairs(self, split: str) -> np.ndarray:
        """(N, 2) int64 array of (user, item) pairs of one split."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        return self._pairs[split]

    @cached_property
    def _pairs(self) -> dict[str, np.ndarray]:
        out = {}
        labels = self.interactions["split"].to_numpy()
        ui = self.interactions[["user", "item"]].to_numpy(dtype=np.int64)
        for s in SPLITS:
            out[s] = ui[labels == s]
        return out

    @property
    def train(self) -> np.ndarray:
        return self.pairs("train")

    @property
    def valid(self) -> np.ndarray:
        return self.pairs("valid")

    @property
    def test(self) -> np.ndarray:
        return self.pairs("test")

    def matrix(self, split: str = "train") -> sp.csr_matrix:
        """Binary user x item CSR matrix of one split."""
        p = self.pairs(split)
        data = np.ones(len(p), dtype=np.float32)
        return sp.csr_matrix((data, (p[:, 0], p[:, 1])), shape=(self.n_users, self.n_items))

    @property
    def has_text(self) -> bool:
        return bool((self.items["text"].str.len() > 0).any())

    @property
    def has_images(self) -> bool:
        return bool(self.items["image"].notna().any())

    def split_sizes(self) -> dict[str, int]:
        return {s: int(len(self.pairs(s))) for s in SPLITS}

    def summary(self) -> dict[str, int]:
        """Users, items, interactions and split sizes."""
        return {
            "users": self.n_users,
            "items": self.n_items,
            "interactions": int(len(self.interactions)),
            **self.split_sizes(),
        }

    @classmethod
    def from_pairs(
        cls,
        name: str,
        n_users: int,
        n_items: int,
        train: np.ndarray,
        valid: np.ndarray,
        test: np.ndarray,
        features: dict[str, np.ndarray] | None = None,
    ) -> Dataset:
        """Build a dataset in memory from (user, item) arrays; for tests and notebooks."""
        frames = []
        for split, pairs in zip(SPLITS, (train, valid, test), strict=True):
            pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
            frames.append(
                pd.DataFrame({"user": pairs[:, 0], "item": pairs[:, 1], "split": split})
            )
        inter = pd.concat(frames, ignore_index=True)
        inter["user"] = inter["user"].astype("int32")
        inter["item"] = inter["item"].astype("int32")
        inter["timestamp"] = pd.array([pd.NA] * len(inter), dtype="Int64")
        items = pd.DataFrame(
            {
                "item": np.arange(n_items, dtype=np.int32),
                "item_id": [str(i) for i in range(n_items)],
                "text": [""] * n_items,
                "image": [None] * n_items,
            }
        )
        users = pd.DataFrame(
            {"user": np.arange(n_users, dtype=np.int32), "user_id": [str(u) for u in range(n_users)]}
        )
        return cls(name, n_users, n_items, inter, items, users, dict(features or {}))


# Files of a prepared dataset, relative to its folder.
INTERACTIONS_FILE = "interactions.parquet"
ITEMS_FILE = "items.parquet"
USERS_FILE = "users.parquet"
META_FILE = "meta.json"
FEATURES_DIR = "features"


def read_dataset(folder: str | Path, name: str | None = None) -> Dataset:
    """Read a prepared dataset from its folder."""
    folder = Path(folder)
    meta = json.loads((folder / META_FILE).read_text())
    inter = pd.read_parquet(folder / INTERACTIONS_FILE)
    items = pd.read_parquet(folder / ITEMS_FILE)
    users = pd.read_parquet(folder / USERS_FILE)
    root = meta.get("root")
    if root is not None:
        items["image"] = [
            str(Path(root) / p) if isinstance(p, str) else None for p in items["image"]
        ]
    feats = {}
    for mod in meta.get("features", {}):
        feats[mod] = np.load(folder / FEATURES_DIR / f"{mod}.npy")
    return Dataset(
        name=name or meta["name"],
        n_users=int(meta["users"]),
        n_items=int(meta["items"]),
        interactions=inter,
        items=items,
        users=users,
        features=feats,
        meta=meta,
    )
