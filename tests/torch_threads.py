"""One torch thread for unit tests: tiny tensors run fastest (and without OpenMP
oversubscription) on one thread. A test folder opts in by importing the fixture into
its conftest."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
