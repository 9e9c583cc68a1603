"""The ``alignrec`` command line.

Each command is a thin wrapper over a library function; heavy imports happen
inside the commands so that ``alignrec --help`` stays fast.
"""

from __future__ import annotations

import logging
import sys

import typer

from alignrec.env import configure_process, launched_world_size
from alignrec.errors import AlignRecError, ConfigError

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)

DATA_PARALLEL = ("train",)  # commands that train data-parallel under torchrun


@app.callback()
def _check_launch(ctx: typer.Context) -> None:
    # torchrun starts the command in every process: only `train` shares the work out; any
    # other would run N times over, each copy writing the same files.
    world = launched_world_size()
    if world > 1 and ctx.invoked_subcommand not in DATA_PARALLEL:
        raise ConfigError(
            f"`alignrec {ctx.invoked_subcommand}` runs in one process, but torchrun started "
            f"{world} (WORLD_SIZE): only `alignrec train` trains data-parallel"
        )
data_app = typer.Typer(no_args_is_help=True, help="Prepare and inspect datasets.")
app.add_typer(data_app, name="data")


@data_app.command("list")
def data_list() -> None:
    """List the registered datasets."""
    from alignrec.data.registry import list_datasets

    for name, path in list_datasets().items():
        typer.echo(f"{name}\t{path}")


@data_app.command("prepare")
def data_prepare(
    name: str = typer.Argument(..., help="registered dataset name"),
    force: bool = typer.Option(False, help="rebuild even if the tables are up to date"),
) -> None:
    """Build the canonical tables of a dataset and print its counts."""
    from alignrec.data.prepare import prepare

    result = prepare(name, force=force)
    _print_table(
        [(k, f"{v:,}") for k, v in result.summary().items()],
        header=("", name),
    )
    for key, value in sorted(result.meta.get("fallbacks", {}).items()):
        if value:
            typer.echo(f"note: {key}: {value}")
    typer.echo(f"tables: {result.meta['folder']}")


def _print_table(rows: list[tuple], header: tuple | None = None) -> None:
    rows = [tuple(str(c) for c in r) for r in rows]
    if header:
        rows = [tuple(str(c) for c in header), *rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for n, r in enumerate(rows):
        typer.echo("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))))
        if header and n == 0:
            typer.echo("  ".join("-" * w for w in widths))


# Stage 1 and the feature protocols (alignrec.commands.features).
from alignrec.commands import features as _features_cmds  # noqa: E402

app.command("evaluate-features")(_features_cmds.evaluate_features)
app.command("pretrain-features")(_features_cmds.pretrain_features)
app.command("pretext-check")(_features_cmds.pretext_check_command)
app.command("stage1-sweep")(_features_cmds.stage1_sweep_command)

# Training and speed benchmark (alignrec.commands.train / .bench).
from alignrec.commands import bench as _bench_cmds  # noqa: E402
from alignrec.commands import train as _train_cmds  # noqa: E402

app.command("train")(_train_cmds.train_command)
app.command("bench-speed")(_bench_cmds.bench_speed_command)

from alignrec.commands import bench_graph as _bench_graph_cmds  # noqa: E402

app.command("bench-graph")(_bench_graph_cmds.bench_graph_command)

# The final benchmark (alignrec.commands.benchmark).
from alignrec.commands import benchmark as _benchmark_cmds  # noqa: E402

app.command("benchmark")(_benchmark_cmds.benchmark_command)
app.command("compare-features")(_benchmark_cmds.compare_features_command)

# Model registry and serving (alignrec.commands.registry).
from alignrec.commands import registry as _registry_cmds  # noqa: E402

app.add_typer(_registry_cmds.registry_app, name="registry")
app.command("recommend")(_registry_cmds.recommend_command)
app.command("serve")(_registry_cmds.serve_command)


def main() -> None:
    configure_process()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        app()
    except AlignRecError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
