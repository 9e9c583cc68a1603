"""Shared frame of the A/B step timings in this folder: one model, two forms of one of its parts.

A script builds the model on a dataset (:func:`setup`), names the forms of the part it
compares as functions that put a form in place, and calls :func:`alternate`: the training
step is timed with each form in turn, in rounds, so that both see the same machine load,
and the medians are printed with their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from alignrec.env import set_offline, tune_allocator


def parse_args(
    description: str, add_arguments: Callable[[argparse.ArgumentParser], None] | None = None
) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description.split("\n")[0])
    if add_arguments is not None:
        add_arguments(parser)
    parser.add_argument("--dataset", default="amazon-sports")
    parser.add_argument("--steps", type=int, default=5, help="training steps per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    return parser.parse_args()


@dataclass
class Bench:
    """A model in training mode, its data and batch size, and its next training step
    (``alignrec.commands.bench.training_stepper``: the trainer's step, epoch after epoch)."""

    net: Any
    data: Any
    batch_size: int
    step: Callable[[], None]


def setup(model: str, args: argparse.Namespace) -> Bench:
    """``model`` built on ``args.dataset`` with its default configs, seed 0."""
    set_offline()
    tune_allocator()

    import torch

    from alignrec.benchmark.runner import prepare_inputs
    from alignrec.commands.bench import load_bench_dataset, training_stepper
    from alignrec.models import get_model_class
    from alignrec.training import NegativeSampler, resolve_configs, set_seed
    from alignrec.training.trainer import make_optimizer

    torch.set_num_threads(args.threads)
    train_cfg, model_cfg = resolve_configs(model, {})
    data, _, _ = prepare_inputs(load_bench_dataset(args.dataset), [model], None, progress=False)
    set_seed(0)
    net = get_model_class(model)(data, model_cfg)
    opt, bs = make_optimizer(net, train_cfg), train_cfg.batch_size
    step = training_stepper(net, opt, NegativeSampler(data, seed=0), bs)
    return Bench(net=net, data=data, batch_size=bs, step=step)


def first_batch_agreement(bench: Bench, forms: dict[str, Callable[[], None]]) -> None:
    """Print the loss of the first batch (of the stream the timed steps draw from: the same
    seed) with each form in place, and the largest relative difference of each form's
    gradients from the first form's, over the parameters."""
    from alignrec.training import NegativeSampler

    net = bench.net
    first = next(NegativeSampler(bench.data, seed=0).epoch(bench.batch_size))
    losses, grads = {}, {}
    for name, put in forms.items():
        put()
        net.zero_grad(set_to_none=True)
        loss = net.loss(*first)
        loss.backward()
        losses[name] = loss.item()
        grads[name] = {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}
    net.zero_grad(set_to_none=True)
    (base, base_grads), *others = grads.items()
    for name, other in others:
        worst = max(
            float((base_grads[n] - g).abs().max() / g.abs().max().clamp_min(1e-30))
            for n, g in other.items()
        )
        print(
            f"first batch: loss {losses[base]!r} ({base}) vs {losses[name]!r} ({name}); "
            f"largest relative gradient difference {worst:.2e}"
        )


def alternate(
    bench: Bench, forms: dict[str, Callable[[], None]], args: argparse.Namespace, what: str
) -> dict[str, float]:
    """Median milliseconds of a training step with each form (``forms[name]()`` puts it in
    place), over ``args.rounds`` rounds of ``args.steps`` steps each; printed with the ratio
    of the first form to the last. The last form is left in place."""
    for _ in range(3):  # warm-up
        bench.step()
    times: dict[str, list[float]] = {name: [] for name in forms}
    for _ in range(args.rounds):
        for name, put in forms.items():
            put()
            start = time.perf_counter()
            for _ in range(args.steps):
                bench.step()
            times[name].append((time.perf_counter() - start) / args.steps * 1000)
    median = {name: statistics.median(t) for name, t in times.items()}
    (first, a), *_, (last, b) = median.items()
    print(
        f"{args.dataset}, {args.threads} thread(s), {what} training step, median of "
        f"{args.rounds} rounds of {args.steps} steps: {first} {a:.1f} ms, {last} {b:.1f} ms, "
        f"speed-up {a / b:.2f}x"
    )
    return median
