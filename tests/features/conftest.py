"""Tiny synthetic datasets with texts and JPEG posters for the feature tests."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from alignrec.data.dataset import Dataset

TEXTS = [
    "A space opera about rebels fighting an empire.",
    "Two detectives chase a killer through a rainy city.",
    "",  # item 2 has no text
    "A romantic comedy set in Paris in the spring.",
    "A haunted house frightens a young family.",
    "Animated toys come to life when nobody watches.",
]


def write_jpeg(path, colour: tuple[int, int, int], size=(23, 34)) -> str:
    from PIL import Image

    img = Image.new("RGB", size, colour)
    for x in range(0, size[0], 4):  # a little structure so patches differ
        for y in range(size[1]):
            img.putpixel((x, y), (255 - colour[0], colour[1], 255 - colour[2]))
    img.save(path, format="JPEG", quality=90)
    return str(path)


def tiny_dataset(tmp_path, n_users: int = 8, seed: int = 0) -> Dataset:
    """6 items (item 2: no text, item 4: no image), 8 users, a few interactions each."""
    rng = np.random.default_rng(seed)
    n_items = len(TEXTS)
    train, valid, test = [], [], []
    for u in range(n_users):
        items = rng.permutation(n_items)[:4]
        train += [(u, int(i)) for i in items[:2]]
        valid.append((u, int(items[2])))
        test.append((u, int(items[3])))
    ds = Dataset.from_pairs(
        "tiny", n_users, n_items, np.array(train), np.array(valid), np.array(test)
    )
    colours = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (220, 220, 20), None, (120, 60, 200)]
    images = [
        None if c is None else write_jpeg(tmp_path / f"{i}.jpg", c) for i, c in enumerate(colours)
    ]
    items = ds.items.copy()
    items["text"] = TEXTS
    items["image"] = images
    return dataclasses.replace(ds, items=items)


@pytest.fixture(scope="package", autouse=True)
def one_torch_thread():
    """Tiny tensors run fastest on one thread; several spin badly when the 2 cores are shared."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def tiny(tmp_path) -> Dataset:
    return tiny_dataset(tmp_path)


@pytest.fixture(scope="session")
def tiny_outputs(tmp_path_factory):
    """Encoder outputs of the tiny dataset (real MiniLM and EfficientNet), computed once."""
    from alignrec.features.cache import extract

    root = tmp_path_factory.mktemp("tiny")
    ds = tiny_dataset(root)
    return ds, extract(ds, root / "encoders", progress=False)
