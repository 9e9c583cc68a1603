"""The shared model contract, checked for every registered model.

Each entry of ``MODELS`` trains for one epoch on a tiny clustered dataset (with a
``content`` table and two modality tables), gives a finite loss and finite
``[B, n_items]`` scores, survives a state-dict round trip, and is deterministic for a
given seed. A new model gets these checks by being registered.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import torch

from alignrec.errors import ConfigError
from alignrec.models import MODELS
from alignrec.training import train
from tests.training.synth import clustered

NAMES = sorted(MODELS)


def _scores(model, users):
    model.eval()
    with torch.no_grad():
        model.on_eval_start()
        out = model.full_scores(users)
        model.on_eval_end()
    return out


@pytest.fixture(scope="module")
def data():
    return clustered(3, n_users=30, n_items=24, per_user=6)


@pytest.fixture(scope="module")
def one_epoch(data):
    torch.set_num_threads(1)
    return {
        name: train(name, data, {"epochs": 1, "batch_size": 64, "quiet": True}, seed=0)
        for name in NAMES
    }


@pytest.mark.parametrize("name", NAMES)
def test_one_epoch_gives_finite_loss_and_scores(name, data, one_epoch):
    res = one_epoch[name]
    assert res.epochs_run == 1
    assert math.isfinite(res.history[0]["train/loss"])
    users = torch.arange(7)
    scores = _scores(res.model, users)
    assert scores.shape == (7, data.n_items)
    assert torch.isfinite(scores).all()
    assert res.valid.metrics and res.test is not None


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip_gives_identical_scores(name, data, one_epoch):
    trained = one_epoch[name].model
    cls = MODELS[name]
    torch.manual_seed(123)  # a different initialisation, overwritten by the load
    fresh = cls(data, trained.config)
    fresh.load_state_dict(trained.state_dict())
    users = torch.arange(data.n_users)
    torch.testing.assert_close(_scores(fresh, users), _scores(trained, users))


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_model(name, data, one_epoch):
    again = train(name, data, {"epochs": 1, "batch_size": 64, "quiet": True}, seed=0)
    first = one_epoch[name]
    assert again.history[0]["train/loss"] == first.history[0]["train/loss"]
    for (k, a), (_, b) in zip(
        first.model.state_dict().items(), again.model.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), k


REGISTERED = {"_parameters", "_buffers", "_modules"}  # what .to() moves


def _held_tensors(value, path: str, seen: set[int]) -> Iterator[str]:
    """Paths of the tensors reachable from ``value`` through plain attributes and containers."""
    if id(value) in seen or isinstance(value, torch.nn.Module | type):
        return  # submodules are walked by named_modules()
    seen.add(id(value))
    if isinstance(value, torch.Tensor):
        yield path
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _held_tensors(item, f"{path}[{key!r}]", seen)
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            yield from _held_tensors(item, f"{path}[{i}]", seen)
    elif hasattr(value, "__dict__"):
        for key, item in vars(value).items():
            yield from _held_tensors(item, f"{path}.{key}", seen)


def _unregistered_tensors(model: torch.nn.Module) -> list[str]:
    """Tensors a model holds outside its parameters and buffers (``.to()`` would miss them)."""
    seen: set[int] = set()
    return [
        path
        for prefix, module in model.named_modules()
        for key, value in vars(module).items()
        if key not in REGISTERED
        for path in _held_tensors(value, f"{prefix}.{key}", seen)
    ]


@pytest.mark.parametrize("name", NAMES)
def test_graphs_and_caches_move_with_the_model(name, data):
    torch.manual_seed(0)
    model = MODELS[name](data)
    model.on_epoch_start(0)
    model.loss(torch.arange(8), torch.arange(8), torch.arange(8).flip(0))  # fills caches
    model.to("meta")
    assert {t.device.type for t in [*model.parameters(), *model.buffers()]} == {"meta"}
    assert not _unregistered_tensors(model)


@pytest.mark.parametrize("name", [n for n in NAMES if MODELS[n].uses_modalities])
def test_multimodal_model_without_modalities_says_so(name):
    bare = clustered(3, n_users=30, n_items=24, per_user=6, modalities=False)
    with pytest.raises(ConfigError, match="modalit"):
        MODELS[name](bare)
