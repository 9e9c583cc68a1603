"""Data-parallel training under ``torchrun``: two processes follow one process's run."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from alignrec.evaluation import Evaluator
from alignrec.training.distributed import Group
from tests.training.synth import clustered

ARGS = [
    "train", "lightgcn", "--dataset", "synthetic", "--quiet", "--threads", "1",
    "--set", "epochs=3", "--set", "batch_size=256",
    # LightGCN-paper regularisation: a per-example mean, so the slices' weighted losses
    # add up to the batch's (MMRec's Σ‖E‖/B is a norm of the whole batch: not additive)
    "--set", "reg_squared=true",
    "--grid", "reg_weight=1e-4,1e-2",  # every process walks the grid; rank 0 writes grid.json
]  # fmt: skip


def _train(out, nproc: int) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
           "--standalone", "-m", "alignrec.cli", *ARGS, "--out", str(out)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.slow
def test_two_processes_follow_the_one_process_run(tmp_path):
    two = _train(tmp_path / "two", 2)  # first: rank 0 prepares the tables, rank 1 waits
    one = _train(tmp_path / "one", 1)
    assert one.returncode == 0, one.stderr[-3000:]
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("wrote ") == 1  # rank 1 prints and writes nothing

    a, b = (torch.load(tmp_path / d / "model.pt") for d in ("one", "two"))
    assert a.keys() == b.keys()
    for key in a:  # the same steps: the gradients were averaged over the two slices
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-6)
    h1, h2 = (json.loads((tmp_path / d / "history.json").read_text()) for d in ("one", "two"))
    assert [h["train/loss"] for h in h2] == pytest.approx([h["train/loss"] for h in h1], abs=1e-6)
    assert [h["valid/recall@20"] for h in h2] == [h["valid/recall@20"] for h in h1]
    m1, m2 = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("one", "two"))
    assert m2["processes"] == 2 and "processes" not in m1
    assert m2["test"] == pytest.approx(m1["test"], abs=1e-9)
    assert m2["grid_point"] == m1["grid_point"] and (tmp_path / "two" / "grid.json").is_file()


def test_a_process_takes_its_weighted_slice_of_a_batch():
    batch = (torch.arange(7), torch.arange(7) + 10)
    (u0, p0), w0 = Group(0, 2).slice(*batch)
    (u1, p1), w1 = Group(1, 2).slice(*batch)
    assert u0.tolist() == [0, 1, 2, 3] and u1.tolist() == [4, 5, 6] and p1.tolist() == [14, 15, 16]
    # weights * world / len: the mean of the weighted slice means is the batch mean
    assert (w0, w1) == (4 * 2 / 7, 3 * 2 / 7)
    assert Group().slice(*batch) == (batch, 1.0)


class _Merging(Group):
    """Group(rank, 2) whose merge adds the other process's rows from a stored result."""

    def __init__(self, rank: int, other: np.ndarray | None = None) -> None:
        super().__init__(rank, 2)
        object.__setattr__(self, "other", other)

    def merge_rows(self, rows, device):
        return rows if self.other is None else rows | self.other


def test_each_process_ranks_its_share_of_the_users():
    data = clustered(0)
    scorer = torch.Generator().manual_seed(0)
    scores = torch.rand(data.n_users, data.n_items, generator=scorer)

    def score(users):
        return scores[users].clone()

    full = Evaluator(data, "valid", batch_size=7).ranked_hits(score)
    part1 = Evaluator(data, "valid", batch_size=7, group=_Merging(1)).ranked_hits(score)
    merged = Evaluator(data, "valid", batch_size=7, group=_Merging(0, part1)).ranked_hits(score)
    assert part1.any() and not np.array_equal(part1, full)  # rank 1 ranked only its batches
    np.testing.assert_array_equal(merged, full)


def test_commands_other_than_train_refuse_to_run_in_several_processes(monkeypatch):
    from typer.testing import CliRunner

    from alignrec import cli
    from alignrec.errors import ConfigError

    monkeypatch.setenv("WORLD_SIZE", "2")
    res = CliRunner().invoke(cli.app, ["benchmark", "--dataset", "synthetic"])
    assert isinstance(res.exception, ConfigError) and "alignrec benchmark" in str(res.exception)
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert CliRunner().invoke(cli.app, ["data", "list"]).exit_code == 0


@pytest.mark.slow
def test_every_model_stays_in_step_across_processes():
    from alignrec.models import MODELS

    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone",
           "-m", "tests.training.ddp_models"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = {line.split()[0]: line.split()[1:] for line in res.stdout.splitlines()}
    assert set(rows) == set(MODELS)
    for name, (gap, loss, epochs) in rows.items():
        # the same weights on both processes: the gradients were averaged, shared state agreed
        assert float(gap) == 0.0 and np.isfinite(float(loss)) and epochs == "2", (name, gap)
