"""One of the processes of the registry race (test_mlflow_server.py): for each round, wait at
a start line, register a version of MODEL with the round's validation Recall@20, wait at a
second start line, then gate it (alignrec.registry), printing one JSON line per round.

python -m tests.scale.register_race URI MODEL SOURCE RUN_ID FOLDER NAME VALUE [VALUE ...]

FOLDER holds the start lines: this process writes ``ready-<line>-<NAME>`` and waits for
``go-<line>``, which the test writes once every process is ready (lines ``<round>-register``
and ``<round>-gate``)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from alignrec.registry import DEFAULT_METRIC, promote_if_better, register_version, registry_client


def main(uri: str, model: str, source: str, run_id: str, folder: str, name: str, *values: str):
    client = registry_client(uri)
    client.search_registered_models(max_results=1)  # connected before the start line

    def start_line(line: str) -> None:
        (Path(folder) / f"ready-{line}-{name}").touch()
        go = Path(folder) / f"go-{line}"
        deadline = time.monotonic() + 120
        while not go.exists():
            if time.monotonic() > deadline:
                sys.exit(f"{name}: no go-{line} in {folder}")
            time.sleep(0.002)

    for k, value in enumerate(values):
        start_line(f"{k}-register")
        version = register_version(client, model, source, run_id, {DEFAULT_METRIC: value})
        start_line(f"{k}-gate")
        decision = promote_if_better(client, model, version)
        print(json.dumps({"round": k, "name": name, "version": version, "value": float(value),
                          "accepted": decision.accepted, "reason": decision.reason}), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
