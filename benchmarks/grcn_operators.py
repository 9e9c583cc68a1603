"""GRCN's training step on its edge operators against the ones they replaced, in one process.

GRCN computes its per-edge dot products with ``torch.sparse.sampled_addmm`` and its row
normalisations with a fused backward (``alignrec/models/edge_values.py``). This times the same
model's training step with those and with what they replaced (``EdgeGraph.edge_dot``,
``EdgeGraph.matmul``, ``F.normalize``), alternating the two in rounds so that both see the
same machine load, and prints the medians and their ratio.

Usage: ``.venv/bin/python benchmarks/grcn_operators.py --dataset amazon-sports [--steps 5]``
"""

from __future__ import annotations

import argparse
import statistics
import time

from alignrec.env import set_offline, tune_allocator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="amazon-sports")
    parser.add_argument("--steps", type=int, default=5, help="training steps per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    set_offline()
    tune_allocator()

    import torch
    from torch.nn import functional as F

    import alignrec.models.grcn as grcn
    from alignrec.benchmark.runner import prepare_inputs
    from alignrec.commands.bench import load_bench_dataset
    from alignrec.models import GRCN
    from alignrec.training import NegativeSampler, resolve_configs, set_seed
    from alignrec.training.trainer import make_optimizer

    torch.set_num_threads(args.threads)
    train_cfg, model_cfg = resolve_configs("grcn", {})
    data, _, _ = prepare_inputs(load_bench_dataset(args.dataset), ["grcn"], None, progress=False)
    set_seed(0)
    net = GRCN(data, model_cfg)
    opt = make_optimizer(net, train_cfg)
    sampler = NegativeSampler(data, seed=0)

    def batches():
        while True:
            yield from sampler.epoch(train_cfg.batch_size)

    it = batches()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        net.loss(*next(it)).backward()
        opt.step()

    operators = {
        "replaced": (
            lambda x: F.normalize(x, dim=1),
            lambda g, a, b: g.edge_dot(a, b),
            lambda g, v, x: g.matmul(x, v),
        ),
        "edge_values": (grcn.normalize_rows, grcn.sddmm, grcn.weighted_matmul),
    }
    net.train()
    for _ in range(3):  # warm-up
        step()
    times: dict[str, list[float]] = {name: [] for name in operators}
    for _ in range(args.rounds):
        for name, ops in operators.items():
            grcn.normalize_rows, grcn.sddmm, grcn.weighted_matmul = ops
            start = time.perf_counter()
            for _ in range(args.steps):
                step()
            times[name].append((time.perf_counter() - start) / args.steps * 1000)
    median = {name: statistics.median(t) for name, t in times.items()}
    print(
        f"{args.dataset}, {args.threads} thread(s), GRCN training step, median of "
        f"{args.rounds} rounds of {args.steps} steps: replaced operators "
        f"{median['replaced']:.1f} ms, edge_values {median['edge_values']:.1f} ms, "
        f"speed-up {median['replaced'] / median['edge_values']:.2f}x"
    )


if __name__ == "__main__":
    main()
