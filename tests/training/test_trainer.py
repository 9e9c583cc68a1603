"""The shared trainer: determinism, early stopping, best weights, LR schedule, logging, test once."""

from __future__ import annotations

import math

import pytest
import torch

from alignrec.errors import ConfigError
from alignrec.training import MemoryLogger, TrainConfig, TrainingError, resolve_configs, train
from alignrec.training import trainer as trainer_mod
from tests.training.synth import clustered

FAST = {"quiet": True, "batch_size": 64, "learning_rate": 0.01}


@pytest.mark.parametrize("model", ["bpr", "lightgcn"])
def test_two_runs_with_the_same_seed_are_identical(model):
    ds = clustered(1)
    a = train(model, ds, {**FAST, "epochs": 4}, seed=3)
    b = train(model, ds, {**FAST, "epochs": 4}, seed=3)
    strip = [{k: v for k, v in h.items() if not k.startswith("time/")} for h in a.history]
    strip_b = [{k: v for k, v in h.items() if not k.startswith("time/")} for h in b.history]
    assert strip == strip_b
    assert a.test.metrics == b.test.metrics
    for (ka, va), (kb, vb) in zip(
        a.model.state_dict().items(), b.model.state_dict().items(), strict=True
    ):
        assert ka == kb and torch.equal(va, vb)
    c = train(model, ds, {**FAST, "epochs": 4}, seed=4)
    assert c.history[-1]["train/loss"] != a.history[-1]["train/loss"]


def test_learns_something_on_clustered_data():
    ds = clustered(2, n_users=80, n_items=40)
    res = train("bpr", ds, {**FAST, "epochs": 30, "learning_rate": 0.05}, seed=0)
    # random ranking of 40 items (minus ~6 train items) gives recall@5 ~ 0.15
    assert res.valid.metrics["recall@5"] > 0.3
    assert res.history[-1]["train/loss"] < res.history[0]["train/loss"]


def test_early_stopping_restores_best_weights_and_scores_test_once(monkeypatch):
    ds = clustered(3)
    calls: list[str] = []
    real = trainer_mod.Evaluator

    class Spy(real):  # type: ignore[misc, valid-type]
        def evaluate(self, scorer):
            calls.append(self.split)
            return super().evaluate(scorer)

    monkeypatch.setattr(trainer_mod, "Evaluator", Spy)
    # a huge learning rate makes validation oscillate, so patience runs out
    res = train("bpr", ds, {**FAST, "epochs": 200, "patience": 3, "learning_rate": 0.5}, seed=0)
    assert res.stopped_early and res.epochs_run < 200
    assert res.epochs_run == res.best_epoch + 1 + 3
    assert calls.count("test") == 1 and calls[-1] == "test"
    assert calls.count("valid") == res.epochs_run
    scores = [h["valid/recall@20"] for h in res.history]
    assert res.best_epoch == scores.index(max(scores))
    # the returned model is the best epoch's: re-evaluating it reproduces the best valid metrics
    again = trainer_mod.evaluate_model(res.model, real(ds, "valid"))
    assert again.metrics == res.valid.metrics


def test_lr_schedule_follows_factor_power_epoch_over_step():
    ds = clustered(4)
    res = train(
        "bpr",
        ds,
        {**FAST, "epochs": 5, "patience": 10, "lr_decay_factor": 0.5, "lr_decay_step": 2},
        seed=0,
    )
    lrs = [h["train/lr"] for h in res.history]
    expected = [0.01 * 0.5 ** (e / 2) for e in range(5)]
    assert lrs == pytest.approx(expected)


def test_logger_receives_params_and_split_prefixed_metrics():
    ds = clustered(5)
    lg = MemoryLogger()
    res = train("lightgcn", ds, {**FAST, "epochs": 2}, logger=lg, seed=0)
    assert lg.params["model"] == "lightgcn" and lg.params["train.batch_size"] == 64
    assert "model.n_layers" in lg.params
    steps = [s for s, _ in lg.metrics]
    assert steps[:2] == [0, 1]
    first = lg.metrics[0][1]
    assert {"train/loss", "valid/recall@20", "valid/ndcg@10", "valid/map@50", "valid/hit@5"} <= set(
        first
    )
    last_step, last = lg.metrics[-1]
    assert last_step == res.best_epoch and "test/recall@20" in last and "test/precision@5" in last


def test_nan_loss_is_an_error(monkeypatch):
    ds = clustered(6)
    from alignrec.models import BPR

    monkeypatch.setattr(
        BPR, "loss", lambda self, u, p, n: torch.tensor(math.nan, requires_grad=True)
    )
    with pytest.raises(TrainingError, match="loss is nan"):
        train("bpr", ds, {**FAST, "epochs": 2}, seed=0)


def test_config_overrides_are_typed_and_checked():
    tc, mc = resolve_configs(
        "lightgcn",
        {"learning_rate": "5e-4", "n_layers": "3", "model.reg_weight": "1e-3", "ks": "10,20"},
    )
    assert (
        tc.learning_rate == 5e-4
        and mc.n_layers == 3
        and mc.reg_weight == 1e-3
        and tc.ks == (10, 20)
    )
    with pytest.raises(ConfigError, match="'n_layer'"):
        resolve_configs("lightgcn", {"n_layer": "3"})
    with pytest.raises(ConfigError, match="'learning_rate'"):
        resolve_configs("bpr", {"learning_rate": "fast"})
    with pytest.raises(ConfigError, match="'epochs'"):
        resolve_configs("bpr", {"epochs": "2.5"})
    with pytest.raises(ConfigError, match="'n_layers'"):
        resolve_configs("bpr", {"n_layers": "2"})  # a LightGCN key, not a BPR one
    with pytest.raises(ConfigError, match="'patience'"):
        resolve_configs("bpr", {"patience": "0"})
    with pytest.raises(ConfigError, match="valid_metric"):
        TrainConfig(valid_metric="recall@7")
    with pytest.raises(ConfigError, match="'quiet'"):
        resolve_configs("bpr", {"quiet": "maybe"})


@pytest.mark.slow
@pytest.mark.parametrize("model", ["bpr", "lightgcn", "alignrec"])
def test_deterministic_with_two_threads(model):
    # big enough for torch's CPU kernels to actually split work between threads
    torch.set_num_threads(2)
    ds = clustered(7, n_users=1000, n_items=300, per_user=12)
    cfg = {"quiet": True, "epochs": 1, "batch_size": 1024}
    a = train(model, ds, cfg, seed=1)
    b = train(model, ds, cfg, seed=1)
    for va, vb in zip(a.model.state_dict().values(), b.model.state_dict().values(), strict=True):
        assert torch.equal(va, vb)
    assert a.valid.metrics == b.valid.metrics


def test_time_budget_stops_after_the_epoch_that_exceeds_it():
    res = train("bpr", clustered(0), {"epochs": 50, "max_seconds": 1e-9, "quiet": True})
    assert res.epochs_run == 1 and res.stop_reason == "time budget" and res.stopped_early
    assert res.test is not None  # the best epoch is still scored
    with pytest.raises(ConfigError, match="max_seconds"):
        TrainConfig(max_seconds=-1)


def test_without_a_progress_bar_a_run_logs_how_far_it_has_got(monkeypatch, caplog):
    monkeypatch.setattr(trainer_mod, "PROGRESS_LOG_SECONDS", 0.0)  # a line every epoch
    with caplog.at_level("INFO", logger="alignrec.training.trainer"):
        res = train("bpr", clustered(0), {**FAST, "epochs": 3}, seed=2)
    lines = [r.getMessage() for r in caplog.records if " s" in r.getMessage()]
    assert len(lines) == 3
    best = res.history[res.best_epoch]["valid/recall@20"]
    assert lines[-1].startswith("bpr/" + res.dataset_name + " seed 2: epoch 2, loss ")
    assert f"(best {best:.4f} at epoch {res.best_epoch})" in lines[-1]

    caplog.clear()
    monkeypatch.setattr(trainer_mod, "PROGRESS_LOG_SECONDS", 3600.0)
    with caplog.at_level("INFO", logger="alignrec.training.trainer"):
        train("bpr", clustered(0), {**FAST, "epochs": 3})
    assert not [r for r in caplog.records if "epoch" in r.getMessage()]


def test_sigterm_finishes_the_epoch_then_scores_the_best_one():
    import os
    import signal

    before = signal.getsignal(signal.SIGTERM)

    class KillAtEpoch1(MemoryLogger):
        def log_metrics(self, metrics, step=None):
            super().log_metrics(metrics, step)
            if step == 1 and "train/loss" in metrics:
                os.kill(os.getpid(), signal.SIGTERM)

    res = train("bpr", clustered(0), {"epochs": 50, "quiet": True}, KillAtEpoch1())
    assert res.epochs_run == 2 and res.stop_reason == "signal"
    assert res.test is not None and res.summary()["stop_reason"] == "signal"
    assert signal.getsignal(signal.SIGTERM) is before  # handlers restored
    full = train("bpr", clustered(0), {"epochs": 3, "quiet": True})
    assert full.stop_reason == "epochs" and not full.stopped_early
