"""The registry lock that serialises alias changes (alignrec.registry.gating_lock)."""

from __future__ import annotations

import threading

import pytest

from alignrec.errors import ConfigError
from alignrec.registry import LOCK_SUFFIX, gating_lock, registry_client


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    return registry_client(f"sqlite:///{tmp_path_factory.mktemp('lock') / 'mlflow.db'}")


def _names(client) -> set[str]:
    return {m.name for m in client.search_registered_models()}


def test_a_held_lock_keeps_others_out_until_released(client):
    entered = []
    with gating_lock(client, "m"):
        assert _names(client) == {f"m{LOCK_SUFFIX}"}
        with pytest.raises(ConfigError, match="held for over"), gating_lock(client, "m", wait=0.2):
            entered.append("nested")
        def wait_for_it():
            with gating_lock(client, "m"):
                entered.append("waiter")

        waiter = threading.Thread(target=wait_for_it)
        waiter.start()
        waiter.join(0.3)
        assert entered == [] and waiter.is_alive()  # still waiting
    waiter.join(10)
    assert entered == ["waiter"] and _names(client) == set()  # got it once released, let go


def test_a_lock_left_by_a_dead_holder_is_broken(client):
    client.create_registered_model(f"n{LOCK_SUFFIX}")  # a holder that died inside the block
    with gating_lock(client, "n", stale=0.0):
        pass
    assert _names(client) == set()
