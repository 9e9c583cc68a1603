"""``alignrec bench-speed``: seconds per training epoch, its parts, per full validation, peak memory.

Not a test: it measures this implementation on a real dataset so that speed
claims (alignrec.md's reference: about 6–7 s/epoch and 5–7 s/evaluation for
LightGCN on amazon-baby on a 2-core CPU) are backed by numbers.

What is measured, per model:

- **epoch**: wall time of a training epoch (negative sampling, ``on_epoch_start`` and every
  step), unprofiled; the median over ``epochs`` epochs after a warm-up. With ``batches`` only
  the first N steps of each epoch run: the first step counts once (a model may do per-epoch
  work there) and the other N - 1 are scaled to the epoch's remaining batches (sampling and
  ``on_epoch_start`` are counted once, as in a full epoch).
- **parts** of the epoch: ``graph``, ``content`` and ``loss`` as the model labels the pieces
  of its ``loss()`` (:func:`alignrec.models.base.part`), ``backward`` and ``optimiser``
  (``loss.backward()`` and ``optimizer.step()``), and ``other`` (the rest: sampling,
  unlabelled forward code, ``zero_grad``). They come from ``torch.profiler`` over
  ``profile_batches`` extra steps: each labelled range's wall time, children included, a
  label nested in another counted once, in the inner one. The profiler adds a few
  microseconds per operator, more to a model of many small operators, so the profiled
  shares are applied to the unprofiled step time: the parts add up to the epoch. The
  ranges are host time; on CUDA the device is synchronised only around backward and the
  optimiser step, so there the model's own parts are launch time, not device time.
- **validation**: wall time of a full validation pass (score, mask, rank every valid user).
- **peak RSS**: the process's peak resident memory (each model runs in its own process in
  the all-models mode), read before the reference below is built.
- **same process** (``same_process_rounds``): after the rest, the reference (LightGCN) is
  built in the model's own process and the two train in turns, ``SAME_PROCESS_STEPS`` steps
  of each per round. An epoch of each at those medians (the model's plus what its epoch adds
  once, as measured above: sampling, ``on_epoch_start``, per-epoch work in the first step;
  the reference's plus the same sampling) gives the epoch ratio that machine drift between
  processes cannot move (the processes of one sitting run minutes apart, and a shared
  machine's speed drifts in between). Further turns of each round run the model's products
  alone (:class:`alignrec.profiling.ProductReplay`: the operators, shapes and layouts its
  steps used, on stand-in operands, the graphs' indices kept): its matrix products (an
  epoch of them against the reference's epoch is the model's **dense floor**) and its graph
  products, the sums over edges and per-edge dot products (with the dense ones, the
  **arithmetic floor**: the least its epoch can take on this machine without computing
  something else; a target below it cannot be met by speed work alone). The reference's
  own products are replayed in the same turns, so that how near each model runs to its
  floor (epoch over arithmetic floor) compares with how near the reference runs to its own.
  The validations are floored likewise: the products of a validation of each (dense and
  graph), replayed in the same turns; the evaluator's own work (masking, ranking, metrics:
  the same for every model) is the reference's validation less its products, and the
  model's validation floor is that work plus the model's products.
"""

from __future__ import annotations

import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from functools import partial
from itertools import chain, islice
from pathlib import Path
from typing import Annotated, Any

import typer

REFERENCE = "lightgcn"  # the model every other is compared with
STEP_PARTS = ("backward", "optimiser")  # timed here, around the trainer's own calls
# Epoch parts in the order the tables give them; "other" is what no label covers.
PART_COLUMNS = ("graph", "content", "loss", *STEP_PARTS, "other")
STEP_RANGE = "bench:step"
# Targets of the speed work, as ratios to the reference on the same dataset.
TARGETS = {"epoch": 3.0, "epoch:alignrec": 2.0, "validation": 1.5}
SAME_PROCESS_ROUNDS = 5  # the CLI's default rounds of same-process steps
SAME_PROCESS_STEPS = 5  # steps of the model, then of the reference, per round
SAME_PROCESS_EVALS = 2  # full validations of each, in turns, after the rounds


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def load_bench_dataset(dataset: str):
    """A registered dataset by name, or a generated one: ``synthetic:electronics``,
    ``synthetic:tiny,dim=0`` (see :func:`alignrec.data.synthetic.parse_scale`)."""
    from alignrec.data.synthetic import SCALE_PREFIX, scale_dataset

    if dataset.startswith(SCALE_PREFIX):
        return scale_dataset(dataset)
    from alignrec.data import load_dataset

    return load_dataset(dataset)


def _sync(device: Any) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def part_seconds(events: Any) -> tuple[dict[str, float], float]:
    """Seconds per ``part:<name>`` label and the total of the ``bench:step`` ranges, from a
    profiler's events. A label inside another counts for the inner one only."""
    ranges = sorted(
        (
            (e.time_range.start, e.time_range.end, e.name)
            for e in events
            if e.name.startswith("part:") or e.name == STEP_RANGE
        ),
        key=lambda r: (r[0], -r[1]),
    )
    parts: dict[str, float] = {}
    steps = 0.0
    stack: list[list[Any]] = []  # open part ranges: [end, name, exclusive us]

    def close(entry: list[Any]) -> None:
        parts[entry[1]] = parts.get(entry[1], 0.0) + entry[2]

    for start, end, name in ranges:
        while stack and stack[-1][0] <= start:
            close(stack.pop())
        if name == STEP_RANGE:
            steps += end - start
            continue
        if stack:
            stack[-1][2] -= end - start
        stack.append([end, name.removeprefix("part:"), float(end - start)])
    while stack:
        close(stack.pop())
    return {k: max(v, 0.0) / 1e6 for k, v in parts.items()}, steps / 1e6


def _profiled(step, batches) -> tuple[dict[str, float], float]:
    """:func:`part_seconds` of ``step`` run on each of ``batches`` under torch.profiler."""
    import torch

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for users, pos, neg in batches:
            with torch.profiler.record_function(STEP_RANGE):
                step(users, pos, neg)
    return part_seconds(prof.events())


def gemm_gflops(device: Any, n: int = 2048, k: int = 512, repeats: int = 5) -> float:
    """This process's float32 matrix-product rate in GFLOP/s: the best of ``repeats``
    ``[n, k] @ [k, k]`` products, at the process's thread count."""
    import torch

    a = torch.randn(n, k, device=device)
    b = torch.randn(k, k, device=device)
    best = math.inf
    for _ in range(repeats + 1):
        _sync(device)
        t = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * n * k * k / best / 1e9


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
    batches: int | None = None,
    profile_batches: int = 10,
    warmup: bool = True,
    same_process_rounds: int = 0,
) -> dict[str, Any]:
    """Time ``epochs`` training epochs (the first ``batches`` steps of each, scaled to the
    epoch, when given), profile ``profile_batches`` more steps, and time ``evals`` full
    validations. With ``warmup`` one more epoch and evaluation run first, excluded from the
    medians (without it, on a dataset where one epoch costs many minutes, every one is timed).
    With ``same_process_rounds``, the model's steps and the reference's alternate in this
    process (:func:`same_process_ratio`). See the module docstring for what each figure means.
    """
    import torch

    from alignrec.benchmark.runner import prepare_inputs
    from alignrec.env import torch_device
    from alignrec.errors import ConfigError
    from alignrec.evaluation import Evaluator
    from alignrec.models import get_model_class
    from alignrec.profiling import ProductReplay
    from alignrec.training import NegativeSampler, parse_assignments, resolve_configs, set_seed

    if threads:
        torch.set_num_threads(int(threads))
    if batches is not None and batches < 1:
        raise ConfigError(f"batches must be >= 1, got {batches}")
    device = torch_device(device)
    train_cfg, model_cfg = resolve_configs(model, parse_assignments(sets))
    t0 = time.perf_counter()
    data = load_bench_dataset(dataset)
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
    n_batches = math.ceil(len(sampler) / train_cfg.batch_size)
    run_batches = min(batches or n_batches, n_batches)

    def step(users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> None:
        opt.zero_grad(set_to_none=True)
        loss = net.loss(users.to(device), pos.to(device), neg.to(device))
        with torch.profiler.record_function("part:backward"):
            loss.backward()
            _sync(device)
        with torch.profiler.record_function("part:optimiser"):
            opt.step()
            _sync(device)

    def epoch_batches(epoch: int):
        net.train()
        net.on_epoch_start(epoch)
        it = sampler.epoch(train_cfg.batch_size)
        first = next(it)  # the whole epoch's negatives are drawn here
        return chain([first], it)

    epoch_s, eval_s, epoch_cpu, eval_cpu, setup_s, regular_s = [], [], [], [], [], []
    w = int(bool(warmup))
    for epoch in range(epochs + w if epochs else 0):
        t, c = time.perf_counter(), time.process_time()
        it = epoch_batches(epoch)
        setup, setup_cpu = time.perf_counter() - t, time.process_time() - c
        # The first step apart: a model may do once-per-epoch work there (LATTICE rebuilds its
        # item graphs), which must count once, not scaled with the other steps.
        t, c = time.perf_counter(), time.process_time()
        step(*next(it))
        _sync(device)
        first, first_cpu = time.perf_counter() - t, time.process_time() - c
        t, c = time.perf_counter(), time.process_time()
        for users, pos, neg in islice(it, run_batches - 1):
            step(users, pos, neg)
        _sync(device)
        scale = (n_batches - 1) / (run_batches - 1) if run_batches > 1 else 0.0
        if run_batches == 1:  # nothing but the first step to go by
            first, first_cpu = first * n_batches, first_cpu * n_batches
        rest = time.perf_counter() - t
        setup_s.append(setup)
        # a step past the epoch's first: what the same-process rounds time
        regular_s.append(rest / (run_batches - 1) if run_batches > 1 else first / n_batches)
        epoch_s.append(setup + first + scale * rest)
        epoch_cpu.append(setup_cpu + first_cpu + scale * (time.process_time() - c))

    parts: dict[str, float] = {}
    profiled_step = float("nan")
    n_prof = min(profile_batches, n_batches)
    if n_prof > 0:
        # the epoch's first step and the others profiled apart, then weighted as in an epoch
        # (the first once, the others n_batches - 1 times between them)
        it = epoch_batches(epochs + w)
        first_parts, first_total = _profiled(step, islice(it, 1))
        rest_parts, rest_total = _profiled(step, islice(it, n_prof - 1))
        weight = (n_batches - 1) / (n_prof - 1) if n_prof > 1 else 0.0
        labelled = {k: first_parts.get(k, 0.0) + weight * rest_parts.get(k, 0.0)
                    for k in {*first_parts, *rest_parts}}
        total = first_total + weight * rest_total
        profiled_step = (first_total + rest_total) / n_prof
        parts = {k: v / total for k, v in labelled.items()} if total > 0 else {}

    # the step's dense arithmetic (matrix products, forward and backward) and what this core
    # needs for it at its measured GEMM rate: the floor under the model's own content and loss
    # (an epoch's first step counted apart: a model may do once-per-epoch work there); the
    # products, dense and graph, are captured to be replayed alone below, the floors in this
    # process
    it = epoch_batches(epochs + w + 1)
    first_products = ProductReplay.capture(lambda: step(*next(it)))
    products = (
        first_products if n_batches == 1 else ProductReplay.capture(lambda: step(*next(it)))
    )
    flops, flops_per_step = first_products.flops, products.flops
    flops_epoch = flops + (n_batches - 1) * flops_per_step
    gemm = gemm_gflops(device)

    result = None
    for _ in range(evals + w if evals else 0):
        t, c = time.perf_counter(), time.process_time()
        result = evaluate_model(net, evaluator)
        eval_s.append(time.perf_counter() - t)
        eval_cpu.append(time.process_time() - c)
    rss = peak_rss_mib()  # the model's own, before a reference joins the process
    epoch = statistics.median(epoch_s[w:]) if epochs else float("nan")
    same_process = None
    if same_process_rounds > 0 and model.lower() != REFERENCE and epochs:
        same_process = same_process_ratio(
            (net, opt, sampler, train_cfg.batch_size),
            data,
            same_process_rounds,
            device,
            seed,
            evaluator=evaluator if evals else None,
            products=(first_products, products),
        )
        # An epoch of each in those conditions (the reference trains at the model's batch
        # size, so as many steps): the model's steps at the rounds' pace plus what its epoch
        # adds once (sampling, on_epoch_start, per-epoch work in its first step), measured
        # above; the reference's steps plus the same sampling.
        sampling = statistics.median(setup_s[w:])
        once = max(epoch - statistics.median(regular_s[w:]) * n_batches, sampling)
        model_epoch = same_process["model_step_seconds"] * n_batches + once
        ref_epoch = same_process["reference_step_seconds"] * n_batches + sampling
        same_process.update(
            epoch_once_seconds=once,
            model_epoch_seconds=model_epoch,
            reference_epoch_seconds=ref_epoch,
            epoch_ratio=model_epoch / ref_epoch,
            # the model's matrix products alone, an epoch of them (its first step's apart)
            floor_ratio=(
                same_process["floor_first_step_seconds"]
                + same_process["floor_step_seconds"] * (n_batches - 1)
            ) / ref_epoch,
        )
        # with its graph products: the least its epoch can take; and how near each of the
        # two runs to its own floor
        arithmetic = (
            same_process["floor_first_step_seconds"]
            + same_process["graph_floor_first_step_seconds"]
            + (same_process["floor_step_seconds"] + same_process["graph_floor_step_seconds"])
            * (n_batches - 1)
        )
        same_process.update(
            arithmetic_floor_ratio=arithmetic / ref_epoch,
            # a model without products (BPR) has no floor to run near
            floor_headroom=model_epoch / arithmetic if len(products) else float("nan"),
            reference_floor_headroom=(
                ref_epoch / (same_process["reference_floor_step_seconds"] * n_batches)
            ),
        )
    # an epoch's steps: the epoch less its sampling and on_epoch_start
    steps = epoch - min(statistics.median(setup_s[w:]), epoch) if epochs else float("nan")
    seconds = {k: parts.get(k, 0.0) * steps for k in PART_COLUMNS[:-1]}
    seconds["other"] = max(epoch - sum(seconds.values()), 0.0)
    return {
        "model": model.lower(),
        "dataset": dataset,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "train_pairs": len(data.train),
        "eval_users": len(evaluator.users),
        "batch_size": train_cfg.batch_size,
        "batches_per_epoch": n_batches,
        "batches_timed": run_batches,
        "warmup": bool(warmup),
        "load_seconds": load_s,
        "build_seconds": build_s,
        "epoch_seconds": epoch,
        "epoch_seconds_all": epoch_s,
        "step_seconds": steps / n_batches,
        # the profiled step's wall time: its excess over step_seconds is the profiler's own cost
        "profiled_step_seconds": profiled_step,
        "profile_batches": n_prof,
        # shares of a step per label (the profiled fractions), and seconds per epoch per part
        "step_shares": parts,
        "parts_seconds": seconds if n_prof and epochs else {},
        "eval_seconds": statistics.median(eval_s[w:]) if evals else float("nan"),
        "eval_seconds_all": eval_s,
        # CPU time of this process (user + system, all threads): steadier than wall time
        # on a machine other jobs share
        "epoch_cpu_seconds": statistics.median(epoch_cpu[w:]) if epochs else float("nan"),
        "eval_cpu_seconds": statistics.median(eval_cpu[w:]) if evals else float("nan"),
        "dense_gflop_per_step": flops_per_step / 1e9,
        "dense_gflop_first_step": flops / 1e9,
        "gemm_gflops": gemm,
        "dense_floor_seconds": flops_epoch / 1e9 / gemm,
        "peak_rss_mib": rss,
        "same_process": same_process,
        "peak_device_mib": (
            torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
        ),
        "valid_recall@20": result.metrics["recall@20"] if result else float("nan"),
    }


def training_stepper(net: Any, opt: Any, sampler: Any, batch_size: int, device: Any = "cpu"):
    """A function that runs the next training step of ``net`` (epochs follow each other, each
    started with ``on_epoch_start``, as the trainer does)."""

    def batches():
        e = 0
        while True:
            net.train()
            net.on_epoch_start(e)
            yield from sampler.epoch(batch_size)
            e += 1

    it = batches()

    def step() -> None:
        users, pos, neg = next(it)
        opt.zero_grad(set_to_none=True)
        net.loss(users.to(device), pos.to(device), neg.to(device)).backward()
        opt.step()

    return step


def same_process_ratio(
    model: tuple,
    data: Any,
    rounds: int,
    device: Any,
    seed: int = 0,
    evaluator: Any = None,
    *,
    products: tuple[Any, Any],
) -> dict[str, Any]:
    """The model's training step against the reference's, timed in turns in this process.

    ``model`` is (net, optimiser, sampler, batch size). The reference is built on ``data`` with
    its defaults and the model's batch size. ``products`` are the products of the model's
    first step of an epoch and of a later one (:class:`~alignrec.profiling.ProductReplay`).
    After two untimed steps of each (the reference's second captured: its own products),
    every round times ``SAME_PROCESS_STEPS`` steps of the model, as many of the reference, as
    many replays of the later step's matrix products alone (the model's dense floor per
    step), of its graph products alone, and of the reference's products, and one of each kind
    of the first step's. Returns the medians (seconds per step); :func:`bench_speed` adds
    the epoch ratios. With an ``evaluator``, then ``SAME_PROCESS_EVALS`` full validations of
    each in turns, each followed by a replay of its products alone, and the ratios.
    """
    import torch

    from alignrec.models import get_model_class
    from alignrec.profiling import ProductReplay
    from alignrec.training import NegativeSampler, resolve_configs, set_seed
    from alignrec.training.trainer import make_optimizer

    net, opt, sampler, batch_size = model
    ref_train, ref_cfg = resolve_configs(REFERENCE, {"train.batch_size": batch_size})
    set_seed(seed)
    ref = get_model_class(REFERENCE)(data, ref_cfg).to(device)
    steppers = {
        "model": training_stepper(net, opt, sampler, batch_size, device),
        "reference": training_stepper(
            ref, make_optimizer(ref, ref_train), NegativeSampler(data, seed=seed), batch_size, device
        ),
    }
    steppers["model"]()
    steppers["model"]()
    steppers["reference"]()
    ref_products = ProductReplay.capture(steppers["reference"])
    first_products, later_products = products
    # the model's products alone, of each kind, and the reference's are timed as further turns
    turns = {
        **steppers,
        "floor": later_products.dense.run,
        "floor first": first_products.dense.run,
        "graph floor": later_products.graph.run,
        "graph floor first": first_products.graph.run,
        "reference floor": ref_products.run,
    }
    times: dict[str, list[float]] = {k: [] for k in turns}
    for _ in range(rounds):
        for name, step in turns.items():
            n = 1 if name.endswith(" first") else SAME_PROCESS_STEPS
            _sync(device)
            t = time.perf_counter()
            for _ in range(n):
                step()
            _sync(device)
            times[name].append((time.perf_counter() - t) / n)
    model_step, ref_step, floor_step, floor_first, graph_step, graph_first, ref_floor = (
        statistics.median(times[k]) for k in turns
    )
    evals: dict[str, float] = {}
    if evaluator is not None:
        from alignrec.training.trainer import evaluate_model

        validations = {
            "model": partial(evaluate_model, net, evaluator),
            "reference": partial(evaluate_model, ref, evaluator),
        }
        # each validation's products (the scores, and whatever the model multiplies and
        # propagates to build its vectors), captured on one more validation and timed in the
        # same turns
        for name in ("model", "reference"):
            validations[f"{name} floor"] = ProductReplay.capture(validations[name]).run
        eval_times: dict[str, list[float]] = {k: [] for k in validations}
        for _ in range(SAME_PROCESS_EVALS):
            for name, validate in validations.items():
                _sync(device)
                t = time.perf_counter()
                validate()
                _sync(device)
                eval_times[name].append(time.perf_counter() - t)
        model_eval, ref_eval, model_products, ref_products = (
            statistics.median(eval_times[k]) for k in validations
        )
        evals = {
            "model_eval_seconds": model_eval,
            "reference_eval_seconds": ref_eval,
            "model_eval_products_seconds": model_products,
            "reference_eval_products_seconds": ref_products,
            "eval_ratio": model_eval / ref_eval,
            # the evaluator's own work (masking, ranking, metrics) is the same for every
            # model: the reference's validation less its products; the model's floor is that
            # work plus the model's own products
            "eval_floor_ratio": (ref_eval - ref_products + model_products) / ref_eval,
        }
    del ref
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {
        "rounds": rounds,
        "steps": SAME_PROCESS_STEPS,
        "model_step_seconds": model_step,
        "reference_step_seconds": ref_step,
        "floor_step_seconds": floor_step,
        "floor_first_step_seconds": floor_first,
        "graph_floor_step_seconds": graph_step,
        "graph_floor_first_step_seconds": graph_first,
        "reference_floor_step_seconds": ref_floor,
        **evals,
    }


# ------------------------------------------------------------------ every model, one sitting


def model_list(models: str) -> list[str]:
    """``all`` or a comma-separated list as registered names, the reference first when
    present; a :class:`ConfigError` naming the registered models for an unknown one."""
    from alignrec.errors import ConfigError
    from alignrec.models import MODELS, get_model_class

    if models.strip().lower() == "all":
        names = list(MODELS)
    else:
        names = []
        for m in (x.strip() for x in models.split(",")):
            if not m:
                continue
            get_model_class(m)
            if m.lower() not in names:
                names.append(m.lower())
    if not names:
        raise ConfigError("no model given: pass --models all or a comma-separated list")
    return sorted(names, key=lambda n: n != REFERENCE)


def _run_worker(kwargs: dict[str, Any], timeout: float | None) -> dict[str, Any]:
    """``bench_speed(**kwargs)`` in a fresh process, so that its peak memory is its own."""
    with tempfile.TemporaryDirectory(prefix="alignrec-bench-") as tmp:
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, "-m", "alignrec.commands.bench", json.dumps(kwargs), str(out)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"model": kwargs["model"], "skipped": f"did not finish within {timeout:.0f} s"}
        if out.is_file():
            return json.loads(out.read_text())
        lines = [x for x in (proc.stderr or "").splitlines() if x.strip()]
        why = lines[-1] if lines else f"exit status {proc.returncode}"
        if proc.returncode < 0:
            why = f"killed by signal {-proc.returncode} (out of memory?)"
        return {"model": kwargs["model"], "skipped": f"failed: {why}"}


def _worker_main(argv: list[str]) -> int:
    """Entry point of one model's process: ``python -m alignrec.commands.bench KWARGS OUT``."""
    from alignrec import io
    from alignrec.env import configure_process
    from alignrec.errors import AlignRecError

    configure_process()
    kwargs, out = json.loads(argv[0]), argv[1]
    try:
        record = bench_speed(**kwargs)
    except AlignRecError as exc:  # the model cannot run on this dataset: say why
        record = {"model": kwargs["model"], "skipped": str(exc)}
    io.write_json(out, record)
    return 0


def _git(*args: str) -> str | None:
    try:
        root = Path(__file__).resolve().parents[2]
        out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=60)
        return out.stdout.strip() if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def machine() -> dict[str, Any]:
    """Where the figures were measured."""
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "system": platform.platform(),
        "python": platform.python_version(),
    }


def bench_all(
    models: list[str],
    dataset: str,
    out: str | Path | None = None,
    command: str = "",
    timeout: float | None = None,
    echo: Any = print,
    **kwargs: Any,
) -> dict[str, Any]:
    """Run :func:`bench_speed` for every model of ``models``, each in its own process and in
    this order, then write ``<out>/profile.json`` and ``<out>/profile.md`` (when ``out``)."""
    import torch

    rows = []
    for name in models:
        echo(f"{name} ...")
        row = _run_worker({"model": name, "dataset": dataset, **kwargs}, timeout)
        rows.append(row)
        echo("  " + (f"skipped: {row['skipped']}" if "skipped" in row else _brief(row)))
    add_ratios(rows)
    report = {
        "dataset": dataset,
        "command": command,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "git_commit": _git("rev-parse", "HEAD") or None,
        # tracked files changed since that commit (the code measured is not the commit alone)
        "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "machine": machine(),
        "torch": torch.__version__,
        "threads": kwargs.get("threads"),
        "settings": kwargs,
        "models": rows,
    }
    if out is not None:
        from alignrec import io

        out = Path(out)
        io.write_json(out / "profile.json", _finite(report))
        io.write_text(out / "profile.md", profile_markdown(report))
    return report


def _brief(row: dict[str, Any]) -> str:
    return (
        f"epoch {row['epoch_seconds']:.2f} s, validation {row['eval_seconds']:.2f} s, "
        f"peak RSS {row['peak_rss_mib']:.0f} MiB"
    )


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """Each measured row's epoch and validation time as a ratio to the reference's, and its
    same-process ratios; the targets judge the same-process ratios where there are."""
    ref = next((r for r in rows if r["model"] == REFERENCE and "skipped" not in r), None)
    for r in rows:
        if "skipped" in r or ref is None:
            continue
        r["epoch_ratio"] = r["epoch_seconds"] / ref["epoch_seconds"]
        r["eval_ratio"] = r["eval_seconds"] / ref["eval_seconds"]
        same = r.get("same_process")
        for key in ("epoch_ratio", "eval_ratio"):
            if same and key in same:
                r[f"{key}_same_process"] = same[key]
            elif r is ref and any(key in (x.get("same_process") or {}) for x in rows):
                r[f"{key}_same_process"] = 1.0
        for key in ("floor_ratio", "arithmetic_floor_ratio", "eval_floor_ratio"):
            if same and key in same:
                r[f"{key}_same_process"] = same[key]
        if same and "floor_headroom" in same:
            r["floor_headroom"] = same["floor_headroom"]
        # the same-process ratios when there are: drift between processes cannot move them
        epoch_ratio = r.get("epoch_ratio_same_process", r["epoch_ratio"])
        eval_ratio = r.get("eval_ratio_same_process", r["eval_ratio"])
        epoch_target = TARGETS.get(f"epoch:{r['model']}", TARGETS["epoch"])
        checks = [(epoch_ratio, epoch_target), (eval_ratio, TARGETS["validation"])]
        checks = [(x, t) for x, t in checks if math.isfinite(x)]  # only what was measured
        if checks:
            r["within_targets"] = all(x <= t for x, t in checks)
        # the model's products alone (its arithmetic floor where measured, else its matrix
        # products) take longer than its target allows
        floor = r.get("arithmetic_floor_ratio_same_process", r.get("floor_ratio_same_process"))
        if floor is not None:
            r["epoch_target_below_floor"] = floor > epoch_target
        if "eval_floor_ratio_same_process" in r:
            r["validation_target_below_floor"] = (
                r["eval_floor_ratio_same_process"] > TARGETS["validation"]
            )
    # how near the reference runs to its own products: measured in every model's process
    if ref is not None:
        headroom = [
            r["same_process"]["reference_floor_headroom"]
            for r in rows
            if "reference_floor_headroom" in (r.get("same_process") or {})
        ]
        if headroom:
            ref["floor_headroom"] = statistics.median(headroom)


def _s(x: float | None) -> str:
    if x is None or not math.isfinite(x):
        return ""
    return f"{x:.2f}" if abs(x) < 10 else f"{x:.1f}" if abs(x) < 100 else f"{x:.0f}"


def _ratio(x: float | None) -> str:
    return "" if x is None or not math.isfinite(x) else f"{x:.2f}"


def _finite(obj: Any) -> Any:
    """``obj`` with NaN and infinities as None (strict JSON has no NaN)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def profile_markdown(report: dict[str, Any]) -> str:
    """The profile as a markdown file: a heading, the table, the models not run, the command."""
    rows = report["models"]
    scaled = any(r["batches_timed"] < r["batches_per_epoch"] for r in rows if "skipped" not in r)
    lines = [
        f"# Speed profile on {report['dataset']}",
        "",
        "| model | epoch s | x LightGCN | x LightGCN, same process | graph | content | loss "
        "| backward | optimiser | other | dense GFLOP/step | dense floor s "
        "| dense floor x LightGCN, same process | arithmetic floor x LightGCN, same process "
        "| epoch x own arithmetic floor | validation s "
        "| x LightGCN | x LightGCN, same process | validation floor x LightGCN, same process "
        "| peak RSS MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "skipped" not in r:
            lines.append("| " + " | ".join(_row_cells(r, flop_count=True)) + " |")
    lines.append("")
    skipped = [r for r in rows if "skipped" in r]
    if skipped:
        lines += [f"Not run: {r['model']}: {r['skipped']}" for r in skipped]
        lines.append("")
    s = report["settings"]
    how = (
        f"Produced by `{report['command']}`"
        + (f" on {report['git_commit'][:10]}" if report.get("git_commit") else "")
        + (" with uncommitted changes" if report.get("git_dirty") else "")
        + f", {report['date'][:10]}, torch {report['torch']}, {report['machine']['cpu']}. "
        "Seconds per training epoch (median of "
        f"{s.get('epochs')}{' after a warm-up' if s.get('warmup', True) else ''}"
        + (
            f"; the first {s.get('batches')} batches of each epoch timed, the first counted "
            "once and the others scaled to the epoch's batches"
            if scaled
            else ""
        )
        + "), split into parts by torch.profiler's shares of "
        f"{s.get('profile_batches')} profiled steps; validation: one full pass, median of "
        f"{s.get('evals')}. Dense GFLOP/step: the matrix products of a training step after an "
        "epoch's first, backward included (torch.utils.flop_counter; graph propagation and lookups are not "
        "counted); dense floor: the seconds an epoch of them (its first step "
        "counted apart) needs at this process's measured float32 GEMM rate"
        + (f" ({_gemm_range(rows)} GFLOP/s)" if _gemm_range(rows) else "")
        + ". Peak RSS: each model's own process."
        + (
            f" Same process: in the model's process, its training steps and LightGCN's in turns, "
            f"{s['same_process_rounds']} rounds of {SAME_PROCESS_STEPS} steps each, an epoch of "
            "each at their median steps (plus what the model's epoch adds once, and the same "
            f"sampling for LightGCN), then {SAME_PROCESS_EVALS} full validations of each in turns "
            "(medians); the targets are judged on these ratios. Dense floor x LightGCN, same "
            "process: the model's matrix products of an epoch's first step and of a later one, "
            "captured and replayed alone on stand-in operands as further turns of those rounds, "
            "an epoch of them against LightGCN's epoch. Arithmetic floor: the same with its "
            "graph products too (sums over edges and per-edge dot products, on the graphs' own "
            "indices), the least its epoch can take without computing something else. Epoch x "
            "own arithmetic floor: the model's epoch over its arithmetic floor, both from those "
            "turns (LightGCN's: its own products replayed in the same turns, median over the "
            "models' processes); how near each model runs to its arithmetic. Validation floor "
            "x LightGCN, same process: the evaluator's own "
            "work (LightGCN's validation less its products) plus the model's validation "
            "products, dense and graph, replayed alone in the same turns, against LightGCN's "
            "validation."
            if s.get("same_process_rounds")
            else ""
        )
    )
    lines.append(how)
    return "\n".join(lines) + "\n"


def _row_cells(r: dict[str, Any], flop_count: bool) -> list[str]:
    """A measured row's cells, in the order of the profile's columns; ``flop_count``: with the
    FLOP count's two (dense GFLOP per step and its floor at the GEMM rate)."""
    parts = r.get("parts_seconds") or {}
    flops = [_s(r.get("dense_gflop_per_step")), _s(r.get("dense_floor_seconds"))]
    return [
        r["model"],
        _s(r["epoch_seconds"]),
        _ratio(r.get("epoch_ratio")),
        _ratio(r.get("epoch_ratio_same_process")),
        *(_s(parts.get(p)) for p in PART_COLUMNS),
        *(flops if flop_count else []),
        _ratio(r.get("floor_ratio_same_process")),
        _ratio(r.get("arithmetic_floor_ratio_same_process")),
        _ratio(r.get("floor_headroom")),
        _s(r["eval_seconds"]),
        _ratio(r.get("eval_ratio")),
        _ratio(r.get("eval_ratio_same_process")),
        _ratio(r.get("eval_floor_ratio_same_process")),
        f"{r['peak_rss_mib']:.0f}",
    ]


def _gemm_range(rows: list[dict[str, Any]]) -> str:
    rates = [r["gemm_gflops"] for r in rows if r.get("gemm_gflops")]
    if not rates:
        return ""
    lo, hi = min(rates), max(rates)
    return f"{lo:.0f}" if round(lo) == round(hi) else f"{lo:.0f}–{hi:.0f}"


def _print_single(r: dict[str, Any]) -> None:
    typer.echo(
        f"{r['model']} on {r['dataset']} ({r['threads']} threads, {r['train_pairs']:,} train pairs, "
        f"{r['eval_users']:,} valid users)"
    )
    timed = (
        f"; first {r['batches_timed']} of {r['batches_per_epoch']} batches timed, scaled"
        if r["batches_timed"] < r["batches_per_epoch"]
        else ""
    )
    typer.echo(
        f"  train epoch     {r['epoch_seconds']:.3f} s  (median{timed}; all: "
        + ", ".join(f"{x:.2f}" for x in r["epoch_seconds_all"])
        + ")"
    )
    parts = r.get("parts_seconds") or {}
    if parts:
        typer.echo(
            "  epoch parts     "
            + ", ".join(f"{p} {parts[p]:.3f}" for p in PART_COLUMNS)
            + f" s  (profiler shares of {r['profile_batches']} steps; profiled step "
            f"{1000 * r['profiled_step_seconds']:.1f} ms, unprofiled {1000 * r['step_seconds']:.1f} ms)"
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
    if r.get("gemm_gflops"):
        typer.echo(
            f"  dense arithmetic {r['dense_gflop_per_step']:.3f} GFLOP per step: "
            f"{r['dense_floor_seconds']:.3f} s per epoch at {r['gemm_gflops']:.0f} GFLOP/s "
            "(this process's float32 GEMM rate)"
        )
    same = r.get("same_process")
    if same:
        typer.echo(
            f"  same process    step {1000 * same['model_step_seconds']:.1f} ms against "
            f"{REFERENCE}'s {1000 * same['reference_step_seconds']:.1f} ms, in turns "
            f"({same['rounds']} rounds of {same['steps']} steps): epoch {same['epoch_ratio']:.2f}x"
            + (f"; validation {same['eval_ratio']:.2f}x" if "eval_ratio" in same else "")
        )
        typer.echo(
            f"  dense floor     {1000 * same['floor_step_seconds']:.1f} ms per step (its matrix "
            f"products replayed alone, same rounds): {same['floor_ratio']:.2f}x {REFERENCE}'s epoch"
        )
        typer.echo(
            f"  arithmetic floor {1000 * same['floor_step_seconds']:.1f} + "
            f"{1000 * same['graph_floor_step_seconds']:.1f} ms per step (graph products too): "
            f"{same['arithmetic_floor_ratio']:.2f}x {REFERENCE}'s epoch; "
            + (
                f"the epoch takes {same['floor_headroom']:.2f}x its floor"
                if math.isfinite(same["floor_headroom"])
                else "no products to run near"
            )
            + f", {REFERENCE}'s {same['reference_floor_headroom']:.2f}x its own"
            + (
                f"; validation floor {same['eval_floor_ratio']:.2f}x"
                if "eval_floor_ratio" in same
                else ""
            )
        )
    typer.echo(f"  peak RSS        {r['peak_rss_mib']:.0f} MiB")
    if r.get("peak_device_mib") is not None:
        typer.echo(f"  peak device     {r['peak_device_mib']:.0f} MiB allocated")
    typer.echo(f"  load {r['load_seconds']:.2f} s, build {r['build_seconds']:.2f} s")


def _print_table(report: dict[str, Any]) -> None:
    head = (
        "model", "epoch s", "x ref", "x ref 1p", *PART_COLUMNS, "floor 1p", "arith 1p",
        "x own", "valid s", "x ref", "x ref 1p", "floor 1p", "RSS MiB",
    )
    table = [list(head)]
    table += [_row_cells(r, flop_count=False) for r in report["models"] if "skipped" not in r]
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    for row in table:
        typer.echo(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )
    for r in report["models"]:
        if "skipped" in r:
            typer.echo(f"not run: {r['model']}: {r['skipped']}")
    if any(r.get("epoch_ratio_same_process") for r in report["models"]):
        typer.echo(
            f"x ref 1p: ratios from steps and validations timed in turns with {REFERENCE} in "
            "the model's own process (the targets judge them); floor 1p: an epoch of the "
            f"model's matrix products alone, timed in the same turns, x {REFERENCE}'s epoch, "
            "and a validation of its products plus the evaluator's own work; arith 1p: the "
            "matrix and graph products; x own: the epoch over its arithmetic floor"
        )
    over = [r["model"] for r in report["models"] if r.get("within_targets") is False]
    if over:
        typer.echo(
            f"over target (epoch <= {TARGETS['epoch']:g}x {REFERENCE}, alignrec "
            f"<= {TARGETS['epoch:alignrec']:g}x; validation <= {TARGETS['validation']:g}x): "
            + ", ".join(over)
        )
    below = [
        f"{r['model']} ({what})"
        for r in report["models"]
        for what in ("epoch", "validation")
        if r.get(f"{what}_target_below_floor")
    ]
    if below:
        typer.echo(
            "target below the model's own arithmetic floor (not reachable without computing "
            "something else): " + ", ".join(below)
        )


def _command_line(**opts: Any) -> str:
    parts = ["alignrec bench-speed"]
    for key, value in opts.items():
        if value is None or value is False:
            continue
        flag = "--" + key.replace("_", "-")
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, list):
            parts += [f"{flag} {v}" for v in value]
        else:
            parts.append(flag if value is True else f"{flag} {value}")
    return " ".join(parts)


def bench_speed_command(
    model: str = typer.Option("lightgcn", "--model", help="registered model name"),
    models: str = typer.Option(
        None,
        "--models",
        help="'all' or a comma-separated list: every model in its own process, in one "
        "sitting, LightGCN first as the reference; prints the profile table",
    ),
    dataset: str = typer.Option(
        "amazon-baby",
        "--dataset",
        help="registered dataset name, or a generated one: synthetic:electronics, "
        "synthetic:tiny[,key=value...]",
    ),
    epochs: int = typer.Option(3, help="timed training epochs (after one warm-up)"),
    evals: int = typer.Option(3, help="timed full validation evaluations (after one warm-up)"),
    batches: int = typer.Option(
        0, help="time only the first N batches of each epoch and scale to the epoch (0: all)"
    ),
    profile_batches: int = typer.Option(
        10, help="steps profiled to split the epoch into parts (0: no profile)"
    ),
    warmup: bool = typer.Option(
        True, help="run one untimed epoch and validation first (--no-warmup: time every one)"
    ),
    sets: Annotated[
        list[str] | None, typer.Option("--set", help="config override key=value (repeatable)")
    ] = None,
    device: str = typer.Option("cpu", help="torch device"),
    threads: int = typer.Option(0, help="torch intra-op threads (0: torch's default)"),
    features: str = typer.Option(None, "--features", help="item features of a content model"),
    out: Annotated[
        Path | None,
        typer.Option("--out", help="with --models: write profile.json and profile.md here"),
    ] = None,
    timeout: float = typer.Option(
        0,
        help="with --models: seconds a model may take before it is listed as not run (0: no limit)",
    ),
    same_process_rounds: int = typer.Option(
        SAME_PROCESS_ROUNDS,
        help="rounds of training steps of the model and of LightGCN in turns, in the model's "
        "own process, for an epoch ratio free of drift between processes (0: none)",
    ),
) -> None:
    """Print seconds per training epoch and its parts, seconds per full validation and peak memory."""
    settings = {
        "epochs": epochs,
        "evals": evals,
        "sets": sets,
        "device": device,
        "threads": threads or None,
        "features": features,
        "batches": batches or None,
        "profile_batches": profile_batches,
        "warmup": warmup,
        "same_process_rounds": max(same_process_rounds, 0),
    }
    if models is None:
        _print_single(bench_speed(model, dataset, **settings))
        return
    names = model_list(models)
    command = _command_line(
        models=models,
        dataset=dataset,
        threads=threads or None,
        epochs=epochs,
        evals=evals,
        batches=batches or None,
        profile_batches=profile_batches,
        no_warmup=not warmup,
        set=sets,
        device=None if device == "cpu" else device,
        features=features,
        out=out,
        timeout=timeout or None,
        same_process_rounds=None
        if same_process_rounds == SAME_PROCESS_ROUNDS
        else same_process_rounds,
    )
    report = bench_all(names, dataset, out, command, timeout or None, echo=typer.echo, **settings)
    _print_table(report)
    if out is not None:
        typer.echo(f"wrote {Path(out) / 'profile.json'} and {Path(out) / 'profile.md'}")


if __name__ == "__main__":
    sys.exit(_worker_main(sys.argv[1:]))
