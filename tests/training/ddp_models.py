"""Run by ``torch.distributed.run`` from test_distributed.py: every registered model trains two
epochs data-parallel on the clustered data; rank 0 prints one line per model with the
largest weight difference between the two processes (0 when they stayed in step)."""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist

from alignrec.models import MODELS
from alignrec.training import train
from alignrec.training.distributed import join, leave
from tests.training.synth import clustered


def main() -> None:
    torch.set_num_threads(1)
    group, device, created = join("cpu")
    data = clustered(3, n_users=30, n_items=24, per_user=6)
    for name in sorted(MODELS):
        result = train(name, data, {"epochs": 2, "batch_size": 45, "quiet": True}, seed=0)
        flat = torch.cat([p.detach().flatten() for p in result.model.parameters()])
        gathered = [torch.empty_like(flat) for _ in range(group.world_size)]
        dist.all_gather(gathered, flat)
        if group.is_main:
            gap = max(float((g - flat).abs().max()) for g in gathered)
            print(f"{name} {gap:.3e} {result.history[-1]['train/loss']:.6f} {result.epochs_run}")
            sys.stdout.flush()
    leave(created)


if __name__ == "__main__":
    main()
