"""The shared model contract, checked for every registered model.

Each entry of ``MODELS`` trains for one epoch on a tiny clustered dataset (with a
``content`` table and two modality tables), gives a finite loss and finite
``[B, n_items]`` scores, survives a state-dict round trip, and is deterministic for a
given seed. A new model gets these checks by being registered.
"""

from __future__ import annotations

import math

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


@pytest.mark.parametrize("name", [n for n in NAMES if MODELS[n].uses_modalities])
def test_multimodal_model_without_modalities_says_so(name):
    bare = clustered(3, n_users=30, n_items=24, per_user=6, modalities=False)
    with pytest.raises(ConfigError, match="modalit"):
        MODELS[name](bare)
