"""Interrupted training is visible and resumable: checkpoints, status.json, exit codes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import alignrec.data
from alignrec import cli
from alignrec.errors import ConfigError
from alignrec.training import MemoryLogger, grid_search, train
from alignrec.training.checkpoint import (
    Checkpointing,
    CheckpointMismatch,
    RunStatus,
    _process_start,
)
from tests.training.synth import clustered

FAST = {"quiet": True, "batch_size": 64, "learning_rate": 0.01, "checkpoint_every_s": 0}
PROJECT_ROOT = Path(__file__).resolve().parents[2]


class Killed(Exception):
    """Stands in for a kill: training stops mid-run, nothing after it runs."""


class KillAt(MemoryLogger):
    """Raises when epoch ``k`` has been logged: before that epoch's checkpoint is written,
    so the run dies with epochs ``0..k-1`` checkpointed and epoch ``k`` lost."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k

    def log_metrics(self, metrics, step=None):
        super().log_metrics(metrics, step)
        if step == self.k and "train/loss" in metrics:
            raise Killed(f"killed at epoch {step}")


def _untimed(history):
    return [{k: v for k, v in h.items() if not k.startswith("time/")} for h in history]


def _same_result(a, b):
    assert _untimed(a.history) == _untimed(b.history)
    assert a.best_epoch == b.best_epoch and a.stop_reason == b.stop_reason
    assert a.valid.metrics == b.valid.metrics and a.test.metrics == b.test.metrics
    for (ka, va), (kb, vb) in zip(
        a.model.state_dict().items(), b.model.state_dict().items(), strict=True
    ):
        assert ka == kb and torch.equal(va, vb), ka


@pytest.mark.parametrize("model", ["bpr", "freedom"])  # FREEDOM draws a graph every epoch
def test_a_killed_run_resumes_to_exactly_the_uninterrupted_result(model, tmp_path):
    ds = clustered(1)
    cfg = {**FAST, "epochs": 7}
    whole = train(model, ds, cfg, seed=3)

    ckpt = Checkpointing(tmp_path / "checkpoint.pt")
    with pytest.raises(Killed):
        train(model, ds, cfg, KillAt(4), seed=3, checkpoint=ckpt)
    assert ckpt.path.is_file()
    resumed = train(model, ds, cfg, seed=3, checkpoint=ckpt)
    assert resumed.resumed_from == 3 and resumed.epochs_run == whole.epochs_run
    _same_result(resumed, whole)

    # The loop's end leaves a small finished checkpoint: scored again, never retrained.
    assert torch.load(ckpt.path, weights_only=True)["done"]
    again = train(model, ds, cfg, seed=3, checkpoint=ckpt)
    assert again.resumed_from == whole.epochs_run - 1
    _same_result(again, whole)


def test_checkpoints_are_written_every_checkpoint_every_s_seconds(tmp_path, monkeypatch):
    from alignrec.training import checkpoint as ckpt_mod

    saved: list[int] = []
    real = ckpt_mod.Checkpointing.save
    monkeypatch.setattr(
        ckpt_mod.Checkpointing,
        "save",
        lambda self, state, ident: saved.append((state["epoch"], state["done"]))
        or real(self, state, ident),
    )
    ckpt = Checkpointing(tmp_path / "checkpoint.pt")
    train("bpr", clustered(0), {**FAST, "epochs": 4, "checkpoint_every_s": 3600}, checkpoint=ckpt)
    assert saved == [(3, True)]  # only the finished run's
    saved.clear()
    train("bpr", clustered(0), {**FAST, "epochs": 4}, checkpoint=Checkpointing(tmp_path / "b.pt"))
    assert saved == [(0, False), (1, False), (2, False), (3, True)]


def test_a_checkpoint_of_another_config_is_refused_or_discarded(tmp_path):
    ds = clustered(0)
    path = tmp_path / "checkpoint.pt"
    with pytest.raises(Killed):
        train("bpr", ds, {**FAST, "epochs": 5}, KillAt(2), checkpoint=Checkpointing(path))
    other = {**FAST, "epochs": 5, "learning_rate": 0.05}
    with pytest.raises(CheckpointMismatch, match=r"train\.learning_rate: 0\.01 -> 0\.05"):
        train("bpr", ds, other, checkpoint=Checkpointing(path))
    with pytest.raises(CheckpointMismatch, match="seed: 0 -> 1"):
        train("bpr", ds, {**FAST, "epochs": 5}, seed=1, checkpoint=Checkpointing(path))
    with pytest.raises(CheckpointMismatch, match="data.interactions: changed"):
        train("bpr", clustered(1), {**FAST, "epochs": 5}, checkpoint=Checkpointing(path))
    # Keys that change neither what is learned nor the scores do not matter.
    same = {**FAST, "epochs": 5, "eval_batch_size": 7, "checkpoint_every_s": 9}
    assert train("bpr", ds, same, checkpoint=Checkpointing(path)).resumed_from == 1

    path.unlink()  # the finished run's
    with pytest.raises(Killed):
        train("bpr", ds, {**FAST, "epochs": 5}, KillAt(2), checkpoint=Checkpointing(path))
    said: list[str] = []
    fresh = train(
        "bpr", ds, other, checkpoint=Checkpointing(path, on_mismatch="fresh", say=said.append)
    )
    assert fresh.resumed_from is None and "discarding it" in said[0]
    _same_result(fresh, train("bpr", ds, other))


def test_a_grid_search_resumes_its_point_and_keeps_finished_points(tmp_path, monkeypatch):
    from alignrec.training import grid as grid_mod

    ds = clustered(0)
    grid = {"reg_weight": [1e-3, 1e-5]}
    base = {**FAST, "epochs": 4}
    whole = grid_search("bpr", ds, grid, base, evaluate_test=True)

    def ckpts(i):
        return Checkpointing(tmp_path / f"checkpoint-g{i}.pt")

    real = grid_mod.train
    calls: list[int | None] = []
    killed: list[bool] = []

    def dying(*args, **kwargs):
        if args[2]["reg_weight"] == 1e-5 and not killed:
            killed.append(True)
            return real(args[0], args[1], args[2], KillAt(2), *args[4:], **kwargs)
        result = real(*args, **kwargs)
        calls.append(result.resumed_from)
        return result

    monkeypatch.setattr(grid_mod, "train", dying)
    with pytest.raises(Killed):
        grid_search("bpr", ds, grid, base, checkpoints=ckpts, evaluate_test=True)
    calls.clear()
    again = grid_search("bpr", ds, grid, base, checkpoints=ckpts, evaluate_test=True)
    assert calls == [3, 1]  # point 0 scored from its finished checkpoint, point 1 resumed
    assert again.valid_scores == whole.valid_scores and again.winner_index == whole.winner_index
    _same_result(again.best, whole.best)


def test_an_interrupted_grid_lists_the_points_it_did_not_run():
    import dataclasses

    g = grid_search("bpr", clustered(0), {"reg_weight": [1e-3, 1e-5]}, {**FAST, "epochs": 2})
    cut = dataclasses.replace(
        g, valid_scores=g.valid_scores[:1], errors=g.errors[:1], interrupted=True, winner_index=0
    )
    rows = cut.table()
    assert len(rows) == 2 and rows[1]["error"].startswith("not run")


# ------------------------------------------------------------------ alignrec train


@pytest.fixture
def tiny(monkeypatch):
    ds = clustered(0)
    monkeypatch.setattr(alignrec.data, "load_dataset", lambda name: ds)
    return ds


def _cli(out, *extra):
    args = ["train", "bpr", "--dataset", "tiny", "--out", str(out), "--quiet", "--threads", "1"]
    args += ["--set", "epochs=6", "--set", "batch_size=64", "--set", "checkpoint_every_s=0"]
    return CliRunner().invoke(cli.app, [*args, *extra])


def test_a_finished_run_leaves_no_checkpoint_and_a_finished_status(tiny, tmp_path):
    res = _cli(tmp_path / "run")
    assert res.exit_code == 0, res.output
    assert not list((tmp_path / "run").glob("checkpoint*"))
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert status["state"] == "finished" and status["pid"] == os.getpid()
    assert status["epochs_run"] == 6 and status["resumed_from"] is None


def test_cli_refuses_a_checkpoint_of_another_config_unless_no_resume(tiny, tmp_path):
    out = tmp_path / "run"
    cfg = {"quiet": True, "epochs": 6, "batch_size": 64, "checkpoint_every_s": 0}
    with pytest.raises(Killed):
        train("bpr", tiny, cfg, KillAt(3), checkpoint=Checkpointing(out / "checkpoint.pt"))
    res = _cli(out, "--set", "learning_rate=0.05")
    assert isinstance(res.exception, ConfigError)
    assert "learning_rate" in str(res.exception) and "--no-resume" in str(res.exception)
    assert (out / "checkpoint.pt").is_file() and not (out / "metrics.json").exists()
    assert json.loads((out / "status.json").read_text())["state"] == "failed"

    res = _cli(out, "--set", "learning_rate=0.05", "--no-resume")
    assert res.exit_code == 0, res.output
    ref = _cli(tmp_path / "ref", "--set", "learning_rate=0.05")
    assert (out / "model.pt").read_bytes() == (tmp_path / "ref" / "model.pt").read_bytes()
    assert json.loads((out / "status.json").read_text())["resumed_from"] is None
    assert ref.exit_code == 0


def test_cli_refuses_a_folder_another_live_run_trains_into(tiny, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    import socket

    parent = os.getppid()  # alive, and not this process
    status = {"state": "running", "pid": parent, "pid_start": _process_start(parent),
              "host": socket.gethostname(), "epoch": 4}
    (out / "status.json").write_text(json.dumps(status))
    res = _cli(out)
    assert isinstance(res.exception, ConfigError) and "still training" in str(res.exception)
    # A pid now held by another process (its start time differs) is a dead run.
    (out / "status.json").write_text(json.dumps({**status, "pid_start": "1"}))
    res = _cli(out)
    assert res.exit_code == 0, res.output
    assert "died at epoch 5" in res.output and "no checkpoint" in res.output


def _status(out: Path) -> dict:
    try:
        return json.loads((out / "status.json").read_text())
    except (OSError, ValueError):
        return {}


def _start_and_signal(out: Path, sig: int, after_epoch: int) -> tuple[int, dict]:
    """``alignrec train`` in a subprocess, sent ``sig`` once it has finished ``after_epoch``."""
    args = [sys.executable, "-m", "alignrec.cli", "train", "bpr", "--dataset", "synthetic"]
    args += ["--out", str(out), "--quiet", "--threads", "1", "--set", "epochs=150"]
    args += ["--set", "patience=150", "--set", "batch_size=64", "--set", "checkpoint_every_s=0"]
    proc = subprocess.Popen(
        args, cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    deadline = time.monotonic() + 120
    try:
        while True:
            st = _status(out)
            if st.get("pid") == proc.pid and (st.get("epoch") or -1) >= after_epoch:
                break
            assert proc.poll() is None, proc.communicate()[0]
            assert time.monotonic() < deadline, "the run never got that far"
            time.sleep(0.02)
        proc.send_signal(sig)
        output = proc.communicate(timeout=120)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, {"output": output, "status": _status(out), "epoch": st["epoch"]}


@pytest.mark.slow
def test_sigterm_and_sigkill_leave_a_resumable_run_that_ends_as_an_uninterrupted_one(
    tmp_path, monkeypatch
):
    alignrec.data.load_dataset("synthetic")  # prepared here, read by the subprocesses
    out = tmp_path / "run"

    code, seen = _start_and_signal(out, signal.SIGTERM, after_epoch=2)
    assert code == 128 + signal.SIGTERM, seen["output"]
    assert "stopped by SIGTERM" in seen["output"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["stop_reason"] == "signal" and metrics["stop_signal"] == "SIGTERM"
    assert metrics["epochs_run"] < 150
    assert seen["status"]["state"] == "interrupted" and seen["status"]["signal"] == "SIGTERM"
    assert (out / "checkpoint.pt").is_file()

    code, seen = _start_and_signal(out, signal.SIGKILL, after_epoch=metrics["epochs_run"] + 2)
    assert code == -signal.SIGKILL
    assert "was stopped by SIGTERM" in seen["output"] and "resuming from" in seen["output"]
    assert seen["status"]["state"] == "running"  # nothing ran after the kill

    args = ["train", "bpr", "--dataset", "synthetic", "--quiet", "--threads", "1"]
    args += ["--set", "epochs=150", "--set", "patience=150", "--set", "batch_size=64"]
    args += ["--set", "checkpoint_every_s=0"]
    res = CliRunner().invoke(cli.app, [*args, "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert f"died at epoch {seen['status']['epoch'] + 1}" in res.output
    assert "resuming from" in res.output
    ref = CliRunner().invoke(cli.app, [*args, "--out", str(tmp_path / "ref")])
    assert ref.exit_code == 0, ref.output

    a = json.loads((out / "metrics.json").read_text())
    b = json.loads((tmp_path / "ref" / "metrics.json").read_text())
    for key in ("valid", "test", "best_epoch", "epochs_run", "stop_reason"):
        assert a[key] == b[key], key
    assert "stop_signal" not in a
    assert (out / "model.pt").read_bytes() == (tmp_path / "ref" / "model.pt").read_bytes()
    history = [json.loads((f / "history.json").read_text()) for f in (out, tmp_path / "ref")]
    assert _untimed(history[0]) == _untimed(history[1])
    assert not (out / "checkpoint.pt").exists()
    status = RunStatus(out).read()
    assert status["state"] == "finished" and status["resumed_from"] > metrics["epochs_run"]


def test_a_run_folder_is_claimed_by_one_process_at_a_time(tmp_path):
    import subprocess
    import sys

    from alignrec.training.checkpoint import RunBusy, RunStatus

    hold = (
        "import sys, time\nfrom filelock import FileLock\n"
        "lock = FileLock(sys.argv[1])\nlock.acquire()\nprint('held', flush=True)\ntime.sleep(120)\n"
    )
    other = subprocess.Popen(
        [sys.executable, "-c", hold, str(tmp_path / "status.lock")],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert other.stdout.readline().strip() == "held"
        # No status.json yet: the other process has claimed the folder but not written it.
        with pytest.raises(RunBusy, match="status.lock"):
            RunStatus(tmp_path).check_previous()
    finally:
        other.kill()
        other.wait()
    # The system drops a dead process's lock; a claim lasts until finish.
    first = RunStatus(tmp_path)
    assert first.check_previous() is None
    first.start(model="bpr")
    with pytest.raises(RunBusy, match=f"pid {os.getpid()}"):
        RunStatus(tmp_path).check_previous()
    first.finish("finished")
    assert RunStatus(tmp_path).check_previous() is None
