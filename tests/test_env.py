"""Devices named in configs and flags: what this machine has, or a ConfigError saying why not."""

from __future__ import annotations

import sys

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


# Allocates and frees a 64 MiB block 20 times; prints whether the tuning applied and the
# page faults the loop took.
_FAULTS = """
import resource, sys
import numpy as np
from alignrec.env import tune_allocator
applied = tune_allocator() if sys.argv[1] == "tuned" else False
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    block = np.ones(1 << 24, dtype=np.float32)
    del block
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str, **env: str) -> tuple[str, int]:
    import os
    import subprocess
    import sys

    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run(
        [sys.executable, "-c", _FAULTS, mode],
        env={**clean, **env},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return out[0], int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_the_tuned_allocator_reuses_large_blocks_instead_of_faulting_them_in_again():
    applied, tuned = _faults("tuned")
    _, default = _faults("default")
    assert applied == "True"
    assert tuned * 5 < default  # each 64 MiB block is faulted in once, not 20 times
    off_applied, off = _faults("tuned", ALIGNREC_MALLOC_TUNING="0")
    assert off_applied == "False" and tuned * 5 < off
