"""The MLflow model registry: one registered model per dataset, gated by validation.

Every trained AlignRec model becomes a new version of ``alignrec-<dataset>``, tagged with
what it was made from (``data_version``: the md5 of the repository's ``data.dvc``;
``data_fingerprint``: the content hash of this dataset, its spec and input files;
``code_version``: the git commit, ``-dirty`` when tracked files changed; ``params``: the
train and model configs as JSON) and how it scored (``valid_recall_at_20``,
``valid_ndcg_at_20``, ``test_recall_at_20``, ``test_ndcg_at_20``).

Aliases, not stages: the newest version is the ``challenger``; it becomes the
``champion`` only when its validation Recall@20 beats the champion's (or there is no
champion). Versions trained on different data (their ``data_fingerprint`` tags differ)
are never compared: their validation splits are not the same users and items, so the
champion stays until it is promoted by hand. Serving loads
``models:/alignrec-<dataset>@champion``, so rolling back is pointing ``champion`` at an
earlier version (:func:`promote`).

Gating reads the champion, compares, then moves the alias. Two processes doing that at the
same moment (two workers registering versions of one model through a tracking server) could
both read the same champion and the worse version could land last, so every alias change
runs under :func:`gating_lock`, a lock the registry itself holds.

mlflow is imported inside the functions that need it.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from alignrec.errors import ConfigError, DataError
from alignrec.paths import PROJECT_ROOT
from alignrec.tracking import default_tracking_uri, mlflow_key

CHAMPION = "champion"
CHALLENGER = "challenger"
DEFAULT_METRIC = "valid_recall_at_20"
DATA_TAG = "data_fingerprint"
HEADLINE = ("recall@20", "ndcg@20")
UNKNOWN = "unknown"
LOCK_SUFFIX = ".gating-lock"
LOCK_STALE_SECONDS = 120.0  # a lock older than this was left by a process that died holding it
LOCK_WAIT_SECONDS = 600.0
_EXISTS = ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS")


def data_version(dvc_file: str | Path | None = None) -> str:
    """The md5 DVC records for the data folder (``outs[0].md5`` of the top-level
    ``data.dvc``); ``unknown`` when the file is absent."""
    path = Path(dvc_file) if dvc_file is not None else PROJECT_ROOT / "data.dvc"
    if not path.is_file():
        return UNKNOWN
    try:
        doc = yaml.safe_load(path.read_text())
        return str(doc["outs"][0]["md5"])
    except (yaml.YAMLError, KeyError, IndexError, TypeError) as exc:
        raise DataError(f"no outs[0].md5 in a DVC file ({exc!r})", file=path) from exc


def code_version(root: str | Path | None = None) -> str:
    """The git commit of ``root`` (default: the project), suffixed ``-dirty`` when tracked
    files differ from it (untracked files are ignored, as ``git describe --dirty`` does);
    ``unknown`` without git or outside a repository."""
    cwd = Path(root) if root is not None else PROJECT_ROOT
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}  # read-only: never take the index lock

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=True, timeout=30
        ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return UNKNOWN
    return commit + ("-dirty" if dirty else "")


def metric_tag(split: str, key: str) -> str:
    """The version tag of a headline metric: ``valid``, ``recall@20`` -> ``valid_recall_at_20``."""
    return f"{split}_{mlflow_key(key)}"


def version_tags(
    record: dict[str, Any], config: dict[str, Any], data: str | None = None, code: str | None = None
) -> dict[str, str]:
    """The tags of a new version: provenance, the configs and the headline metrics of
    ``record`` (a ``metrics.json``); ``data``/``code`` default to the project's versions."""
    tags = {
        "data_version": data if data is not None else data_version(),
        "code_version": code if code is not None else code_version(),
        "params": json.dumps(config, sort_keys=True, default=str),
        "model": str(record.get("model", "")),
        "seed": str(record.get("seed", "")),
    }
    if record.get(DATA_TAG):
        tags[DATA_TAG] = str(record[DATA_TAG])
    if record.get("features") is not None:
        tags["features"] = str(record["features"])
    for split in ("valid", "test"):
        for key in HEADLINE:
            value = (record.get(split) or {}).get(key)
            if value is not None:
                tags[metric_tag(split, key)] = repr(float(value))
    return tags


def registry_client(tracking_uri: str | None = None):
    """An ``MlflowClient`` whose tracking and registry stores are both ``tracking_uri``
    (default :func:`~alignrec.tracking.default_tracking_uri`)."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow.tracking import MlflowClient

    uri = tracking_uri or default_tracking_uri()
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


@contextlib.contextmanager
def gating_lock(
    client, name: str, wait: float = LOCK_WAIT_SECONDS, stale: float = LOCK_STALE_SECONDS
) -> Iterator[None]:
    """Hold the lock on ``name``'s aliases for the block, across processes and machines.

    The lock is a registered model named ``<name>.gating-lock``: whoever creates it holds
    the lock, and deletes it on leaving. The store refuses a second model of the same name
    (a unique key in its database, through a tracking server too), so exactly one creator
    succeeds; the others retry with a growing, jittered pause for up to ``wait`` seconds.
    A lock older than ``stale`` seconds (its holder died inside the block, which takes well
    under a second) is broken. Waiting longer than ``wait`` raises a :class:`ConfigError`
    naming the lock.
    """
    from mlflow.exceptions import MlflowException

    lock = f"{name}{LOCK_SUFFIX}"
    holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    deadline = time.monotonic() + wait
    pause = 0.005
    while True:
        try:
            client.create_registered_model(
                lock, tags={"holder": holder},
                description=f"alignrec: lock on the aliases of {name} while they change",
            )  # fmt: skip
            break
        except MlflowException as exc:
            # taken; or taken and released at once: the SQL store, refused, reads the model
            # back to word its error, and finds it gone (RESOURCE_DOES_NOT_EXIST)
            if exc.error_code not in (*_EXISTS, "RESOURCE_DOES_NOT_EXIST"):
                raise
        with contextlib.suppress(MlflowException):  # gone in between: just retry
            held = client.get_registered_model(lock)
            if time.time() - held.creation_timestamp / 1000 > stale:
                client.delete_registered_model(lock)
                continue
        if time.monotonic() > deadline:
            raise ConfigError(
                f"the registry lock {lock!r} was held for over {wait:.0f} s; if no process "
                "is registering a version, delete that registered model"
            )
        time.sleep(pause * random.uniform(1, 2))
        pause = min(pause * 2, 0.25)
    try:
        yield
    finally:
        with contextlib.suppress(MlflowException):
            client.delete_registered_model(lock)


def register_version(
    client,
    name: str,
    model_uri: str,
    run_id: str | None,
    tags: dict[str, str],
    model_id: str | None = None,
) -> str:
    """Register ``model_uri`` as a new version of ``name`` (created when missing) with
    ``tags``, make it the ``challenger`` and return its version number.

    The store numbers versions itself, so concurrent registrations each get their own.
    The ``challenger`` alias moves under :func:`gating_lock`, and only forward: when a
    newer version registered at the same moment already holds it, it stays there.
    """
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name)
    except MlflowException as exc:
        if exc.error_code not in _EXISTS:
            raise
    mv = client.create_model_version(
        name, source=model_uri, run_id=run_id, tags=tags, model_id=model_id
    )
    with gating_lock(client, name):
        current = client.get_registered_model(name).aliases.get(CHALLENGER)
        if current is None or int(current) < int(mv.version):
            client.set_registered_model_alias(name, CHALLENGER, mv.version)
    return str(mv.version)


@dataclass(frozen=True)
class PromotionDecision:
    """Whether a challenger replaced the champion, and on what evidence.

    ``champion_version``/``champion_value`` describe the champion before the decision
    (``None`` when there was none); ``*_data`` are the versions' ``data_fingerprint`` tags.
    """

    name: str
    metric: str
    challenger_version: str
    challenger_value: float | None
    champion_version: str | None
    champion_value: float | None
    accepted: bool
    reason: str
    challenger_data: str | None = None
    champion_data: str | None = None

    @property
    def serving_version(self) -> str | None:
        """The champion after the decision."""
        return self.challenger_version if self.accepted else self.champion_version

    def markdown(self) -> str:
        """Champion vs challenger as a markdown table, then the decision."""

        def fmt(value: float | None) -> str:
            return "n/a" if value is None else f"{value:.4f}"

        def data(fingerprint: str | None) -> str:
            return fingerprint[:12] if fingerprint else "n/a"

        champion = f"v{self.champion_version}" if self.champion_version else "none"
        return "\n".join(
            [
                f"| {self.name} | version | {self.metric} | data |",
                "|---|---|---|---|",
                f"| champion (before) | {champion} | {fmt(self.champion_value)} "
                f"| {data(self.champion_data)} |",
                f"| challenger | v{self.challenger_version} | {fmt(self.challenger_value)} "
                f"| {data(self.challenger_data)} |",
                "",
                f"**{'promoted' if self.accepted else 'kept champion'}**: {self.reason}",
            ]
        )


def _tag_number(tags: dict[str, str], metric: str) -> float | None:
    value = tags.get(metric)
    try:
        number = float(value) if value is not None else None
    except ValueError:
        return None
    return number if number is not None and math.isfinite(number) else None


def promote_if_better(
    client, name: str, version: str | int, metric: str = DEFAULT_METRIC
) -> PromotionDecision:
    """Make ``version`` the champion of ``name`` when its ``metric`` tag is strictly higher
    than the current champion's, or when there is no champion yet.

    A champion without a readable ``metric`` (one promoted by hand from an untagged
    version) is kept: there is no evidence to replace it on. So is a champion trained on
    other data (both carry ``data_fingerprint`` tags and they differ): the two validation
    scores come from different splits and say nothing about which model is better.

    The read, the comparison and the alias change run under :func:`gating_lock`, so
    versions gated at the same moment are decided one after the other, as if in sequence.
    """
    with gating_lock(client, name):
        return _promote_if_better(client, name, str(version), metric)


def _promote_if_better(client, name: str, version: str, metric: str) -> PromotionDecision:
    challenger_tags = client.get_model_version(name, version).tags
    challenger_value = _tag_number(challenger_tags, metric)
    challenger_data = challenger_tags.get(DATA_TAG)
    champion = client.get_registered_model(name).aliases.get(CHAMPION)
    champion = str(champion) if champion is not None else None
    champion_tags = client.get_model_version(name, champion).tags if champion else {}
    champion_value = _tag_number(champion_tags, metric)
    champion_data = champion_tags.get(DATA_TAG)

    def decide(accepted: bool, reason: str) -> PromotionDecision:
        if accepted:
            client.set_registered_model_alias(name, CHAMPION, version)
        return PromotionDecision(
            name, metric, version, challenger_value, champion, champion_value, accepted, reason,
            challenger_data=challenger_data, champion_data=champion_data,
        )  # fmt: skip

    if champion == version:
        return decide(False, f"v{version} already is the champion")
    if challenger_value is None:
        return decide(False, f"v{version} has no {metric} tag")
    if champion is None:
        return decide(True, f"no champion yet; v{version} becomes the first")
    if champion_value is None:
        return decide(False, f"the champion v{champion} has no {metric} tag to compare with")
    if challenger_data and champion_data and challenger_data != champion_data:
        return decide(
            False,
            f"v{version} was trained on other data than the champion v{champion} "
            f"({DATA_TAG} {challenger_data[:12]} vs {champion_data[:12]}): their {metric} "
            "come from different validation splits and do not compare. Check both, then "
            f"promote by hand: alignrec registry promote --model {name} --version {version}",
        )
    if challenger_value > champion_value:
        return decide(True, f"{metric} {challenger_value:.4f} > {champion_value:.4f}")
    return decide(False, f"{metric} {challenger_value:.4f} <= {champion_value:.4f} of v{champion}")


def register_recommender(
    out: str | Path,
    record: dict[str, Any],
    name: str,
    tracking_uri: str | None = None,
    metric: str = DEFAULT_METRIC,
) -> PromotionDecision:
    """Log ``out/recommender.npz`` as the pyfunc of the run that trained it, register it as
    a new tagged version of ``name`` (the challenger) and promote it if it is better.

    ``out`` is an ``alignrec train`` folder written with ``export=True``; ``record`` is its
    metrics record, carrying ``mlflow_run_id``.
    """
    from alignrec.runs import CONFIG, read_config
    from alignrec.serving import EXPORT_FILE, log_recommender

    out = Path(out)
    run_id = record.get("mlflow_run_id")
    if not run_id:
        raise ConfigError(f"the run in {out} was not logged to MLflow (no mlflow_run_id)")
    config_file = out / CONFIG
    if not config_file.is_file():
        raise ConfigError(f"{config_file} is missing: register an `alignrec train` folder")
    uri = tracking_uri or default_tracking_uri()
    info = log_recommender(out / EXPORT_FILE, run_id, tracking_uri=uri)
    client = registry_client(uri)
    tags = version_tags(record, read_config(out))
    version = register_version(client, name, info.model_uri, run_id, tags, model_id=info.model_id)
    return promote_if_better(client, name, version, metric)


def promote(client, name: str, version: str | int) -> str | None:
    """Point ``champion`` at ``version`` (a rollback when it is an earlier one); return the
    previous champion's version."""
    from mlflow.exceptions import MlflowException

    version = str(version)
    get_registered(client, name)
    with gating_lock(client, name):
        try:
            previous = client.get_registered_model(name).aliases.get(CHAMPION)
            client.get_model_version(name, version)
        except MlflowException as exc:
            raise ConfigError(f"{name} has no version {version}") from exc
        client.set_registered_model_alias(name, CHAMPION, version)
    return str(previous) if previous is not None else None


def get_registered(client, name: str):
    """The registered model ``name``; a :class:`ConfigError` naming it when it is absent."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_registered_model(name)
    except MlflowException as exc:
        raise ConfigError(f"no registered model {name!r} in {client.tracking_uri}") from exc


def list_versions(client, name: str) -> list[dict[str, str]]:
    """One row per version of ``name``, oldest first: version, aliases, headline metrics,
    data and code versions, and the run."""
    aliases: dict[str, list[str]] = {}
    for alias, version in get_registered(client, name).aliases.items():
        aliases.setdefault(str(version), []).append(alias)  # search results omit aliases
    rows = []
    for mv in client.search_model_versions(f"name='{name}'"):
        row = {
            "version": str(mv.version),
            "aliases": ",".join(sorted(aliases.get(str(mv.version), []))),
        }
        for split in ("valid", "test"):
            for key in HEADLINE:
                tag = metric_tag(split, key)
                value = mv.tags.get(tag)
                row[tag] = f"{float(value):.4f}" if value is not None else ""
        row["data_version"] = mv.tags.get("data_version", "")
        row[DATA_TAG] = mv.tags.get(DATA_TAG, "")[:12]
        row["code_version"] = mv.tags.get("code_version", "")
        row["run_id"] = mv.run_id or ""
        rows.append(row)
    return sorted(rows, key=lambda r: int(r["version"]))
