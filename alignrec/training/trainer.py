"""The one trainer every model shares.

Adam with MMRec's LambdaLR schedule, uniform negative sampling, a full-ranking
validation every epoch, early stopping on the validation metric with the best
weights restored, and the test split scored exactly once, at the best epoch.
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from alignrec.data.dataset import Dataset
from alignrec.env import torch_device
from alignrec.errors import AlignRecError
from alignrec.evaluation import EvalResult, Evaluator
from alignrec.models import ModelConfig, RecModel, get_model_class
from alignrec.training import distributed
from alignrec.training.checkpoint import (
    Checkpointing,
    capture_rng,
    data_digest,
    eval_from_state,
    eval_to_state,
    restore_rng,
    run_identity,
)
from alignrec.training.config import TrainConfig, config_to_dict, resolve_configs
from alignrec.training.logger import MetricLogger, NullLogger
from alignrec.training.sampler import NegativeSampler

log = logging.getLogger(__name__)


class TrainingError(AlignRecError):
    """Training cannot go on (for example the loss became NaN or infinite)."""


@dataclass
class TrainResult:
    """Outcome of one training run.

    Attributes:
        model_name, dataset_name, seed: what was trained on what.
        processes: how many data-parallel processes trained it (``torchrun``).
        data_fingerprint: the dataset's content hash (``meta.json``'s ``fingerprint``:
            its spec and input files, so its split), ``None`` for an unprepared dataset.
        train_config, model_config: the resolved configs.
        best_epoch: 0-based epoch with the best validation metric.
        epochs_run: epochs actually trained (early stopping may cut it short).
        train_seconds: wall time of the fitting loop (training plus per-epoch validation).
        valid: validation result at the best epoch.
        test: test result of the restored best model (None when not requested).
        history: one dict per epoch: ``epoch``, ``train/loss``, ``train/lr``,
            ``time/epoch_seconds``, ``time/eval_seconds`` and every ``valid/...`` metric.
        model: the model with its best weights restored.
        stopped_early: whether training ended before ``epochs``.
        stop_reason: why it ended: ``epochs``, ``patience``, ``time budget``
            (``max_seconds``) or ``signal`` (SIGINT/SIGTERM before the last epoch: the run
            still restores its best epoch and scores it, so a stopped run is not lost).
        stop_signal: the signal's number when ``stop_reason`` is ``signal``.
        resumed_from: the last epoch of the checkpoint this run resumed from (None: it
            trained from the start).
    """

    model_name: str
    dataset_name: str
    seed: int
    train_config: TrainConfig
    model_config: ModelConfig
    best_epoch: int
    epochs_run: int
    train_seconds: float
    valid: EvalResult
    test: EvalResult | None
    history: list[dict[str, float]]
    model: RecModel
    stopped_early: bool = False
    stop_reason: str = "epochs"
    data_fingerprint: str | None = None
    processes: int = 1
    extra: dict[str, Any] = field(default_factory=dict)
    stop_signal: int | None = None
    resumed_from: int | None = None

    def summary(self) -> dict[str, Any]:
        """The JSON-able record written as ``metrics.json``."""
        return {
            "model": self.model_name,
            "dataset": self.dataset_name,
            "data_fingerprint": self.data_fingerprint,
            "processes": self.processes,
            "seed": self.seed,
            "best_epoch": self.best_epoch,
            "epochs_run": self.epochs_run,
            "train_seconds": round(self.train_seconds, 3),
            "stopped_early": self.stopped_early,
            "stop_reason": self.stop_reason,
            "valid": dict(self.valid.metrics),
            "test": dict(self.test.metrics) if self.test is not None else None,
            "train_config": config_to_dict(self.train_config),
            "model_config": config_to_dict(self.model_config),
        }


def set_seed(seed: int) -> None:
    """Seed torch's global generator (model initialisation) for a reproducible run."""
    torch.manual_seed(int(seed))


def evaluate_model(model: RecModel, evaluator: Evaluator) -> EvalResult:
    """Run a full evaluation of ``model`` with its eval hooks around it."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model.on_eval_start()
            return evaluator.evaluate(model.full_scores)
    finally:
        model.on_eval_end()
        model.train(was_training)


def make_optimizer(model: RecModel, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Adam over the model's parameters; the fused kernel where torch has one (CPU, CUDA)."""
    device = next(model.parameters()).device
    fused = device.type in ("cpu", "cuda")
    return torch.optim.Adam(
        model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay, fused=fused
    )


# Without a progress bar (``quiet``: the benchmark, a log file), a line at most this often
# says how far a run has got.
PROGRESS_LOG_SECONDS = 300.0


def _progress(total: int, quiet: bool, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=quiet, desc=desc, unit="ep", dynamic_ncols=True, leave=False)


def train(
    model_name: str,
    dataset: Dataset,
    config: TrainConfig | dict[str, Any] | None = None,
    logger: MetricLogger | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    *,
    model_config: ModelConfig | None = None,
    evaluate_test: bool = True,
    checkpoint: Checkpointing | None = None,
) -> TrainResult:
    """Train a registered model on ``dataset`` and score it.

    Args:
        model_name: a key of :data:`alignrec.models.MODELS`.
        dataset: supplies the train pairs, the valid split and (at the end) the test split.
        config: a :class:`TrainConfig`, or a flat dict of overrides that may also
            name model keys (``{"learning_rate": 5e-4, "reg_weight": 1e-3}``).
        logger: receives params once and metrics every epoch (``train/…``, ``valid/…``)
            and the ``test/…`` metrics at the best epoch.
        seed: seeds the model initialisation and the sampler.
        device: where the model lives; everything else follows it.
        model_config: the model's config dataclass (defaults otherwise).
        evaluate_test: score the test split at the best epoch; grid search turns
            this off so that selection never touches the test split.
        checkpoint: where to keep a checkpoint (see :mod:`alignrec.training.checkpoint`):
            one compatible with this run is resumed from, a new one is written at the end
            of an epoch every ``checkpoint_every_s`` seconds and when a signal stops the
            run, and when the loop ends it holds the finished run (its best epoch), for
            the caller to remove once the results are written.
    """
    if isinstance(config, TrainConfig) or config is None:
        train_cfg, model_cfg = resolve_configs(model_name, None, config, model_config)
    else:
        train_cfg, model_cfg = resolve_configs(model_name, dict(config), None, model_config)
    logger = logger if logger is not None else NullLogger()
    device = torch_device(device)
    model_cls = get_model_class(model_name)
    group = distributed.current()

    set_seed(seed)
    model = model_cls(dataset, model_cfg).to(device)
    step_loss = distributed.loss_fn(model, group, device)
    sampler = NegativeSampler(dataset, seed=seed)
    valid_eval = Evaluator(
        dataset, "valid", train_cfg.ks, train_cfg.eval_batch_size, device, group=group
    )
    optimizer = make_optimizer(model, train_cfg)
    factor, step = train_cfg.lr_decay_factor, train_cfg.lr_decay_step
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: factor ** (e / step))

    logger.log_params(
        {
            "model": model_name,
            "dataset": dataset.name,
            "seed": seed,
            "device": str(device),
            **{f"train.{k}": v for k, v in config_to_dict(train_cfg).items()},
            **{f"model.{k}": v for k, v in config_to_dict(model_cfg).items()},
        }
    )

    key = train_cfg.valid_metric
    best_score, best_epoch, best_valid, best_state = -math.inf, -1, None, None
    since_best, history, stop_reason = 0, [], "epochs"
    start_epoch, done_before, elapsed_before, resumed_from = 0, False, 0.0, None
    identity = None
    if checkpoint is not None:
        identity = run_identity(
            model_name,
            seed,
            config_to_dict(train_cfg),
            config_to_dict(model_cfg),
            data_digest(dataset, model_name, model_cfg),
            group.world_size,
            checkpoint.key,
        )
        saved = _load_checkpoint(checkpoint, identity, group)
        if saved is not None:
            best = saved["best"]
            best_score, best_epoch, since_best = best["score"], best["epoch"], best["since"]
            best_valid, best_state = eval_from_state(best["valid"]), best["state"]
            history, elapsed_before = list(saved["history"]), float(saved["train_seconds"])
            resumed_from = int(saved["epoch"])
            if saved["done"]:
                done_before, stop_reason = True, saved["stop_reason"]
                start_epoch = train_cfg.epochs
                if group.is_main:
                    checkpoint.tell(
                        f"{checkpoint.path}: the run had finished ({stop_reason}, best epoch "
                        f"{best_epoch}); scoring its best epoch without training again"
                    )
            else:
                model.load_state_dict(saved["model"])
                optimizer.load_state_dict(saved["optimizer"])
                scheduler.load_state_dict(saved["scheduler"])
                restore_rng(saved["rng"], sampler.generator)
                start_epoch = resumed_from + 1
                if group.is_main:
                    checkpoint.tell(
                        f"resuming from {checkpoint.path}: epochs 0-{resumed_from} done "
                        f"(best {best_epoch}), training on from epoch {start_epoch}"
                    )
    t_said = t_saved = time.perf_counter()
    t_start = t_said - elapsed_before  # a resumed run's time counts its earlier sessions
    desc = f"{model_name}/{dataset.name} seed {seed}"
    bar = _progress(train_cfg.epochs, train_cfg.quiet, desc)
    bar.update(min(len(history), train_cfg.epochs))

    def state_now(epoch: int, done: bool) -> dict[str, Any]:
        state: dict[str, Any] = {
            "done": done,
            "epoch": epoch,
            "stop_reason": stop_reason,
            "best": {
                "score": best_score,
                "epoch": best_epoch,
                "since": since_best,
                "valid": eval_to_state(best_valid),
                "state": best_state,
            },
            "history": history,
            "train_seconds": time.perf_counter() - t_start,
        }
        if not done:  # what the next epochs depend on; a finished run needs its best epoch only
            state["model"] = model.state_dict()
            state["optimizer"] = optimizer.state_dict()
            state["scheduler"] = scheduler.state_dict()
            state["rng"] = capture_rng(sampler.generator, device)
        return state

    with _StopRequests() as stop, contextlib.closing(bar):
        for epoch in range(start_epoch, train_cfg.epochs):
            t0 = time.perf_counter()
            model.train()
            group.sync_rng()
            model.on_epoch_start(epoch)
            lr = optimizer.param_groups[0]["lr"]
            total, n_batches = torch.zeros((), device=device), 0
            for batch in sampler.epoch(train_cfg.batch_size):
                if len(batch[0]) < group.world_size:
                    continue  # a last batch too small to give every process a row
                (users, pos, neg), weight = group.slice(*batch)
                users, pos, neg = users.to(device), pos.to(device), neg.to(device)
                optimizer.zero_grad(set_to_none=True)
                loss = step_loss(users, pos, neg)
                if not torch.isfinite(loss):
                    raise TrainingError(
                        f"{model_name}: loss is {loss.item()} at epoch {epoch}, batch {n_batches}"
                    )
                if weight != 1.0:  # this process's share of an uneven batch
                    loss = loss * weight
                loss.backward()
                optimizer.step()
                total += loss.detach()
                n_batches += 1
            scheduler.step()
            epoch_loss = float(group.mean(total)) / max(n_batches, 1)
            t1 = time.perf_counter()
            valid = evaluate_model(model, valid_eval)
            t2 = time.perf_counter()
            record = {
                "epoch": epoch,
                "train/loss": epoch_loss,
                "train/lr": lr,
                "time/epoch_seconds": t1 - t0,
                "time/eval_seconds": t2 - t1,
                **valid.prefixed("valid"),
            }
            history.append(record)
            logger.log_metrics({k: v for k, v in record.items() if k != "epoch"}, step=epoch)
            score = valid.metrics[key]
            if score > best_score:
                best_score, best_epoch, best_valid, since_best = score, epoch, valid, 0
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                since_best += 1
            bar.update(1)
            bar.set_postfix(loss=f"{epoch_loss:.4f}", **{key: f"{score:.4f}", "best": best_epoch})
            now = time.perf_counter()
            if bar.disable and now - t_said >= PROGRESS_LOG_SECONDS:
                t_said = now
                log.info(
                    "%s: epoch %d, loss %.4f, %s %.4f (best %.4f at epoch %d), %.0f s",
                    desc,
                    epoch,
                    epoch_loss,
                    key,
                    score,
                    best_score,
                    best_epoch,
                    now - t_start,
                )
            if since_best >= train_cfg.patience:
                stop_reason = "patience"
            elif train_cfg.max_seconds and time.perf_counter() - t_start > train_cfg.max_seconds:
                stop_reason = "time budget"
            elif stop.requested and epoch + 1 < train_cfg.epochs:
                stop_reason = "signal"  # a signal during the last epoch cuts nothing short
            last = stop_reason != "epochs" or epoch + 1 == train_cfg.epochs
            due = checkpoint is not None and (
                stop_reason == "signal"
                or (not last and time.perf_counter() - t_saved >= train_cfg.checkpoint_every_s)
            )
            # clocks and signals are per process: rank 0 decides for all
            stop_reason, due = group.agree((stop_reason, due))
            if checkpoint is not None and group.is_main:
                if due:
                    checkpoint.save(state_now(epoch, done=False), identity)
                    t_saved = time.perf_counter()
                    checkpoint.progress(epoch=epoch, checkpoint_epoch=epoch)
                else:
                    checkpoint.progress(epoch=epoch)
            if stop_reason != "epochs":
                log.warning("%s: stopping after epoch %d (%s)", model_name, epoch, stop_reason)
                break
        finished = stop_reason != "signal" and history and not done_before
        if checkpoint is not None and group.is_main and finished:
            # the finished run (its best epoch), until the caller has written its files
            checkpoint.save(state_now(len(history) - 1, done=True), identity)
    train_seconds = time.perf_counter() - t_start

    assert best_state is not None and best_valid is not None
    model.load_state_dict(best_state)
    model.eval()
    test = None
    if evaluate_test:
        test_eval = Evaluator(
            dataset, "test", train_cfg.ks, train_cfg.eval_batch_size, device, group=group
        )
        test = evaluate_model(model, test_eval)
        logger.log_metrics({**test.prefixed("test"), "best_epoch": best_epoch}, step=best_epoch)
    return TrainResult(
        model_name=model_name,
        dataset_name=dataset.name,
        seed=seed,
        train_config=train_cfg,
        model_config=model_cfg,
        best_epoch=best_epoch,
        epochs_run=len(history),
        train_seconds=train_seconds,
        valid=best_valid,
        test=test,
        history=history,
        model=model,
        stopped_early=stop_reason != "epochs",
        stop_reason=stop_reason,
        data_fingerprint=dataset.meta.get("fingerprint"),
        processes=group.world_size,
        stop_signal=stop.signum if stop_reason == "signal" else None,
        resumed_from=resumed_from,
    )


def _load_checkpoint(
    checkpoint: Checkpointing, identity: dict[str, Any], group: distributed.Group
) -> dict[str, Any] | None:
    """Rank 0 reads the checkpoint (or refuses it); every process gets the same answer."""
    outcome: Any = None
    if group.is_main:
        try:
            outcome = checkpoint.load(identity)
        except AlignRecError as exc:
            outcome = exc
    outcome = group.agree(outcome)
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome


class _StopRequests:
    """SIGINT/SIGTERM during training ask for a clean stop after the current epoch.

    The first signal is recorded (``requested``); a second one interrupts at once as
    usual. Handlers are only installed in the main thread and restored on exit.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested = False
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            previous = self._previous.get(signum)
            if callable(previous):
                previous(signum, frame)
            raise KeyboardInterrupt
        self.requested, self.signum = True, signum
        log.warning("signal %d: finishing this epoch, then scoring the best one", signum)

    def __enter__(self) -> _StopRequests:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)


def evaluate_test_once(
    result: TrainResult, dataset: Dataset, device: str | torch.device = "cpu"
) -> EvalResult:
    """Score the test split for a finished run (used for the winner of a grid)."""
    cfg = result.train_config
    result.test = evaluate_model(
        result.model,
        Evaluator(
            dataset, "test", cfg.ks, cfg.eval_batch_size, device, group=distributed.current()
        ),
    )
    return result.test


__all__ = [
    "TrainResult",
    "TrainingError",
    "evaluate_model",
    "evaluate_test_once",
    "set_seed",
    "train",
]
