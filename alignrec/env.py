"""Process-wide settings every entry point applies first: offline, no telemetry."""

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
