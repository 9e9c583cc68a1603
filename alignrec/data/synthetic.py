"""A tiny synthetic dataset with real structure, written as ordinary files.

Items fall into a few latent topics; each user prefers one topic; texts, image
colours and a precomputed feature all carry the topic, so content helps ranking.
The files go through the same YAML-driven reader as any real dataset.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from alignrec import io

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
