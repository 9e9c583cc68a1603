"""Devices named in configs and flags: what this machine has, or a ConfigError saying why not."""

from __future__ import annotations

import pytest
import torch

from alignrec.env import torch_device
from alignrec.errors import ConfigError


def test_cpu_and_auto_resolve():
    assert torch_device("cpu") == torch.device("cpu")
    assert torch_device(torch.device("cpu")) == torch.device("cpu")
    assert torch_device(" auto ").type == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.parametrize("name", ["gpu", "cuda:x", ""])
def test_a_name_torch_does_not_know_is_a_config_error(name):
    with pytest.raises(ConfigError, match="not a torch device"):
        torch_device(name)


def test_a_gpu_the_machine_lacks_is_a_config_error():
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    with pytest.raises(ConfigError, match=f"cuda:{count}"):
        torch_device(f"cuda:{count}")
    if count == 0:
        with pytest.raises(ConfigError, match="no CUDA GPU"):
            torch_device("cuda")
