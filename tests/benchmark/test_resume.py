"""A benchmark run that died resumes from its checkpoint, and only under its run key."""

from __future__ import annotations

import json
import subprocess

import pytest

from alignrec.benchmark import run_benchmark
from alignrec.benchmark import runner as runner_mod
from alignrec.errors import ConfigError
from alignrec.training import grid as grid_mod
from tests.training.synth import clustered
from tests.training.test_checkpoint import KillAt, Killed

SETTINGS = {"epochs": 5, "batch_size": 64, "checkpoint_every_s": 0}
GRID = {"bpr": {"reg_weight": [1e-3, 1e-5]}}
KEYS = ("valid", "test", "best_epoch", "epochs_run", "stop_reason", "grid_point")


def _bench(out, **kwargs):
    args = {"seeds": 2, "grids": GRID, "progress": False, "overrides": SETTINGS, **kwargs}
    return run_benchmark(clustered(0), ["bpr"], out=out, **args)


def _killing(real, when):
    """``real`` (a ``train``) with the logger that dies at epoch 2 on the calls ``when`` picks."""

    def train(*args, **kwargs):
        if when(args, kwargs):
            return real(args[0], args[1], args[2], KillAt(2), *args[4:], **kwargs)
        return real(*args, **kwargs)

    return train


def _as_if_killed(folder):
    """Make ``status.json`` what a SIGKILL leaves: ``running``, for a process now gone."""
    gone = subprocess.Popen(["true"])
    gone.wait()
    status = json.loads((folder / "status.json").read_text())
    status.update(state="running", pid=gone.pid, pid_start="gone")
    status.pop("error", None)
    (folder / "status.json").write_text(json.dumps(status))


def _records(out):
    return [
        json.loads((out / "runs" / "bpr" / f"s{s}" / "metrics.json").read_text()) for s in (0, 1)
    ]


def test_killed_runs_resume_from_their_checkpoints_and_end_as_uninterrupted_ones(
    tmp_path, monkeypatch, caplog
):
    ref = _bench(tmp_path / "ref")
    out = tmp_path / "bench"
    s0, s1 = out / "runs" / "bpr" / "s0", out / "runs" / "bpr" / "s1"

    # Killed in the grid's second point, at its epoch 2.
    real_grid_train, real_train = grid_mod.train, runner_mod.train
    monkeypatch.setattr(
        grid_mod, "train", _killing(real_grid_train, lambda a, k: a[2]["reg_weight"] == 1e-5)
    )
    with pytest.raises(Killed):
        _bench(out)
    assert {p.name for p in s0.glob("checkpoint*")} == {"checkpoint-g0.pt", "checkpoint-g1.pt"}
    assert not (s0 / runner_mod.STAMP).exists()
    _as_if_killed(s0)

    # The rerun finishes the grid from there; seed 1 is killed in turn.
    monkeypatch.setattr(grid_mod, "train", real_grid_train)
    monkeypatch.setattr(runner_mod, "train", _killing(real_train, lambda a, k: True))
    with caplog.at_level("WARNING"), pytest.raises(Killed):
        _bench(out)
    said = caplog.text
    assert "bpr s0: the previous run" in said and "died at epoch 2 of grid point 1; resuming" in said
    assert "bpr s0: resuming from" in said and "checkpoint-g1.pt: epochs 0-1 done" in said
    assert "checkpoint-g0.pt: the run had finished" in said  # point 0 is not trained again
    assert not list(s0.glob("checkpoint*")) and (s0 / runner_mod.STAMP).is_file()
    assert json.loads((s0 / "status.json").read_text())["state"] == "finished"
    assert json.loads((s1 / "status.json").read_text())["state"] == "failed"
    assert (s1 / "checkpoint.pt").is_file()

    caplog.clear()
    monkeypatch.setattr(runner_mod, "train", real_train)
    with caplog.at_level("WARNING"):
        again = _bench(out)
    assert "bpr s1: the previous run" in caplog.text and "failed at epoch 2" in caplog.text
    assert again.models["bpr"].reused == [True, False]
    for a, b in zip(_records(out), _records(ref.out), strict=True):
        assert {k: a.get(k) for k in KEYS} == {k: b.get(k) for k in KEYS}
    rows = [json.loads((o / "runs/bpr/s0/grid.json").read_text()) for o in (out, ref.out)]
    untimed = [[{k: v for k, v in r.items() if k != "train_seconds"} for r in t] for t in rows]
    assert untimed[0] == untimed[1]
    assert not list(out.glob("runs/bpr/*/checkpoint*"))


def test_a_checkpoint_left_under_another_run_key_is_discarded(tmp_path, monkeypatch, caplog):
    out = tmp_path / "bench"
    real_train = runner_mod.train
    monkeypatch.setattr(runner_mod, "train", _killing(real_train, lambda a, k: True))
    with pytest.raises(Killed):
        _bench(out, seeds=1, grids={})
    assert (out / "runs/bpr/s0/checkpoint.pt").is_file()

    monkeypatch.setattr(runner_mod, "train", real_train)
    changed = {**SETTINGS, "learning_rate": 0.01}
    with caplog.at_level("WARNING"):
        result = _bench(out, seeds=1, grids={}, overrides=changed)
    assert "another config or data" in caplog.text and "discarding it" in caplog.text
    assert "resuming from" not in caplog.text
    clean = _bench(tmp_path / "clean", seeds=1, grids={}, overrides=changed)
    a, b = result.models["bpr"].records[0], clean.models["bpr"].records[0]
    assert {k: a.get(k) for k in KEYS} == {k: b.get(k) for k in KEYS}


def test_checkpoint_every_s_is_not_in_the_run_key():
    """Runs cached before checkpoints existed keep their keys; the interval changes nothing."""
    a = runner_mod._resolved("bpr", {"epochs": 5})[0]
    b = runner_mod._resolved("bpr", {"epochs": 5, "checkpoint_every_s": 1})[0]
    assert a == b and "checkpoint_every_s" not in a["train"]


def _held_by_a_live_process(folder):
    """``status.json`` of a run this test's parent process (alive, not this one) trains."""
    import os
    import socket

    from alignrec.training.checkpoint import _process_start

    folder.mkdir(parents=True)
    parent = os.getppid()
    (folder / "status.json").write_text(
        json.dumps({"state": "running", "pid": parent, "pid_start": _process_start(parent),
                    "host": socket.gethostname(), "epoch": 3})
    )


def test_a_run_another_process_trains_is_left_to_it_and_the_next_seed_trained(
    tmp_path, caplog
):
    out = tmp_path / "bench"
    s0 = out / "runs" / "bpr" / "s0"
    _held_by_a_live_process(s0)
    pinned = {"bpr": {"reg_weight": [1e-3]}}
    with caplog.at_level("WARNING"):
        result = _bench(out, grids=pinned)
    assert "bpr s0: " in caplog.text and "going on with the next seed" in caplog.text
    assert not (s0 / runner_mod.STAMP).exists()  # untouched: its owner still trains it
    assert json.loads((s0 / "status.json").read_text())["state"] == "running"
    s1 = json.loads((out / "runs" / "bpr" / "s1" / runner_mod.STAMP).read_text())
    assert s1["configs"][0]["model"]["reg_weight"] == 1e-3  # the pinned point, without s0
    reason = result.skipped["bpr"]
    assert reason.startswith("not trained yet: 1 of 2 runs are being trained by another process")
    assert "runs/bpr/s0" in reason

    # A grid's seed 0 decides the later seeds' point: nothing goes on without it.
    grid_out = tmp_path / "grid"
    _held_by_a_live_process(grid_out / "runs" / "bpr" / "s0")
    with pytest.raises(ConfigError, match="still training"):
        _bench(grid_out)
    assert not (grid_out / "runs" / "bpr" / "s1").exists()
