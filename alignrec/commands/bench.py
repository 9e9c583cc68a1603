"""``alignrec bench-speed``: seconds per training epoch, per full validation, and peak memory.

Not a test: it measures this implementation on a real dataset so that speed
claims (alignrec.md's reference: about 6–7 s/epoch and 5–7 s/evaluation for
LightGCN on amazon-baby on a 2-core CPU) are backed by numbers.
"""

from __future__ import annotations

import resource
import statistics
import time
from typing import Annotated, Any

import typer


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_speed(
    model: str,
    dataset: str,
    epochs: int = 3,
    evals: int = 3,
    sets: list[str] | None = None,
    device: str = "cpu",
    threads: int | None = None,
    seed: int = 0,
    features: str | None = None,
) -> dict[str, Any]:
    """Time ``epochs`` training epochs and ``evals`` full validation evaluations.

    The first epoch and evaluation are warm-ups and excluded from the medians.
    """
    import torch

    from alignrec.benchmark.runner import prepare_inputs
    from alignrec.data import load_dataset
    from alignrec.errors import ConfigError
    from alignrec.evaluation import Evaluator
    from alignrec.models import get_model_class
    from alignrec.training import NegativeSampler, parse_assignments, resolve_configs, set_seed

    if threads:
        torch.set_num_threads(int(threads))
    train_cfg, model_cfg = resolve_configs(model, parse_assignments(sets))
    t0 = time.perf_counter()
    data = load_dataset(dataset)
    # what the benchmark gives the model: modality tables, AlignRec's features
    data, skipped, _ = prepare_inputs(data, [model.lower()], features, progress=False)
    if skipped:
        raise ConfigError(f"{model}: {skipped[model.lower()]}")
    load_s = time.perf_counter() - t0
    set_seed(seed)
    t0 = time.perf_counter()
    net = get_model_class(model)(data, model_cfg).to(device)
    sampler = NegativeSampler(data, seed=seed)
    evaluator = Evaluator(data, "valid", train_cfg.ks, train_cfg.eval_batch_size, device)
    build_s = time.perf_counter() - t0
    from alignrec.training.trainer import evaluate_model, make_optimizer

    opt = make_optimizer(net, train_cfg)

    epoch_s, eval_s, epoch_cpu, eval_cpu = [], [], [], []
    for epoch in range(epochs + 1):
        t, c = time.perf_counter(), time.process_time()
        net.train()
        net.on_epoch_start(epoch)
        for users, pos, neg in sampler.epoch(train_cfg.batch_size):
            opt.zero_grad(set_to_none=True)
            loss = net.loss(users.to(device), pos.to(device), neg.to(device))
            loss.backward()
            opt.step()
        epoch_s.append(time.perf_counter() - t)
        epoch_cpu.append(time.process_time() - c)
    result = None
    for _ in range(evals + 1):
        t, c = time.perf_counter(), time.process_time()
        result = evaluate_model(net, evaluator)
        eval_s.append(time.perf_counter() - t)
        eval_cpu.append(time.process_time() - c)
    return {
        "model": model,
        "dataset": dataset,
        "threads": torch.get_num_threads(),
        "train_pairs": len(data.train),
        "eval_users": len(evaluator.users),
        "load_seconds": load_s,
        "build_seconds": build_s,
        "epoch_seconds": statistics.median(epoch_s[1:]) if epochs else float("nan"),
        "epoch_seconds_all": epoch_s,
        "eval_seconds": statistics.median(eval_s[1:]) if evals else float("nan"),
        "eval_seconds_all": eval_s,
        # CPU time of this process (user + system, all threads): steadier than wall time
        # on a machine other jobs share
        "epoch_cpu_seconds": statistics.median(epoch_cpu[1:]) if epochs else float("nan"),
        "eval_cpu_seconds": statistics.median(eval_cpu[1:]) if evals else float("nan"),
        "peak_rss_mib": peak_rss_mib(),
        "valid_recall@20": result.metrics["recall@20"] if result else float("nan"),
    }


def bench_speed_command(
    model: str = typer.Option("lightgcn", "--model", help="registered model name"),
    dataset: str = typer.Option("amazon-baby", "--dataset", help="registered dataset name"),
    epochs: int = typer.Option(3, help="timed training epochs (after one warm-up)"),
    evals: int = typer.Option(3, help="timed full validation evaluations (after one warm-up)"),
    sets: Annotated[
        list[str] | None, typer.Option("--set", help="config override key=value (repeatable)")
    ] = None,
    device: str = typer.Option("cpu", help="torch device"),
    threads: int = typer.Option(0, help="torch intra-op threads (0: torch's default)"),
    features: str = typer.Option(None, "--features", help="item features of a content model"),
) -> None:
    """Print seconds per training epoch, seconds per full validation and peak memory."""
    r = bench_speed(model, dataset, epochs, evals, sets, device, threads or None, features=features)
    typer.echo(
        f"{r['model']} on {r['dataset']} ({r['threads']} threads, {r['train_pairs']:,} train pairs, "
        f"{r['eval_users']:,} valid users)"
    )
    typer.echo(
        f"  train epoch     {r['epoch_seconds']:.3f} s  (median; all: "
        + ", ".join(f"{x:.2f}" for x in r["epoch_seconds_all"])
        + ")"
    )
    typer.echo(
        f"  full validation {r['eval_seconds']:.3f} s  (median; all: "
        + ", ".join(f"{x:.2f}" for x in r["eval_seconds_all"])
        + ")"
    )
    typer.echo(
        f"  CPU time        {r['epoch_cpu_seconds']:.3f} s per epoch, "
        f"{r['eval_cpu_seconds']:.3f} s per validation (medians, user + system)"
    )
    typer.echo(f"  peak RSS        {r['peak_rss_mib']:.0f} MiB")
    typer.echo(f"  load {r['load_seconds']:.2f} s, build {r['build_seconds']:.2f} s")
