"""Registered versions carry provenance tags and a signature; the champion is gated on
validation Recall@20 and can be rolled back from the command line."""

from __future__ import annotations

import json
import re
import subprocess

import pytest
from typer.testing import CliRunner

from alignrec import cli
from alignrec.errors import ConfigError, DataError
from alignrec.registry import (
    DATA_TAG,
    DEFAULT_METRIC,
    code_version,
    data_version,
    list_versions,
    promote_if_better,
    register_version,
    registry_client,
    version_tags,
)

pytestmark = pytest.mark.slow


def test_a_version_has_tags_signature_example_and_both_aliases(registered, trained):
    import mlflow

    client = registry_client(registered.uri)
    mv = client.get_model_version(registered.name, "1")
    assert (
        set(mv.aliases) == {"champion", "challenger"}
        and mv.run_id == trained.record["mlflow_run_id"]
    )
    assert mv.tags["data_version"] == data_version() != "unknown"
    assert re.fullmatch(r"([0-9a-f]{40}(-dirty)?)|unknown", mv.tags["code_version"])
    assert set(json.loads(mv.tags["params"])) == {"train", "model"}
    for split in ("valid", "test"):
        for key in ("recall@20", "ndcg@20"):
            tag = f"{split}_{key.replace('@', '_at_')}"
            assert float(mv.tags[tag]) == pytest.approx(trained.record[split][key])
    assert registered.decision.accepted and registered.decision.champion_version is None

    info = mlflow.models.get_model_info(registered.champion)
    inputs = {c.name: c.required for c in info.signature.inputs.inputs}
    # user_id is required by the model (a one-line 400), not by MLflow's schema check
    assert inputs == {"user_id": False, "k": False, "exclude": False}
    assert info.signature.outputs.input_names() == [
        "user_id",
        "rank",
        "item_id",
        "score",
        "fallback",
    ]
    assert info.saved_input_example_info["type"] == "dataframe"


def _register(client, name: str, source, recall: float | None, data: str | None = None) -> str:
    tags = {} if recall is None else {DEFAULT_METRIC: repr(recall)}
    if data is not None:
        tags[DATA_TAG] = data
    return register_version(client, name, source.source, source.run_id, tags, source.model_id)


def _aliases(client, name: str) -> dict[str, str]:
    return {alias: str(v) for alias, v in client.get_registered_model(name).aliases.items()}


def test_gating_accepts_a_better_challenger_and_rejects_a_worse_one(registered):
    client = registry_client(registered.uri)
    source = client.get_model_version(registered.name, "1")
    name = "gate-accept-reject"

    first = promote_if_better(client, name, _register(client, name, source, 0.50))
    assert first.accepted and first.champion_version is None
    better = promote_if_better(client, name, _register(client, name, source, 0.70))
    assert better.accepted and (better.champion_version, better.champion_value) == ("1", 0.50)
    assert (better.challenger_version, better.challenger_value) == ("2", 0.70)
    worse = promote_if_better(client, name, _register(client, name, source, 0.60))
    assert not worse.accepted and worse.champion_version == "2" and worse.serving_version == "2"
    tie = promote_if_better(client, name, _register(client, name, source, 0.70))
    assert not tie.accepted
    untagged = promote_if_better(client, name, _register(client, name, source, None))
    assert not untagged.accepted and "no valid_recall_at_20" in untagged.reason

    assert _aliases(client, name) == {"champion": "2", "challenger": "5"}
    md = worse.markdown()
    assert "| champion (before) | v2 | 0.7000 |" in md and "| challenger | v3 | 0.6000 |" in md
    assert "kept champion" in md


def test_gating_never_compares_versions_trained_on_different_data(registered):
    client = registry_client(registered.uri)
    source = client.get_model_version(registered.name, "1")
    name = "gate-data"
    old, new = "a" * 64, "b" * 64

    assert promote_if_better(client, name, _register(client, name, source, 0.30, old)).accepted
    other = promote_if_better(client, name, _register(client, name, source, 0.90, new))
    assert not other.accepted and other.serving_version == "1"
    assert (other.challenger_data, other.champion_data) == (new, old)
    assert "trained on other data" in other.reason and "registry promote" in other.reason
    assert "| challenger | v2 | 0.9000 | bbbbbbbbbbbb |" in other.markdown()
    same = promote_if_better(client, name, _register(client, name, source, 0.40, old))
    assert same.accepted and same.champion_version == "1"
    # A version without the tag (registered before it existed) is still compared.
    untagged = promote_if_better(client, name, _register(client, name, source, 0.50))
    assert untagged.accepted and untagged.champion_version == "3"
    assert _aliases(client, name) == {"champion": "4", "challenger": "4"}


def test_version_tags_carry_the_dataset_fingerprint():
    record = {"model": "alignrec", "seed": 0, DATA_TAG: "c" * 64, "valid": {"recall@20": 0.25}}
    tags = version_tags(record, {"train": {}, "model": {}}, data="md5", code="abc")
    assert tags[DATA_TAG] == "c" * 64 and tags[DEFAULT_METRIC] == "0.25"
    assert DATA_TAG not in version_tags({"model": "alignrec"}, {}, data="md5", code="abc")


def test_registry_cli_lists_versions_and_rolls_back(registered):
    client = registry_client(registered.uri)
    source = client.get_model_version(registered.name, "1")
    name = "gate-rollback"
    for recall in (0.3, 0.4):
        promote_if_better(client, name, _register(client, name, source, recall))
    runner = CliRunner()
    res = runner.invoke(
        cli.app,
        [
            "registry",
            "promote",
            "--model",
            name,
            "--version",
            "1",
            "--tracking-uri",
            registered.uri,
        ],
    )
    assert res.exit_code == 0, res.output
    assert f"{name}@champion: v2 -> v1" in res.output
    assert _aliases(client, name)["champion"] == "1"

    res = runner.invoke(
        cli.app, ["registry", "list", "--model", name, "--tracking-uri", registered.uri]
    )
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[0].split()[:3] == ["version", "aliases", "valid_recall_at_20"]
    assert lines[2].split()[:3] == ["1", "champion", "0.3000"]
    assert lines[3].split()[:3] == ["2", "challenger", "0.4000"]
    assert [r["version"] for r in list_versions(client, name)] == ["1", "2"]

    res = runner.invoke(
        cli.app,
        [
            "registry",
            "promote",
            "--model",
            name,
            "--version",
            "9",
            "--tracking-uri",
            registered.uri,
        ],
    )
    assert isinstance(res.exception, ConfigError) and "no version 9" in str(res.exception)
    res = runner.invoke(
        cli.app, ["registry", "list", "--model", "absent", "--tracking-uri", registered.uri]
    )
    assert isinstance(res.exception, ConfigError)


def test_data_version_reads_the_md5_of_data_dvc(tmp_path):
    dvc = tmp_path / "data.dvc"
    assert data_version(dvc) == "unknown"
    dvc.write_text("outs:\n- md5: abc123.dir\n  path: data\n")
    assert data_version(dvc) == "abc123.dir"
    dvc.write_text("outs: []\n")
    with pytest.raises(DataError, match="data.dvc"):
        data_version(dvc)


def test_code_version_is_the_commit_marked_dirty_on_changes(tmp_path):
    assert code_version(tmp_path) == "unknown"

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
            cwd=tmp_path,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()

    git("init", "-q")
    (tmp_path / "f.py").write_text("a = 1\n")
    git("add", "f.py")
    git("commit", "-q", "-m", "one")
    commit = git("rev-parse", "HEAD")
    (tmp_path / "untracked.txt").write_text("scratch")
    assert code_version(tmp_path) == commit
    (tmp_path / "f.py").write_text("a = 2\n")
    assert code_version(tmp_path) == f"{commit}-dirty"
