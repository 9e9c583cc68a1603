"""Process-wide settings every entry point applies first (offline, no telemetry, the memory
allocator), and what the launcher put in the environment."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DVC_NO_ANALYTICS": "1",
    "DAGSTER_DISABLE_TELEMETRY": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


def set_offline() -> None:
    """Set the offline and no-telemetry variables unless the user set them."""
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)


# glibc's mallopt parameters, and the size below which allocations stay in its heap.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
HEAP_LIMIT = 1 << 30  # 1 GiB
MALLOC_TUNING_ENV = "ALIGNREC_MALLOC_TUNING"  # "0" keeps glibc's defaults


def tune_allocator() -> bool:
    """Let glibc reuse large freed blocks instead of mapping fresh pages each time.

    glibc gives every allocation above its mmap threshold (at most 32 MiB by default) pages
    of its own and unmaps them on free, so the kernel faults in and zeroes them again at the
    next one. Training and ranking allocate tensors of that size on every batch (a 1,024
    user x 18,357 item score block is 75 MB; MMGCN's node table 56 MB), which costs a
    fifth or more of their CPU time in the kernel. Raising the mmap and trim thresholds to
    :data:`HEAP_LIMIT` keeps such blocks in the heap for reuse; results are unchanged, the
    price is a resident size that stays near its peak. Returns whether it applied: not on
    other C libraries or systems, nor with ``ALIGNREC_MALLOC_TUNING=0``.
    """
    if os.environ.get(MALLOC_TUNING_ENV, "1").strip() == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, HEAP_LIMIT)) and bool(
        mallopt(_M_TRIM_THRESHOLD, HEAP_LIMIT)
    )


def configure_process() -> None:
    """What every entry point (the CLI, Dagster's definitions, a DVC stage) does first."""
    set_offline()
    tune_allocator()


def launched_world_size() -> int:
    """How many processes ``torchrun`` started (``WORLD_SIZE``); 1 when absent or unreadable."""
    raw = os.environ.get("WORLD_SIZE", "1")
    return int(raw) if raw.isdigit() else 1


def torch_device(name: object = "cpu"):
    """``name`` as a ``torch.device`` this machine has, or a :class:`ConfigError` saying why not.

    Accepts what ``torch.device`` accepts (``cpu``, ``cuda``, ``cuda:1``, ``mps``, a
    ``torch.device``); ``auto`` is CUDA when there is a GPU, else the CPU.
    """
    import torch

    from alignrec.errors import ConfigError

    if isinstance(name, str) and name.strip().lower() == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = name if isinstance(name, torch.device) else torch.device(str(name).strip())
    except (RuntimeError, ValueError) as exc:
        raise ConfigError(
            f"device {name!r} is not a torch device (cpu, cuda, cuda:N, mps or auto): {exc}"
        ) from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"device {name!r}: this machine has no CUDA GPU (use cpu or auto)")
        if device.index is not None and device.index >= count:
            raise ConfigError(f"device {name!r}: this machine has {count} CUDA GPU(s)")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device {name!r}: MPS is not available on this machine")
    return device
