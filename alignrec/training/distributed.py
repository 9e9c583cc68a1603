"""Data-parallel training over ``torch.distributed``, started by ``torchrun``.

``torchrun --nproc-per-node N -m alignrec.cli train MODEL ...`` (or ``--nnodes``/
``--rdzv-endpoint`` across machines) starts N copies of the command; :func:`launch` does the
same from Python (torchrun's own launcher), which is how a Dagster training asset runs.
Each process joins the group (``gloo`` on CPU, ``nccl`` on CUDA), holds the whole model
(graph models propagate over the whole graph every step) and takes its slice of every batch;
:class:`~torch.nn.parallel.DistributedDataParallel` averages the gradients. Each slice's loss
is weighted by its share of the batch, so a step follows the gradient of the whole batch:
``batch_size``, the learning rate and the schedule mean what they mean in one process.
Validation ranks a slice of the users on each process and gathers the hits. Rank 0 decides
early stopping for all, writes the run's files and logs to MLflow.

Two things differ from one process, by construction: losses with in-batch negatives
(SLMRec, the contrastive terms) draw them from the process's slice, and dropout masks fall
on other rows. Without ``torchrun`` (no ``WORLD_SIZE`` above 1) nothing here is used.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from alignrec.env import launched_world_size, torch_device

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Group:
    """This process's place in the process group: ``rank`` of ``world_size``."""

    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        return self.world_size > 1

    def slice(self, *batch: torch.Tensor) -> tuple[tuple[torch.Tensor, ...], float]:
        """This process's contiguous slice of each tensor of a batch, and its weight.

        The weight ``len(slice) * world_size / len(batch)`` makes the averaged gradient of
        the weighted slice losses the gradient of the whole batch's mean loss.
        """
        n = len(batch[0])
        if not self.parallel:
            return batch, 1.0
        parts = tuple(t.tensor_split(self.world_size)[self.rank] for t in batch)
        return parts, len(parts[0]) * self.world_size / n

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """The mean of a scalar tensor over the processes."""
        if not self.parallel:
            return value
        value = value.detach().clone()
        torch.distributed.all_reduce(value)
        return value / self.world_size

    def merge_rows(self, rows: np.ndarray, device: torch.device) -> np.ndarray:
        """Combine arrays in which each process filled its own rows (zeros elsewhere)."""
        if not self.parallel:
            return rows
        tensor = torch.from_numpy(rows.astype(np.uint8)).to(device)
        torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MAX)
        return tensor.cpu().numpy().astype(rows.dtype)

    def sync_rng(self) -> None:
        """Give every process rank 0's torch random state (CPU and CUDA).

        Called at each epoch's start, before a model redraws shared state from it (FREEDOM's
        pruned graph): dropout inside the steps draws as many numbers as the process's
        slice has rows, so the streams would drift apart otherwise.
        """
        if not self.parallel:
            return
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        cpu, cuda = self.agree((torch.get_rng_state(), cuda))
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)

    @contextlib.contextmanager
    def main_first(self) -> Iterator[None]:
        """Run the block on rank 0, then on the others: rank 0 prepares what they read
        (a dataset's tables, cached encoder outputs) and no two processes write it."""
        if self.parallel and not self.is_main:
            torch.distributed.barrier()
        yield
        if self.parallel and self.is_main:
            torch.distributed.barrier()

    def agree(self, value: Any) -> Any:
        """Rank 0's ``value`` (any picklable object), on every process."""
        if not self.parallel:
            return value
        box = [value]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]


def current() -> Group:
    """The group this process belongs to; ``Group()`` (one process) when there is none."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return Group(torch.distributed.get_rank(), torch.distributed.get_world_size())
    return Group()


def join(device: str | torch.device) -> tuple[Group, torch.device, bool]:
    """Join the process group ``torchrun`` set up, when it started several processes.

    Returns the group, the device this process trains on (``cuda`` becomes
    ``cuda:<LOCAL_RANK>``) and whether this call created the group (the caller then
    leaves it with :func:`leave`).
    """
    device = torch_device(device)
    if launched_world_size() <= 1:
        return current(), device, False
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    created = not torch.distributed.is_initialized()
    if created:
        backend = "nccl" if device.type == "cuda" else "gloo"
        torch.distributed.init_process_group(backend=backend)
    group = current()
    log.info("process %d of %d on %s", group.rank, group.world_size, device)
    return group, device, created


def leave(created: bool) -> None:
    """Destroy the process group when :func:`join` created it."""
    if created and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def _call(fn, args: tuple, kwargs: dict) -> Any:
    return fn(*args, **kwargs)


def launch(processes: int, fn, *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` in ``processes`` local processes started by torchrun's launcher
    (``elastic_launch``, a fresh rendezvous on a free port), which :func:`join` then groups;
    rank 0's return value. ``fn`` and its arguments must pickle (spawned processes).
    One process: a plain call. A failed process fails the launch, with its traceback.
    """
    if processes <= 1:
        return fn(*args, **kwargs)
    import uuid

    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=processes,
        run_id=str(uuid.uuid4()),
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",
        max_restarts=0,
        monitor_interval=0.5,
    )
    return elastic_launch(config, _call)(fn, args, kwargs)[0]


class _Loss(nn.Module):
    """A model's ``loss`` as a ``forward``, so that DistributedDataParallel can wrap it."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        return self.model.loss(users, pos, neg)


def loss_fn(model: nn.Module, group: Group, device: torch.device):
    """``model.loss``, wrapped in DistributedDataParallel when the group has several processes.

    ``find_unused_parameters``: some models leave parameters out of some steps (LATTICE's
    learned graph trains on an epoch's first batch only). Buffers are not broadcast: every
    process derives them identically (the same seed, and :meth:`Group.sync_rng` at each epoch).
    """
    if not group.parallel:
        return model.loss
    return nn.parallel.DistributedDataParallel(
        _Loss(model),
        device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=True,
        broadcast_buffers=False,
    )
