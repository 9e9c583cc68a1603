"""Tiny in-memory datasets with learnable structure, for fast model and trainer tests."""

from __future__ import annotations

import numpy as np

from alignrec.data.dataset import Dataset


def clustered(
    seed: int = 0,
    n_users: int = 60,
    n_items: int = 40,
    groups: int = 4,
    per_user: int = 8,
    modalities: bool = True,
) -> Dataset:
    """Users prefer the items of their own group; one valid and one test item per user.

    Features: ``content`` (what AlignRec reads) and, with ``modalities``, two noisy
    views of the group as ``mm:text`` [n_items, 6] and ``mm:image`` [n_items, 10] (what
    the multimodal baselines read).
    """
    rng = np.random.default_rng(seed)
    item_group = np.arange(n_items) % groups
    splits: dict[str, list[tuple[int, int]]] = {"train": [], "valid": [], "test": []}
    for u in range(n_users):
        own = np.flatnonzero(item_group == u % groups)
        other = np.flatnonzero(item_group != u % groups)
        chosen = np.concatenate([rng.permutation(own)[: per_user - 1], rng.permutation(other)[:1]])
        chosen = rng.permutation(chosen)
        splits["valid"].append((u, int(chosen[0])))
        splits["test"].append((u, int(chosen[1])))
        splits["train"] += [(u, int(i)) for i in chosen[2:]]
    # A content table that carries the group, for content models (AlignRec, later VBPR ...).
    content = np.eye(groups, dtype=np.float32)[item_group] + 0.3 * rng.standard_normal(
        (n_items, groups), dtype=np.float32
    )
    features = {"content": content}
    if modalities:
        for name, dim in (("text", 6), ("image", 10)):
            proj = rng.standard_normal((groups, dim), dtype=np.float32)
            features[f"mm:{name}"] = np.eye(groups, dtype=np.float32)[item_group] @ proj + (
                0.5 * rng.standard_normal((n_items, dim), dtype=np.float32)
            )
    return Dataset.from_pairs(
        "clustered", n_users, n_items, splits["train"], splits["valid"], splits["test"],
        features=features,
    )
