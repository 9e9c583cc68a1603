"""Where a pipeline run's time went, from Dagster's own step records, kept under ``results/``.

``make pipeline`` is a Dagster run; the instance (``DAGSTER_HOME``) stores when each step
started and ended. ``python -m orchestration.run_times --label NAME`` reads the newest
successful run of a partition (or ``--run-id``) and writes
``results/pipeline/<dataset>/<NAME>.json`` and ``.md``: every step's seconds, the benchmark's
model steps summed with how many runs they trained and reused, the run's own span and, with
``--wall`` (``/usr/bin/time``'s elapsed seconds of the whole ``make pipeline``), the time the
user waited. The README embeds the markdown (``scripts/readme_tables.py``), so no time in it is
typed.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

BENCHMARK_MODEL_STEP = "benchmark.benchmark_model["
REPORT_STEP = "benchmark.benchmark_report"


def _stamp(t: float | None) -> str | None:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t)) if t else None


def find_run(instance, partition: str, run_id: str | None = None):
    """The run ``run_id``, or the newest successful run of ``partition`` that reached the
    benchmark report (the whole pipeline, not one asset)."""
    import dagster as dg

    if run_id:
        run = instance.get_run_by_id(run_id)
        if run is None:
            raise SystemExit(f"run_times: no Dagster run {run_id!r} in {instance.root_directory}")
        return run
    runs = instance.get_runs(
        filters=dg.RunsFilter(
            statuses=[dg.DagsterRunStatus.SUCCESS], tags={"dagster/partition": partition}
        ),
        limit=50,
    )
    for run in runs:  # newest first
        if any(s.step_key == REPORT_STEP for s in instance.get_run_step_stats(run.run_id)):
            return run
    raise SystemExit(
        f"run_times: no successful pipeline run of {partition!r} (one that ran "
        f"{REPORT_STEP}) in {instance.root_directory}; run `make pipeline` first"
    )


def _benchmark_counts(instance, run_id: str) -> dict[str, Any]:
    """``runs_trained`` and ``runs_reused`` of the run's benchmark materialization."""
    import dagster as dg

    for record in instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION):
        mat = record.asset_materialization
        if mat is not None and mat.asset_key == dg.AssetKey("benchmark"):
            return {k: mat.metadata[k].value for k in ("runs_trained", "runs_reused")
                    if k in mat.metadata}
    return {}


def summarize(steps: Sequence[dict[str, Any]], benchmark: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows of the table: each step in start order, the benchmark's model steps as one
    row (their seconds summed: the wall time under the in-process executor)."""
    rows: list[dict[str, Any]] = []
    models: list[dict[str, Any]] = []
    for s in sorted(steps, key=lambda s: (s["start"] is None, s["start"] or 0.0)):
        if s["key"].startswith(BENCHMARK_MODEL_STEP):
            if not models:
                rows.append({"step": "", "seconds": 0.0})  # placeholder, in start order
                slot = len(rows) - 1
            models.append(s)
            continue
        rows.append({"step": s["key"], "seconds": s["seconds"]})
    if models:
        what = f"benchmark: {len(models)} model steps"
        if benchmark:
            what += (f" ({benchmark.get('runs_trained', '?')} runs trained, "
                     f"{benchmark.get('runs_reused', '?')} reused from results/)")
        rows[slot] = {"step": what, "seconds": sum(m["seconds"] or 0.0 for m in models)}
    return rows


def collect(instance, run) -> dict[str, Any]:
    """Everything the record holds about ``run``."""
    stats = instance.get_run_stats(run.run_id)
    steps = [
        {
            "key": s.step_key,
            "status": s.status.value if s.status else None,
            "start": s.start_time,
            "seconds": round(s.end_time - s.start_time, 2) if s.start_time and s.end_time else None,
        }
        for s in instance.get_run_step_stats(run.run_id)
    ]
    benchmark = _benchmark_counts(instance, run.run_id)
    return {
        "run_id": run.run_id,
        "partition": run.tags.get("dagster/partition"),
        "status": run.status.value,
        "started": _stamp(stats.start_time),
        "ended": _stamp(stats.end_time),
        "run_seconds": round(stats.end_time - stats.start_time, 1)
        if stats.start_time and stats.end_time
        else None,
        "benchmark": benchmark,
        "steps": [{k: v for k, v in s.items() if k != "start"} for s in steps],
        "rows": summarize(steps, benchmark),
    }


def _is_benchmark(row: dict[str, Any]) -> bool:
    return row["step"].startswith("benchmark:")


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)} min {seconds % 60:04.1f} s"


def markdown(record: dict[str, Any]) -> str:
    """The record as the README shows it."""
    lines = [f"# make pipeline on {record['partition']}: {record['label']}", ""]
    if record.get("description"):
        lines += [record["description"], ""]
    lines += ["| step | seconds |", "|---|---|"]
    small = [r for r in record["rows"] if (r["seconds"] or 0.0) < 1.0 and not _is_benchmark(r)]
    lines += [f"| {r['step']} | {r['seconds'] or 0.0:.1f} |" for r in record["rows"]
              if r not in small]
    if small:
        lines.append(f"| {len(small)} other steps (data, checks, plan), under 1 s each | "
                     f"{sum(r['seconds'] or 0.0 for r in small):.1f} |")
    lines.append("")
    span = record.get("run_seconds")
    tail = f"Dagster run `{record['run_id'][:8]}`: {_minutes(span)} from its start to its end" if span else ""
    if record.get("wall_seconds"):
        tail += (f"; `make pipeline`, set-up excluded, {_minutes(record['wall_seconds'])} "
                 "wall (`/usr/bin/time`)")
    if record.get("commit"):
        tail += f"; commit {record['commit']}"
    lines.append(tail + ".")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m orchestration.run_times", description=__doc__)
    parser.add_argument("--partition", default="movielens-100k-mm")
    parser.add_argument("--label", required=True, help="the record's name, e.g. fresh-clone")
    parser.add_argument("--run-id", help="a Dagster run id (default: the newest pipeline run)")
    parser.add_argument("--wall", type=float, help="seconds the whole command took, as measured")
    parser.add_argument("--description", default="", help="a line on how the run was made")
    parser.add_argument("--commit", help="the commit the run was made at")
    parser.add_argument("--out", type=Path, default=Path("results") / "pipeline")
    args = parser.parse_args(argv)

    import dagster as dg

    from alignrec import io

    with dg.DagsterInstance.get() as instance:
        record = collect(instance, find_run(instance, args.partition, args.run_id))
    record.update(label=args.label, wall_seconds=args.wall, description=args.description,
                  commit=args.commit)
    folder = args.out / record["partition"]
    io.write_json(folder / f"{args.label}.json", record)
    io.write_text(folder / f"{args.label}.md", markdown(record))
    print(markdown(record))
    print(f"wrote {folder / args.label}.json and .md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
