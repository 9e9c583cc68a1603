"""Atomic writes: the old file survives a failed write; the new one has normal permissions."""

from __future__ import annotations

import json
import os
import stat

import pytest

from alignrec import io


def test_failed_write_keeps_the_previous_file(tmp_path):
    target = tmp_path / "a.json"
    io.write_json(target, {"v": 1})
    with pytest.raises(RuntimeError), io.atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash mid-write")
    assert json.loads(target.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]  # no temporary left behind


def test_failed_directory_write_keeps_the_previous_directory(tmp_path):
    target = tmp_path / "d"
    with io.atomic_path(target, is_dir=True) as tmp:
        (tmp / "x").write_text("1")
    with pytest.raises(RuntimeError), io.atomic_path(target, is_dir=True) as tmp:
        (tmp / "x").write_text("2")
        raise RuntimeError("crash")
    assert (target / "x").read_text() == "1"
    assert [p.name for p in tmp_path.iterdir()] == ["d"]


def test_written_files_and_folders_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        f = io.write_json(tmp_path / "r.json", {})
        with io.atomic_path(tmp_path / "plots", is_dir=True) as tmp:
            (tmp / "p.png").write_bytes(b"")
    finally:
        os.umask(old)
    assert stat.S_IMODE(f.stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "plots").stat().st_mode) == 0o755


def test_saved_weights_depend_on_the_weights_alone(tmp_path):
    import torch

    torch.manual_seed(0)
    state = torch.nn.Linear(4, 3).state_dict()
    a = io.write_torch(tmp_path / "a" / "model.pt", state)
    b = io.write_torch(tmp_path / "b" / "model.pt", state)
    assert a.read_bytes() == b.read_bytes()  # the temporary file's name is not in the archive
    loaded = torch.load(a, weights_only=True)
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
