"""A tiny synthetic dataset with real structure, written as ordinary files.

Items fall into a few latent topics; each user prefers one topic; texts, image
colours and a precomputed feature all carry the topic, so content helps ranking.
The files go through the same YAML-driven reader as any real dataset.

:func:`scale_dataset` builds, in memory, a dataset of a published size (Amazon
Electronics: 192k users, 63k items, 1.7M interactions, 768-d item features) for speed
and memory measurements.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from alignrec import io
from alignrec.data.dataset import Dataset

TOPICS = [
    ("space", (30, 30, 160), "rocket stars orbit galaxy astronaut"),
    ("ocean", (20, 140, 170), "waves sailing reef island harbour"),
    ("forest", (30, 130, 40), "trees hiking moss trail cabin"),
    ("desert", (200, 160, 60), "dunes cactus heat caravan oasis"),
]


def generate(root: str | Path, *, users: int = 40, items: int = 30, per_user: int = 12,
             seed: int = 0, image_size: int = 32) -> Path:
    """Write interactions.csv, items.csv, images/ and features/ under ``root``."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    root = Path(root)
    with io.atomic_path(root, is_dir=True) as tmp:
        topic = rng.integers(0, len(TOPICS), size=items)
        pref = rng.integers(0, len(TOPICS), size=users)
        rows = []
        for u in range(users):
            w = np.where(topic == pref[u], 6.0, 1.0)
            chosen = rng.choice(items, size=min(per_user, items), replace=False, p=w / w.sum())
            for t, i in enumerate(chosen):
                rows.append((u + 1, i + 1, 1_600_000_000 + 3600 * t))
        pd.DataFrame(rows, columns=["user", "item", "timestamp"]).to_csv(
            tmp / "interactions.csv", index=False)
        vocab = " ".join(w for _, _, ws in TOPICS for w in ws.split()).split()
        titles, descs = [], []
        (tmp / "images").mkdir()
        for i in range(items):
            name, colour, words = TOPICS[topic[i]]
            ws = words.split()
            titles.append(f"{name} item {i + 1}")
            extra = rng.choice(vocab, size=2)
            descs.append(" ".join([*rng.choice(ws, size=3), *extra]))
            pix = np.clip(np.array(colour) + rng.normal(0, 20, size=(image_size, image_size, 3)), 0, 255)
            Image.fromarray(pix.astype(np.uint8)).save(tmp / "images" / f"{i + 1}.jpg", quality=90)
        pd.DataFrame({"item": np.arange(1, items + 1), "title": titles, "description": descs}).to_csv(
            tmp / "items.csv", index=False)
        (tmp / "features").mkdir()
        centers = rng.normal(size=(len(TOPICS), 16))
        feat = centers[topic] + 0.5 * rng.normal(size=(items, 16))
        np.save(tmp / "features" / "tags.npy", feat.astype(np.float32))
        (tmp / "features" / "tags_ids.txt").write_text("\n".join(str(i + 1) for i in range(items)) + "\n")
        (tmp / ".complete").write_text("ok\n")
    return root


SPEC_TEMPLATE = """\
name: {name}
description: tiny synthetic dataset (generated)
root: {root}
interactions:
  path: interactions.csv
  columns: {{user: user, item: item, timestamp: timestamp}}
items:
  path: items.csv
  id_column: item
  text_columns: [title, description]
images:
  dir: images
features:
  tags: {{path: features/tags.npy, ids: features/tags_ids.txt}}
split:
  core: 0
  seed: 7
"""


def write_spec(folder: str | Path, root: str | Path, name: str = "synthetic", **synthetic) -> Path:
    """Write a dataset YAML for generated files at ``root`` (generated on first prepare when
    ``synthetic`` settings are given). A ``root`` outside ``folder``, the project's ``data/``
    and the artifacts folder must be listed in ``ALIGNREC_DATA_ROOTS`` to be read."""
    text = SPEC_TEMPLATE.format(name=name, root=Path(root).resolve())
    if synthetic:
        text += "synthetic:\n" + "".join(f"  {k}: {v}\n" for k, v in synthetic.items())
    path = Path(folder) / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# ------------------------------------------------------------------ at scale, in memory
# Datasets of a published size for speed and memory measurements (``alignrec bench-speed
# --dataset synthetic:electronics``): built in memory with vectorised numpy, never written.


@dataclass(frozen=True)
class ScaleSpec:
    """The shape of a generated in-memory dataset.

    Item popularity follows a power law (item of rank r drawn with weight (r + 1)^-``zipf``),
    user activity a long tail above ``min_per_user``; ``topics`` latent topics tie users,
    items and the features together (a user draws ``topic_share`` of its items from its own
    topic). Each user has at least one valid and one test interaction (``holdout`` of its
    interactions each, rounded, at least 1) and at least ``min_per_user - 2`` train ones.
    """

    users: int
    items: int
    interactions: int
    dim: int = 768  # item feature dimension (0: no features)
    min_per_user: int = 5  # interactions of the least active user
    zipf: float = 0.9  # exponent of the item popularity power law
    topics: int = 50  # latent topics of users and items
    topic_share: float = 0.5  # share of a user's interactions drawn from its own topic
    holdout: float = 0.1  # share of each user's interactions in valid, and in test
    modalities: bool = True  # also expose the features as two multimodal tables mm:text, mm:image
    seed: int = 0

    def __post_init__(self) -> None:
        if self.users < 1 or self.items < 1 or self.min_per_user < 3:
            raise ValueError("need users >= 1, items >= 1 and min_per_user >= 3")
        if self.min_per_user > self.items:
            raise ValueError(f"min_per_user {self.min_per_user} exceeds the {self.items} items")
        if not self.users * self.min_per_user <= self.interactions <= self.users * self.items // 2:
            raise ValueError(
                f"interactions must lie in [users * min_per_user, users * items / 2] = "
                f"[{self.users * self.min_per_user}, {self.users * self.items // 2}], "
                f"got {self.interactions}"
            )


# Amazon Electronics as MMRec and AlignRec use it: 192,403 users, 63,001 items, 1,689,188
# interactions, 768-d unified item features.
SCALES: dict[str, ScaleSpec] = {
    "electronics": ScaleSpec(users=192_403, items=63_001, interactions=1_689_188, dim=768),
    "sports": ScaleSpec(users=35_598, items=18_357, interactions=296_337, dim=768),
    "tiny": ScaleSpec(users=120, items=60, interactions=1_200, dim=16, topics=4),
}
SCALE_PREFIX = "synthetic:"


def parse_scale(name: str) -> ScaleSpec:
    """``synthetic:<preset>[,key=value...]`` (or without the prefix) as a :class:`ScaleSpec`:
    ``synthetic:electronics``, ``synthetic:tiny,dim=0,seed=3``. Presets: :data:`SCALES`."""
    from alignrec.errors import ConfigError

    preset, *pairs = name.removeprefix(SCALE_PREFIX).split(",")
    if preset not in SCALES:
        raise ConfigError(f"unknown synthetic scale {preset!r}; presets: {', '.join(SCALES)}")
    fields = {f.name: f.type for f in dataclasses.fields(ScaleSpec)}
    changes: dict[str, object] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or key not in fields:
            raise ConfigError(f"{name!r}: expected key=value with key in {', '.join(fields)}")
        kind = {"int": int, "float": float, "bool": _bool}[str(fields[key])]
        try:
            changes[key] = kind(value)
        except ValueError as exc:
            raise ConfigError(f"{name!r}: {key}={value!r}: {exc}") from None
    try:
        return dataclasses.replace(SCALES[preset], **changes)
    except ValueError as exc:
        raise ConfigError(f"{name!r}: {exc}") from None


def _bool(value: str) -> bool:
    if value.lower() in ("1", "true", "yes"):
        return True
    if value.lower() in ("0", "false", "no"):
        return False
    raise ValueError("expected true or false")


def scale_dataset(spec: ScaleSpec | str, name: str | None = None) -> Dataset:
    """A :class:`Dataset` of ``spec``'s size, generated in memory.

    Memory is linear in users, items and interactions (plus items x dim for the features);
    nothing users x items or items x items is ever built. Electronics' size takes a few
    seconds and about 1 GiB at its peak.
    """
    if isinstance(spec, str):
        name = name or (spec if spec.startswith(SCALE_PREFIX) else SCALE_PREFIX + spec)
        spec = parse_scale(spec)
    rng = np.random.default_rng(spec.seed)
    n_u, n_i = spec.users, spec.items
    user_topic = rng.integers(0, spec.topics, n_u)
    item_topic = rng.integers(0, spec.topics, n_i)

    # Interactions per user: min_per_user each, the rest spread with long-tailed weights.
    weights = rng.pareto(1.5, n_u) + 1e-3
    extra = rng.multinomial(spec.interactions - n_u * spec.min_per_user, weights / weights.sum())
    # never more than half of the items per user, so that rejection below converges
    counts = np.minimum(spec.min_per_user + extra, max(spec.min_per_user, n_i // 2))
    users = np.repeat(np.arange(n_u, dtype=np.int64), counts)

    # Item popularity: a random item order ranked by a power law.
    pop = (np.arange(1, n_i + 1, dtype=np.float64) ** -spec.zipf)[rng.permutation(n_i)]
    # Items sorted by topic, each topic's popularity CDF a segment of one global CDF.
    by_topic = np.argsort(item_topic, kind="stable")
    cdf = np.concatenate([[0.0], np.cumsum(pop[by_topic])])
    starts = np.searchsorted(item_topic[by_topic], np.arange(spec.topics + 1))

    def draw(u: np.ndarray) -> np.ndarray:
        """One item per entry of ``u``: from the user's topic or from all items, by popularity."""
        own = rng.random(len(u)) < spec.topic_share
        t = user_topic[u]
        lo = np.where(own, cdf[starts[t]], 0.0)
        hi = np.where(own, cdf[starts[t + 1]], cdf[-1])
        empty = own & (hi <= lo)  # a topic without items
        lo[empty], hi[empty] = 0.0, cdf[-1]
        pick = np.searchsorted(cdf, lo + rng.random(len(u)) * (hi - lo), side="right") - 1
        return by_topic[np.clip(pick, 0, n_i - 1)]

    items = draw(users)
    for _ in range(1000):  # redraw repeated (user, item) pairs until every pair is distinct
        keys = users * n_i + items
        order = np.argsort(keys, kind="stable")
        dup = np.zeros(len(keys), dtype=bool)
        dup[order[1:]] = keys[order[1:]] == keys[order[:-1]]
        if not dup.any():
            break
        items[dup] = draw(users[dup])
    else:
        raise RuntimeError("could not draw distinct items per user; lower interactions")

    # Split: a random order within each user; the first holdout share to test, the next to valid.
    rank = np.empty(len(users), dtype=np.int64)
    order = np.lexsort((rng.random(len(users)), users))
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank[order] = np.arange(len(users)) - np.repeat(first, counts)
    held = np.maximum(1, np.rint(spec.holdout * counts).astype(np.int64))[users]
    test, valid = rank < held, (rank >= held) & (rank < 2 * held)
    train = ~(test | valid)
    pairs = np.stack([users, items], axis=1)

    features: dict[str, np.ndarray] = {}
    if spec.dim:
        centers = rng.standard_normal((spec.topics, spec.dim), dtype=np.float32)
        feats = rng.standard_normal((n_i, spec.dim), dtype=np.float32)
        feats += centers[item_topic]
        features["content"] = feats
        if spec.modalities:  # two halves of the same table, as views (no copy)
            half = spec.dim // 2 or spec.dim
            features["mm:text"] = feats[:, :half]
            features["mm:image"] = feats[:, half:] if spec.dim > 1 else feats
    return Dataset.from_pairs(
        name or "synthetic", n_u, n_i, pairs[train], pairs[valid], pairs[test], features=features
    )
