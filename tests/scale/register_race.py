"""One of the processes of the registry race (test_mlflow_server.py): for each round, wait at
the start line, then register a version of MODEL with the round's validation Recall@20 and
gate it (alignrec.registry), printing one JSON line per round.

python -m tests.scale.register_race URI MODEL SOURCE RUN_ID FOLDER NAME VALUE [VALUE ...]

FOLDER holds the start line: this process writes ``ready-<round>-<NAME>`` and waits for
``go-<round>``, which the test writes once every process is ready."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from alignrec.registry import DEFAULT_METRIC, promote_if_better, register_version, registry_client


def main(uri: str, model: str, source: str, run_id: str, folder: str, name: str, *values: str):
    client = registry_client(uri)
    client.search_registered_models(max_results=1)  # connected before the start line
    for k, value in enumerate(values):
        (Path(folder) / f"ready-{k}-{name}").touch()
        go = Path(folder) / f"go-{k}"
        deadline = time.monotonic() + 120
        while not go.exists():
            if time.monotonic() > deadline:
                sys.exit(f"{name}: no go-{k} in {folder}")
            time.sleep(0.002)
        version = register_version(client, model, source, run_id, {DEFAULT_METRIC: value})
        decision = promote_if_better(client, model, version)
        print(json.dumps({"round": k, "name": name, "version": version, "value": float(value),
                          "accepted": decision.accepted, "reason": decision.reason}), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
