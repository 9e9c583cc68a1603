"""Process-wide settings every entry point applies first (offline, no telemetry), and what
the launcher put in the environment."""

from __future__ import annotations

import os

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
