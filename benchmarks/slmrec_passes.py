"""SLMRec's training step with its ID pass and shared user part from one propagation, against two.

SLMRec's modality passes share the user part ``P [U; 0]``. ``SLMRec.id_pass_rows`` reads it
from the layers of the ID pass ``P [U; I]`` (the graph is bipartite,
``alignrec/models/layer_rows.py``); before, both were propagated side by side as one
2d-wide table. This checks that the two give the same loss and gradients on the first
batch, then times the training step with each, alternating them in rounds so that both see
the same machine load, and prints the medians and their ratio.

Usage: ``.venv/bin/python benchmarks/slmrec_passes.py --dataset amazon-sports [--steps 5]``
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

    from alignrec.benchmark.runner import prepare_inputs
    from alignrec.commands.bench import load_bench_dataset
    from alignrec.models import SLMRec
    from alignrec.models.batch_rows import mean_propagation_rows
    from alignrec.training import NegativeSampler, resolve_configs, set_seed
    from alignrec.training.trainer import make_optimizer

    torch.set_num_threads(args.threads)
    train_cfg, model_cfg = resolve_configs("slmrec", {})
    data, _, _ = prepare_inputs(load_bench_dataset(args.dataset), ["slmrec"], None, progress=False)
    set_seed(0)
    net = SLMRec(data, model_cfg)
    opt = make_optimizer(net, train_cfg)
    sampler = NegativeSampler(data, seed=0)
    one_propagation = SLMRec.id_pass_rows

    def side_by_side(self: SLMRec, nodes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The replaced form: [U; I] and [U; 0] propagated as one 2d-wide table."""
        x = torch.cat(
            [
                self.user_emb.repeat(1, 2),
                torch.cat([self.item_emb, torch.zeros_like(self.item_emb)], dim=1),
            ]
        )
        return mean_propagation_rows(self.adj, x, self.config.n_layers, nodes).chunk(2, dim=1)

    forms = {"side_by_side": side_by_side, "one_propagation": one_propagation}

    def batches():
        while True:
            yield from sampler.epoch(train_cfg.batch_size)

    it = batches()
    first = next(it)
    grads, losses = {}, {}
    for name, form in forms.items():
        SLMRec.id_pass_rows = form
        net.zero_grad(set_to_none=True)
        loss = net.loss(*first)
        loss.backward()
        losses[name] = loss.item()
        grads[name] = {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}
    worst = max(
        float((grads["side_by_side"][n] - g).abs().max() / g.abs().max().clamp_min(1e-30))
        for n, g in grads["one_propagation"].items()
    )
    print(
        f"first batch: loss {losses['side_by_side']!r} (side by side) vs "
        f"{losses['one_propagation']!r} (one propagation); "
        f"largest relative gradient difference {worst:.2e}"
    )

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        net.loss(*next(it)).backward()
        opt.step()

    net.train()
    for _ in range(3):  # warm-up
        step()
    times: dict[str, list[float]] = {name: [] for name in forms}
    for _ in range(args.rounds):
        for name, form in forms.items():
            SLMRec.id_pass_rows = form
            start = time.perf_counter()
            for _ in range(args.steps):
                step()
            times[name].append((time.perf_counter() - start) / args.steps * 1000)
    SLMRec.id_pass_rows = one_propagation
    median = {name: statistics.median(t) for name, t in times.items()}
    print(
        f"{args.dataset}, {args.threads} thread(s), SLMRec training step, median of "
        f"{args.rounds} rounds of {args.steps} steps: side by side "
        f"{median['side_by_side']:.1f} ms, one propagation {median['one_propagation']:.1f} ms, "
        f"speed-up {median['side_by_side'] / median['one_propagation']:.2f}x"
    )


if __name__ == "__main__":
    main()
