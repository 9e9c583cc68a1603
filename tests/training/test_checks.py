"""The sanity checks of a finished run folder name what is wrong and where."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from alignrec.commands.train import write_run
from alignrec.serving import export_recommender
from alignrec.training import train
from alignrec.training.checks import run_problems
from tests.training.synth import clustered


@pytest.fixture
def run(tmp_path):
    data = clustered(0)
    result = train("bpr", data, {"epochs": 2, "quiet": True, "batch_size": 64}, seed=0)
    write_run(tmp_path, result)
    export_recommender(result.model, data, tmp_path / "recommender.npz")
    return tmp_path, data


def test_a_sound_run_has_no_problems(run):
    folder, data = run
    assert run_problems(folder, data.n_users, data.n_items) == []


def test_each_fault_is_named(run):
    folder, data = run
    state = torch.load(folder / "model.pt")
    name = next(iter(state))
    state[name][0, 0] = float("nan")
    torch.save(state, folder / "model.pt")
    record = json.loads((folder / "metrics.json").read_text())
    record["test"]["recall@20"] = 1.5
    record["best_epoch"] = record["epochs_run"]
    (folder / "metrics.json").write_text(json.dumps(record))

    problems = run_problems(folder, data.n_users + 1, data.n_items)
    assert f"model.pt: {name} has non-finite values" in problems
    assert "metrics.json: test/recall@20 = 1.5 is not in [0, 1]" in problems
    assert any(p.startswith("metrics.json: best_epoch 2 ") for p in problems)
    assert f"recommender.npz: user_emb has {data.n_users} rows, the dataset {data.n_users + 1}" in problems
    assert len(problems) == 4


def test_non_finite_exported_embeddings_are_named(run):
    folder, data = run
    with np.load(folder / "recommender.npz") as z:
        arrays = dict(z)
    arrays["item_emb"][3] = np.inf
    np.savez(folder / "recommender.npz", **arrays)
    assert run_problems(folder, data.n_users, data.n_items) == [
        "recommender.npz: item_emb has non-finite values"
    ]
