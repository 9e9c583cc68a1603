"""Grid search selects on validation only: the test split is never read before the winner is fixed."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from alignrec.data.dataset import Dataset
from alignrec.errors import ConfigError
from alignrec.training import grid as grid_mod
from alignrec.training import grid_points, grid_search
from alignrec.training import trainer as trainer_mod
from tests.training.synth import clustered

BASE = {"quiet": True, "batch_size": 64, "epochs": 3}
GRID = {"learning_rate": [1e-4, 0.05], "reg_weight": [0.0, 1e-3]}


@dataclass(frozen=True)
class LockedTestDataset(Dataset):
    """Raises on any read of the test split while ``lock[0]`` is True."""

    lock: list = None  # type: ignore[assignment]

    def pairs(self, split: str) -> np.ndarray:
        if split == "test" and self.lock[0]:
            raise AssertionError("the test split was read during model selection")
        return super().pairs(split)


def _locked(ds: Dataset) -> LockedTestDataset:
    return LockedTestDataset(
        ds.name, ds.n_users, ds.n_items, ds.interactions, ds.items, ds.users, lock=[True]
    )


def test_grid_points_product_order():
    assert grid_points({"a": [1, 2], "b": ["x"]}) == [{"a": 1, "b": "x"}, {"a": 2, "b": "x"}]


def test_selection_never_reads_test_and_picks_best_valid(monkeypatch):
    ds = _locked(clustered(0))
    real_once = grid_mod.evaluate_test_once

    def unlock_then_score(result, dataset, device="cpu"):
        # by now the winner is fixed; from here on reading test is allowed
        ds.lock[0] = False
        return real_once(result, dataset, device)

    monkeypatch.setattr(grid_mod, "evaluate_test_once", unlock_then_score)
    g = grid_search("bpr", ds, GRID, BASE, seed=0)
    assert len(g.points) == 4 and all(s is not None for s in g.valid_scores)
    assert g.winner_index == int(np.argmax(g.valid_scores))
    assert g.best.valid.metrics["recall@20"] == max(g.valid_scores)
    assert g.best.test is not None and "recall@20" in g.best.test.metrics
    assert sum(row["winner"] for row in g.table()) == 1


def test_grid_without_test_scoring_never_touches_test():
    ds = _locked(clustered(1))
    g = grid_search("lightgcn", ds, {"n_layers": [1, 2]}, BASE, seed=0, evaluate_test=False)
    assert g.best.test is None  # and no AssertionError was raised


def test_only_the_winner_is_scored_on_test(monkeypatch):
    ds = clustered(2)
    splits: list[str] = []
    real = trainer_mod.Evaluator

    class Spy(real):  # type: ignore[misc, valid-type]
        def evaluate(self, scorer):
            splits.append(self.split)
            return super().evaluate(scorer)

    monkeypatch.setattr(trainer_mod, "Evaluator", Spy)
    grid_search("bpr", ds, {"learning_rate": [1e-3, 1e-2, 5e-2]}, BASE, seed=0)
    assert splits.count("test") == 1 and splits[-1] == "test"
    assert splits.count("valid") == 3 * 3


def test_bad_grids_fail_before_training():
    ds = clustered(3)
    with pytest.raises(ConfigError, match="'lr'"):
        grid_search("bpr", ds, {"lr": [1, 2]}, BASE)
    with pytest.raises(ConfigError, match="both set and gridded"):
        grid_search("bpr", ds, {"epochs": [1, 2]}, BASE)
    with pytest.raises(ConfigError, match="empty"):
        grid_search("bpr", ds, {}, BASE)
