"""Checkpoints and run status: an interrupted training run is visible and resumes where it stopped.

A run folder (``alignrec train --out``, a benchmark run folder) holds, while it trains:

* ``checkpoint.pt`` (``checkpoint-g<i>.pt`` per grid point): written atomically at the end
  of an epoch once ``checkpoint_every_s`` seconds have passed since the last one (and when a
  signal stops the run). It holds what the next epochs depend on: the model's weights, the
  optimiser's and the LR schedule's state, the random states (torch, CUDA, numpy, Python and
  the negative sampler's generator, which also shuffles the training pairs), the epoch, the
  best epoch (its weights, validation result and the early-stopping counter) and the history,
  so a resumed run ends bit for bit where the uninterrupted one would. When the loop ends the
  file is replaced by a small *finished* checkpoint (the best weights, history and stop
  reason), which the caller removes once the run's files are written.
* ``status.json``: ``running`` with the process id, host and start time, updated each epoch
  with how far the run got; replaced at the end by ``finished``, ``interrupted`` (a signal;
  resumable) or ``failed``. A folder whose status says ``running`` for a process that no
  longer exists belongs to a run that died (killed, out of memory, machine down).

A checkpoint is used only by a run with the same identity: model, seed, resolved configs
(less the keys that change neither what is learned nor the scores, :data:`NOT_LEARNING`),
the digest of the data the model reads, the number of processes, and the caller's own key
(the benchmark's run key). Anything else is refused or discarded (``on_mismatch``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import random
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from filelock import FileLock, Timeout

from alignrec import io
from alignrec.errors import ConfigError
from alignrec.runs import CHECKPOINT, LOCK, STATUS

log = logging.getLogger(__name__)

FORMAT = 1
# Train keys that change neither what is learned nor the scores: a checkpoint written under
# other values of these is still resumed.
NOT_LEARNING = ("quiet", "eval_batch_size", "checkpoint_every_s", "max_seconds")


class CheckpointMismatch(ConfigError):
    """A checkpoint was written by a run with another config, seed or data."""


def checkpoint_files(folder: str | Path) -> list[Path]:
    """The checkpoints in a run folder (``checkpoint.pt`` and grid points' ``checkpoint-g<i>.pt``)."""
    folder = Path(folder)
    return sorted(folder.glob("checkpoint.pt")) + sorted(folder.glob("checkpoint-g*.pt"))


def remove_checkpoints(folder: str | Path) -> None:
    """Delete a run folder's checkpoints (once its files are written)."""
    for path in checkpoint_files(folder):
        path.unlink(missing_ok=True)


def interactions_digest(dataset: Any) -> str:
    """Digest of the interactions and their split (no split singled out, or read)."""
    inter = dataset.interactions
    h = hashlib.sha256(f"{dataset.n_users}x{dataset.n_items}".encode())
    for column in ("user", "item"):
        h.update(np.ascontiguousarray(inter[column].to_numpy(dtype=np.int64)).tobytes())
    h.update("\n".join(inter["split"].astype(str)).encode())
    return h.hexdigest()


def table_digest(table: np.ndarray) -> str:
    """Digest of a feature table's dtype, shape and bytes."""
    arr = np.ascontiguousarray(table)
    h = hashlib.sha256(f"{arr.dtype}{arr.shape}".encode())
    h.update(arr.tobytes())
    return h.hexdigest()


def data_digest(dataset: Any, model_name: str, model_config: Any) -> dict[str, str]:
    """Digests of what ``model_name`` reads: the interactions with their split, and each
    feature table it reads (the ``mm:`` modalities, its ``features`` table)."""
    from alignrec.models import get_model_class
    from alignrec.models.base import MODALITY_PREFIX

    out = {"interactions": interactions_digest(dataset)}
    keys = (
        [k for k in dataset.features if k.startswith(MODALITY_PREFIX)]
        if get_model_class(model_name).uses_modalities
        else []
    )
    own = getattr(model_config, "features", None)
    if isinstance(own, str) and own in dataset.features:
        keys.append(own)
    for key in sorted(set(keys)):
        out[key] = table_digest(dataset.features[key])
    fingerprint = getattr(dataset, "meta", {}).get("fingerprint")
    if fingerprint:
        out["fingerprint"] = str(fingerprint)
    return out


def run_identity(
    model_name: str,
    seed: int,
    train_config: dict[str, Any],
    model_config: dict[str, Any],
    data: dict[str, str],
    processes: int = 1,
    key: str | None = None,
) -> dict[str, Any]:
    """What a checkpoint must match to be resumed (JSON-able, compared key by key)."""
    return {
        "model": model_name,
        "seed": int(seed),
        "train": {k: v for k, v in train_config.items() if k not in NOT_LEARNING},
        "model_config": dict(model_config),
        "data": dict(data),
        "processes": int(processes),
        "key": key,
    }


def _differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """``name: saved -> current`` for each part of two identities that differs."""
    out: list[str] = []
    for part in sorted(set(saved) | set(current)):
        a, b = saved.get(part), current.get(part)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b)):
                if a.get(k) != b.get(k):
                    shown = "changed" if part in ("data",) else f"{a.get(k)!r} -> {b.get(k)!r}"
                    out.append(f"{part}.{k}: {shown}")
        else:
            out.append(f"{part}: {a!r} -> {b!r}")
    return out


# ------------------------------------------------------------------ random states


def capture_rng(sampler_generator: torch.Generator | None, device: torch.device) -> dict:
    """Every random state the next epochs draw from (tensors and plain values only)."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": str(np_state[0]),
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": _plain(random.getstate()),
        "sampler": sampler_generator.get_state() if sampler_generator is not None else None,
    }
    if device.type == "cuda" and torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict, sampler_generator: torch.Generator | None) -> None:
    """Put back what :func:`capture_rng` took."""
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state(
        (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
         n["cached_gaussian"])
    )
    random.setstate(_tuples(state["python"]))
    if sampler_generator is not None and state.get("sampler") is not None:
        sampler_generator.set_state(state["sampler"])


def _plain(value: Any) -> Any:
    """Python's random state with tuples as lists (what ``weights_only`` loading accepts)."""
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


def _tuples(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value


def eval_to_state(result: Any) -> dict[str, Any]:
    """An :class:`~alignrec.evaluation.EvalResult` as tensors and plain values."""
    return {
        "metrics": dict(result.metrics),
        "per_user": {k: torch.from_numpy(np.asarray(v)) for k, v in result.per_user.items()},
        "users": torch.from_numpy(np.asarray(result.users)),
        "split": result.split,
        "seconds": float(result.seconds),
    }


def eval_from_state(state: dict[str, Any]) -> Any:
    from alignrec.evaluation import EvalResult

    return EvalResult(
        metrics=dict(state["metrics"]),
        per_user={k: v.numpy() for k, v in state["per_user"].items()},
        users=state["users"].numpy(),
        split=state["split"],
        seconds=state["seconds"],
    )


# ------------------------------------------------------------------ checkpoint file


@dataclass
class Checkpointing:
    """Where one training run keeps its checkpoint, and what to do with one it finds there.

    Attributes:
        path: the checkpoint file.
        resume: resume from a compatible checkpoint at ``path`` (else it is overwritten).
        key: the caller's identity of the run (the benchmark's run key); must match too.
        on_mismatch: ``refuse`` (a :class:`CheckpointMismatch` naming what differs) or
            ``fresh`` (say so, discard the checkpoint and train from the start).
        status: the run folder's :class:`RunStatus`, told how far the run got each epoch.
        say: where the trainer says that it resumes (default: a log warning).
        status_fields: added to each status update (a grid point's index).
    """

    path: Path
    resume: bool = True
    key: str | None = None
    on_mismatch: str = "refuse"
    status: RunStatus | None = None
    say: Callable[[str], Any] | None = None
    status_fields: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        if self.on_mismatch not in ("refuse", "fresh"):
            raise ValueError(f"on_mismatch must be 'refuse' or 'fresh', got {self.on_mismatch!r}")

    def tell(self, message: str) -> None:
        (self.say or log.warning)(message)

    def load(self, identity: dict[str, Any]) -> dict[str, Any] | None:
        """The checkpoint's state when it is there, readable and written by this run's identity."""
        if not self.resume or not self.path.is_file():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a truncated or foreign file: atomic writes make this rare
            self.tell(f"{self.path}: unreadable checkpoint ({exc}); training from the start")
            return None
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            self.tell(f"{self.path}: not a checkpoint of this version; training from the start")
            return None
        saved = state.get("identity") or {}
        if saved != identity:
            diff = "; ".join(_differences(saved, identity)) or "unknown differences"
            if self.on_mismatch == "refuse":
                raise CheckpointMismatch(
                    f"{self.path} was written by a run with another config or data ({diff}); "
                    "rerun with --no-resume to discard it and train from the start, or use "
                    "another --out"
                )
            self.tell(
                f"{self.path}: written by a run with another config or data ({diff}); "
                "discarding it and training from the start"
            )
            self.path.unlink(missing_ok=True)
            return None
        return state

    def save(self, state: dict[str, Any], identity: dict[str, Any]) -> None:
        io.write_torch(self.path, {"format": FORMAT, "identity": identity, **state})

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)

    def progress(self, **fields: Any) -> None:
        if self.status is not None:
            self.status.progress(**self.status_fields, **fields)


# ------------------------------------------------------------------ status.json


def _process_start(pid: int) -> str | None:
    """The kernel's start time of process ``pid`` (Linux ``/proc``), to tell a reused pid."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw.rsplit(")", 1)[-1].split()[19]  # field 22, counted after the command name


def _alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    except OSError:
        return False
    now = _process_start(pid)
    return start is None or now is None or now == start


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


class RunBusy(ConfigError):
    """Another live process on this machine is training into the run folder."""


class RunStatus:
    """A run folder's ``status.json``: who trains into it and how far it got.

    :meth:`check_previous` also takes the folder's lock (``status.lock``, an OS file lock
    the system drops when the process dies) until :meth:`finish`, so two processes started
    at the same moment cannot both train into one folder.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / STATUS
        self.record: dict[str, Any] = {}
        self._lock: FileLock | None = None

    def read(self) -> dict[str, Any] | None:
        """The status on disk (a previous run's), None when absent or unreadable."""
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def check_previous(self) -> str | None:
        """What became of the run that last trained into the folder, when it did not finish.

        Raises :class:`RunBusy` (a :class:`ConfigError`) when that run is still alive on
        this machine; returns a line such as ``the previous run (pid 123, started ...) died
        at epoch 7`` for a run that died, was stopped by a signal or failed, None otherwise.
        """
        self._take_lock()
        prev = self.read()
        if not prev or prev.get("state") in (None, "finished"):
            return None
        state = prev["state"]
        pid, host = prev.get("pid"), prev.get("host")
        where = f" (pid {pid} on {host}, started {prev.get('started', '?')})"
        at = _at(prev)
        if state == "running":
            mine = pid == os.getpid() and host == socket.gethostname()
            if host == socket.gethostname() and isinstance(pid, int) and not mine:
                if _alive(pid, prev.get("pid_start")):  # (one that holds no lock: older code)
                    self.release()
                    raise RunBusy(
                        f"{self.folder}: another run{where} is still training into this folder "
                        "(status.json); wait for it or stop it first"
                    )
            elif host != socket.gethostname():
                return (
                    f"status.json says a run{where} is training into {self.folder}; it cannot be "
                    f"checked from here, so it is taken as dead (it was at epoch {at})"
                )
            return f"the previous run{where} died at epoch {at}"
        if state == "interrupted":
            return f"the previous run{where} was stopped by {prev.get('signal', 'a signal')} at epoch {at}"
        if state == "failed":
            return f"the previous run{where} failed at epoch {at}: {prev.get('error', '?')}"
        return None

    def _take_lock(self) -> None:
        if self._lock is not None and self._lock.is_locked:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        lock = FileLock(self.folder / LOCK, blocking=False)
        try:
            lock.acquire()
        except Timeout:
            prev = self.read() or {}
            who = f"pid {prev['pid']} on {prev.get('host')}" if prev.get("pid") else "a process"
            raise RunBusy(
                f"{self.folder}: another run ({who}) holds {LOCK} and trains into this folder; "
                "wait for it or stop it first"
            ) from None
        self._lock = lock

    def release(self) -> None:
        """Drop the folder's lock (:meth:`finish` does)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def start(self, **info: Any) -> None:
        """Say that this process trains into the folder now."""
        self.record = {
            "state": "running",
            "pid": os.getpid(),
            "pid_start": _process_start(os.getpid()),
            "host": socket.gethostname(),
            "started": _now(),
            "epoch": None,
            **info,
        }
        self._write()

    def progress(self, **fields: Any) -> None:
        if not self.record:
            return
        self.record.update(fields, updated=_now())
        self._write()

    def finish(self, state: str, **fields: Any) -> None:
        """Replace the running status by the final record (``finished``, ``interrupted``, ``failed``)."""
        if not self.record:
            self.release()
            return
        self.record.update(fields, state=state, finished=_now())
        self.record.pop("updated", None)
        self._write()
        self.release()

    def _write(self) -> None:
        with contextlib.suppress(OSError):  # a status that cannot be written must not stop training
            io.write_json(self.path, self.record)


def _at(status: dict[str, Any]) -> str:
    """The epoch a status says the run was in (one after the last finished), with the point."""
    last = status.get("epoch")
    epoch = 0 if last is None else int(last) + 1
    point = status.get("point")
    return f"{epoch}" + (f" of grid point {point}" if point is not None else "")


__all__ = [
    "CHECKPOINT",
    "NOT_LEARNING",
    "STATUS",
    "CheckpointMismatch",
    "Checkpointing",
    "RunBusy",
    "RunStatus",
    "capture_rng",
    "checkpoint_files",
    "data_digest",
    "remove_checkpoints",
    "restore_rng",
    "run_identity",
]
