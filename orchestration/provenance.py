"""Which run made a folder's files, and whether DVC's files, Dagster and the registry agree.

Each asset that logs to MLflow (``stage1_features``, ``bpr_model``, ``lightgcn_model``,
``alignrec_model``, ``benchmark``) writes ``<output root>/provenance/<dataset>/<asset>.json``
after its outputs (the output root is :func:`orchestration.paths.output_root`): the Dagster
run, the DVC stage when it ran as one, the output folder, the MLflow run and, for
``alignrec_model``, the registered model and version. ``dvc.yaml`` declares the DVC stages'
files as outputs, so DVC caches each with the files it describes, and a stage that DVC
restores from its run cache (no Dagster run, no MLflow run, no new registry version) brings
back the record of the run that really made the restored files.

``python -m orchestration.provenance`` reads those records under params.yaml's ``artifacts``
and compares each with Dagster's latest materialization by a DVC stage, its MLflow run and,
for ``alignrec_model``, the newest registry version a DVC stage registered; it names every
disagreement and exits 1 on any. ``dvc repro --no-run-cache`` (or ``dvc repro -f -s STAGE``)
reruns a restored stage, which makes them agree again.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PROVENANCE_DIR = "provenance"
STAGE_OF = {  # the DVC stage (dvc.yaml) that materializes each recorded asset
    "stage1_features": "stage1",
    "bpr_model": "stage2@bpr",
    "lightgcn_model": "stage2@lightgcn",
    "alignrec_model": "stage2@alignrec",
    "benchmark": "benchmark",
}


def provenance_path(root: str | Path, dataset: str, asset: str) -> Path:
    """``<root>/provenance/<dataset>/<asset>.json``."""
    return Path(root) / PROVENANCE_DIR / dataset / f"{asset}.json"


def record(context, asset: str, dataset: str, folder: str | Path, **fields: Any) -> Path:
    """Write the provenance of ``asset``'s outputs (in ``folder``) for this run; ``fields``
    add ``mlflow_run_id``, ``registered_model``, ``version`` ... Returns the file."""
    from alignrec import io
    from orchestration.paths import dvc_stage, output_root

    entry = {
        "asset": asset,
        "dataset": dataset,
        "dagster_run_id": context.run_id,
        "dvc_stage": dvc_stage(context),
        "folder": str(folder),
        **{k: (str(v) if v is not None else None) for k, v in fields.items()},
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    return io.write_json(provenance_path(output_root(context), dataset, asset), entry)


def read(root: str | Path, dataset: str) -> dict[str, dict[str, Any]]:
    """Every provenance record of ``dataset`` under ``root``, by asset."""
    folder = Path(root) / PROVENANCE_DIR / dataset
    return {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))}


@dataclass(frozen=True)
class Finding:
    asset: str
    agrees: bool
    text: str


def latest_dvc_run(instance, asset: str, dataset: str) -> str | None:
    """The id of the newest Dagster run tagged as a DVC stage that materialized ``asset`` for
    the partition ``dataset``."""
    import dagster as dg

    from orchestration.paths import DVC_STAGE_TAG

    result = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[dataset]),
        limit=200,
    )
    for rec in result.records:  # newest first
        run = instance.get_run_by_id(rec.run_id)
        if run is not None and run.tags.get(DVC_STAGE_TAG):
            return rec.run_id
    return None


def newest_dvc_version(client, name: str):
    """The newest version of registered model ``name`` that a DVC stage registered."""
    versions = client.search_model_versions(f"name='{name}'")
    made = [v for v in versions if (v.tags or {}).get("dvc_stage")]
    return max(made, key=lambda v: int(v.version), default=None)


def _short(run_id: str | None) -> str:
    return (run_id or "?")[:8]


def check(
    dataset: str,
    root: str | Path | None = None,
    instance=None,
    tracking_uri: str | None = None,
) -> list[Finding]:
    """Compare DVC's provenance records of ``dataset`` (under ``root``, default
    ``ALIGNREC_HOME``) with Dagster (``instance``, default ``DAGSTER_HOME``'s), MLflow runs and
    the registry (``tracking_uri``); one :class:`Finding` per record."""
    import dagster as dg
    from mlflow.exceptions import MlflowException

    from alignrec.paths import artifacts_root
    from alignrec.registry import registry_client

    records = read(root if root is not None else artifacts_root(), dataset)
    client = registry_client(tracking_uri)
    findings = []
    own = instance is None
    instance = instance or dg.DagsterInstance.get()
    try:
        for asset, entry in records.items():
            made_by = entry.get("dagster_run_id")
            stage = STAGE_OF.get(asset, entry.get("dvc_stage") or "?")
            rerun = f"`dvc repro -f -s {stage}` (or `dvc repro --no-run-cache`) makes a fresh run"
            problems = []
            latest = latest_dvc_run(instance, asset, dataset)
            if latest is None:
                problems.append("Dagster has no materialization of it by a DVC stage "
                                "(another DAGSTER_HOME?)")  # fmt: skip
            elif latest != made_by:
                problems.append(
                    f"the files are Dagster run {_short(made_by)}'s, but Dagster's latest "
                    f"DVC-stage materialization is run {_short(latest)}: DVC restored them "
                    "from its run cache"
                )
            run_id = entry.get("mlflow_run_id")
            if run_id:
                try:
                    tagged = client.get_run(run_id).data.tags.get("dagster_run")
                except MlflowException:
                    problems.append(f"MLflow has no run {run_id}")
                else:
                    if tagged and tagged != made_by:
                        problems.append(f"MLflow run {run_id} was made by Dagster run "
                                        f"{_short(tagged)}")  # fmt: skip
            name, version = entry.get("registered_model"), entry.get("version")
            if name and version:
                newest = newest_dvc_version(client, name)
                if newest is None:
                    problems.append(f"{name} has no version registered by a DVC stage")
                elif str(newest.version) != str(version):
                    problems.append(
                        f"the files are {name} v{version}'s, but the newest version a DVC "
                        f"stage registered is v{newest.version} (Dagster run "
                        f"{_short(newest.tags.get('dagster_run'))})"
                    )
            what = f"Dagster run {_short(made_by)}" + (f", MLflow run {run_id}" if run_id else "")
            if name and version:
                what += f", {name} v{version}"
            if problems:
                findings.append(Finding(asset, False, f"{what}: {'; '.join(problems)}. {rerun}"))
            else:
                findings.append(Finding(asset, True, what))
    finally:
        if own:
            instance.dispose()
    return findings


def main(argv: Sequence[str] | None = None) -> int:
    """Check params.yaml's dataset; exit 0 when everything agrees, 1 otherwise, 2 when there
    is nothing to check."""
    import os

    from alignrec.env import configure_process
    from alignrec.errors import ConfigError
    from orchestration.dvc_stage import PARAMS_FILE, load_params

    configure_process()
    parser = argparse.ArgumentParser(
        prog="python -m orchestration.provenance",
        description="Do DVC's output files, Dagster's state and the MLflow registry describe "
        "the same runs?",
    )
    parser.add_argument("--params", default=PARAMS_FILE, help="params file (default: %(default)s)")
    parser.add_argument("--dataset", help="default: params.yaml's dataset")
    args = parser.parse_args(argv)
    try:
        params = load_params(args.params)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    base = Path(args.params).resolve().parent
    dataset = args.dataset or params["dataset"]
    root = (base / params["artifacts"]).resolve()
    os.environ.setdefault("DAGSTER_HOME", str(base / ".dagster"))
    findings = check(dataset, root)
    if not findings:
        print(f"no provenance records in {root / PROVENANCE_DIR / dataset}: run `dvc repro`",
              file=sys.stderr)  # fmt: skip
        return 2
    for f in findings:
        print(f"{'ok' if f.agrees else 'DISAGREE'}  {f.asset}: {f.text}")
    return 0 if all(f.agrees for f in findings) else 1


if __name__ == "__main__":
    sys.exit(main())
