"""``alignrec registry list|promote`` and ``alignrec recommend``: the registry and serving
from the command line (see :mod:`alignrec.registry` and :mod:`alignrec.serving`)."""

from __future__ import annotations

from typing import Annotated

import typer

registry_app = typer.Typer(
    no_args_is_help=True,
    help="Registered models: list versions, move the champion alias (roll back).",
)

TrackingUri = Annotated[
    str | None,
    typer.Option(
        "--tracking-uri",
        help="MLflow tracking and registry URI "
        "(default: $MLFLOW_TRACKING_URI, else sqlite:///mlruns/mlflow.db)",
    ),
]


@registry_app.command("list")
def registry_list(
    model: Annotated[
        str, typer.Option("--model", help="registered model name, e.g. alignrec-lastfm-2k")
    ],
    tracking_uri: TrackingUri = None,
) -> None:
    """Print every version of MODEL with its aliases, headline metrics and data version."""
    from alignrec.cli import _print_table
    from alignrec.registry import list_versions, registry_client

    rows = list_versions(registry_client(tracking_uri), model)
    if not rows:
        typer.echo(f"{model} has no versions")
        return
    columns = [c for c in rows[0] if c not in ("code_version", "run_id")]
    _print_table([tuple(r[c] for c in columns) for r in rows], header=tuple(columns))


@registry_app.command("promote")
def registry_promote(
    model: Annotated[str, typer.Option("--model", help="registered model name")],
    version: Annotated[int, typer.Option("--version", help="the version to serve")],
    tracking_uri: TrackingUri = None,
) -> None:
    """Make VERSION the champion of MODEL, whatever its metrics: the rollback."""
    from alignrec.registry import CHAMPION, promote, registry_client

    previous = promote(registry_client(tracking_uri), model, version)
    before = f"v{previous}" if previous else "none"
    typer.echo(f"{model}@{CHAMPION}: {before} -> v{version}")


def recommend_command(
    model: Annotated[
        str, typer.Option("--model", help="model URI, e.g. models:/alignrec-lastfm-2k@champion")
    ],
    users: Annotated[list[str], typer.Option("--user", help="user id (repeatable)")],
    k: Annotated[int, typer.Option("--k", min=1, help="items per user")] = 10,
    exclude: Annotated[
        list[str] | None, typer.Option("--exclude", help="item id never to recommend (repeatable)")
    ] = None,
    tracking_uri: TrackingUri = None,
) -> None:
    """Top-K items for each USER from a logged or registered recommender.

    A user the model has not seen gets the most popular training items, flagged
    "popular" in the fallback column.
    """
    import os

    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow
    import pandas as pd
    from mlflow.exceptions import MlflowException

    from alignrec.cli import _print_table
    from alignrec.errors import ConfigError
    from alignrec.tracking import default_tracking_uri

    uri = tracking_uri or default_tracking_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        pyfunc = mlflow.pyfunc.load_model(model)
    except MlflowException as exc:
        raise ConfigError(f"cannot load {model} from {uri}: {exc.message}") from exc
    request = pd.DataFrame(
        {"user_id": users, "k": [k] * len(users), "exclude": [list(exclude or [])] * len(users)}
    )
    try:
        table = pyfunc.predict(request)
    except MlflowException as exc:  # a request the model refuses (BadRequest): one line
        raise ConfigError(exc.message) from exc
    columns = ["user_id", "rank", "item_id", "score", "fallback"]
    _print_table(
        [
            (r.user_id, r.rank, r.item_id, f"{r.score:.4f}", r.fallback or "-")
            for r in table[columns].itertuples(index=False)
        ],
        header=tuple(columns),
    )
    for user in table.loc[table["fallback"] != "", "user_id"].unique():
        typer.echo(f"note: user {user} is unknown to the model: most popular items instead")


SERVE_HOST = "127.0.0.1"
SERVE_PORT = 5001


def serve_invocation(
    model: str, host: str = SERVE_HOST, port: int = SERVE_PORT, tracking_uri: str | None = None
) -> tuple[list[str], dict[str, str]]:
    """The ``mlflow models serve`` command line and environment that serve ``model``.

    Tracking and registry point at ``tracking_uri`` (default: ``$MLFLOW_TRACKING_URI``, else
    the project's ``mlruns/mlflow.db``, wherever the command runs; bare ``mlflow`` would open,
    or create, ``./mlflow.db``), and this interpreter's ``bin`` folder leads ``PATH``, where
    ``mlflow models serve`` finds the ``uvicorn`` it execs. ``--env-manager local`` serves from
    this environment, offline.
    """
    import os
    import sys
    from pathlib import Path

    from alignrec.tracking import default_tracking_uri

    uri = tracking_uri or default_tracking_uri()
    registry = uri if tracking_uri else os.environ.get("MLFLOW_REGISTRY_URI", uri)
    bin_dir = str(Path(sys.executable).parent)
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": uri,
        "MLFLOW_REGISTRY_URI": registry,
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "PATH": os.pathsep.join([bin_dir, os.environ.get("PATH", "")]),
    }
    argv = [
        sys.executable, "-m", "mlflow", "models", "serve", "-m", model,
        "--env-manager", "local", "-h", host, "-p", str(port),
    ]  # fmt: skip
    return argv, env


def serve_command(
    model: Annotated[
        str, typer.Option("--model", help="model URI, e.g. models:/alignrec-lastfm-2k@champion")
    ],
    port: Annotated[int, typer.Option("--port", "-p", min=1, max=65535)] = SERVE_PORT,
    host: Annotated[
        str, typer.Option("--host", "-h", help="interface to listen on (0.0.0.0: every one)")
    ] = SERVE_HOST,
    tracking_uri: TrackingUri = None,
) -> None:
    """Serve MODEL over HTTP (POST /invocations) with `mlflow models serve`, from the
    project's MLflow store and this environment. Ctrl-C stops it.

    ALIGNREC_SERVE_MAX_K (default 1000) and ALIGNREC_SERVE_MAX_ROWS (default 10,000) bound
    what one request may ask for; a request beyond them gets HTTP 400.
    """
    import os

    argv, env = serve_invocation(model, host, port, tracking_uri)
    typer.echo(f"serving {model} from {env['MLFLOW_TRACKING_URI']} on http://{host}:{port}")
    os.execve(argv[0], argv, env)
