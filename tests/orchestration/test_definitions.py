"""The Dagster definitions load, every job resolves, and the data group materializes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from orchestration.definitions import defs


def test_definitions_resolve_every_asset_check_and_job():
    repo = defs.get_repository_def()
    keys = {k.to_user_string() for k in repo.asset_graph.get_all_asset_keys()}
    assert {"raw_data", "dataset", "encoder_outputs", "stage1_features", "zero_shot_eval", "item_cf_eval",
            "mask_modality_eval", "bpr_model", "lightgcn_model", "alignrec_model"} <= keys
    checks = {c.name for c in repo.asset_graph.asset_check_keys}
    assert {"raw_interactions_valid", "interactions_valid", "features_valid", "images_decode",
            "stage1_features_valid"} <= checks
    for name in ("data_job", "pipeline_job"):
        job = defs.resolve_job_def(name)  # a broken selection raises here
        assert job.partitions_def is not None
    partitions = defs.resolve_job_def("data_job").partitions_def.get_partition_keys()
    assert {"movielens-100k-mm", "amazon-baby", "amazon-sports", "lastfm-2k", "synthetic"} <= set(partitions)


def test_asset_checks_are_blocking():
    from orchestration.assets import data, features

    for check in [*data.checks, *features.checks]:
        for spec in check.check_specs:
            assert spec.blocking, spec.name


def test_alignrec_model_description_shows_the_registry_name():
    spec = next(s for s in defs.resolve_all_asset_specs() if s.key.to_user_string() == "alignrec_model")
    assert "`alignrec-<dataset>`" in spec.description


def test_descriptions_keep_placeholders_out_of_html():
    """The UI renders descriptions as Markdown: a bare ``<dataset>`` is dropped as an HTML tag,
    so a placeholder belongs in backticks."""
    import re

    texts = {s.key.to_user_string(): s.description or "" for s in defs.resolve_all_asset_specs()}
    repo = defs.get_repository_def()
    for key in repo.asset_graph.asset_check_keys:
        texts[key.name] = repo.asset_graph.get_check_spec(key).description or ""
    bare = {
        name: tags
        for name, text in texts.items()
        if (tags := re.findall(r"</?[A-Za-z][^>]*>", re.sub(r"`[^`]*`", "", text)))
    }
    assert bare == {}


def test_instance_settings_sit_at_the_top_level(tmp_path):
    """The project keeps its instance settings in ./dagster.yaml; `make setup` and `make ui`
    link DAGSTER_HOME's dagster.yaml to it, and through that link the settings load."""
    root = Path(__file__).resolve().parents[2]
    settings = root / "dagster.yaml"
    assert settings.is_file() and not (root / "orchestration" / "dagster.yaml").exists()
    assert "ln -sfn $(CURDIR)/dagster.yaml $(DAGSTER_HOME)/dagster.yaml" in (
        root / "Makefile"
    ).read_text()
    assert 'ln -sfn "$ROOT/dagster.yaml" "$DAGSTER_HOME/dagster.yaml"' in (
        root / "scripts" / "ui.sh"
    ).read_text()
    (tmp_path / "dagster.yaml").symlink_to(settings)
    with dg.DagsterInstance.from_config(str(tmp_path)) as inst:
        assert inst.run_coordinator.get_run_queue_config().max_concurrent_runs == 1
        assert not inst.telemetry_enabled


# `dagster dev` stopped right after its start-up checks: the instance is where it would begin
# serving. argv[1] picks the launcher: `wrapper` (orchestration.dagster_dev, as scripts/ui.sh
# runs it) or `dagster` (the plain CLI).
_DEV_PROBE = """
import sys
import dagster._cli.dev as dev

class Stop(Exception):
    pass

def stop(*args, **kwargs):
    raise Stop()

dev.get_possibly_temporary_instance_for_cli = stop
args = ["-m", "orchestration.definitions"]
try:
    if sys.argv[1] == "wrapper":
        from orchestration.dagster_dev import main
        main(args)
    else:
        from dagster._cli import main
        sys.argv = ["dagster", "dev", *args]
        main()
except Stop:
    print("reached the instance")
"""


def _dev_output(tmp_path, launcher: str, home_settings: str) -> str:
    """What `dagster dev` prints on start-up in a folder holding the project's dagster.yaml,
    with DAGSTER_HOME elsewhere holding ``home_settings`` (``link``: a link to that file,
    ``copy``: another file with the same text)."""
    root = Path(__file__).resolve().parents[2]
    work, home = tmp_path / launcher / home_settings, tmp_path / launcher / home_settings / ".dagster"
    home.mkdir(parents=True)
    shutil.copy(root / "dagster.yaml", work / "dagster.yaml")
    if home_settings == "link":
        (home / "dagster.yaml").symlink_to(work / "dagster.yaml")
    else:
        shutil.copy(work / "dagster.yaml", home / "dagster.yaml")
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.run(
        [sys.executable, "-c", _DEV_PROBE, launcher],
        cwd=work, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert "reached the instance" in out, out
    return out


@pytest.mark.slow
def test_make_ui_does_not_warn_that_the_linked_settings_will_not_be_used(tmp_path):
    """`make ui` runs `dagster dev` in the project root, whose dagster.yaml DAGSTER_HOME links
    to. Plain `dagster dev` warns that the file "will not be used" (it compares folders only);
    scripts/ui.sh's launcher drops that false warning, and keeps it when the home holds a
    different file."""
    from orchestration.dagster_dev import FALSE_WARNING

    assert FALSE_WARNING in _dev_output(tmp_path, "dagster", "link")  # the check still exists
    assert FALSE_WARNING not in _dev_output(tmp_path, "wrapper", "link")
    assert FALSE_WARNING in _dev_output(tmp_path, "wrapper", "copy")
    ui = (Path(__file__).resolve().parents[2] / "scripts" / "ui.sh").read_text()
    assert "-m orchestration.dagster_dev" in ui and '"$BIN/dagster" dev' not in ui


@pytest.fixture
def instance():
    with dg.instance_for_test() as inst:
        yield inst


def test_materialize_data_group_on_synthetic(instance):
    # Partitions are fixed at import: this is the synthetic dataset shipped in datasets/.
    from orchestration.assets import data

    result = dg.materialize(
        [*data.assets, *data.checks], partition_key="synthetic", instance=instance
    )
    assert result.success
    evals = result.get_asset_check_evaluations()
    assert len(evals) == 4 and all(e.passed for e in evals)
    meta = result.asset_materializations_for_node("dataset")[0].metadata
    assert meta["users"].value == 40 and meta["items"].value == 30


def test_a_wrong_setting_in_the_environment_is_named(monkeypatch):
    from alignrec.errors import ConfigError
    from orchestration.definitions import _env_int, _executor

    monkeypatch.setenv("ALIGNREC_EXECUTOR", "multiproces")
    with pytest.raises(ConfigError, match="ALIGNREC_EXECUTOR='multiproces': expected one of"):
        _executor()
    monkeypatch.setenv("ALIGNREC_EXECUTOR", "multiprocess")
    assert _executor() is dg.multiprocess_executor
    monkeypatch.setenv("ALIGNREC_PROCESSES", "0")
    with pytest.raises(ConfigError, match="ALIGNREC_PROCESSES='0': expected an integer >= 1"):
        _env_int("ALIGNREC_PROCESSES", 1, minimum=1)
    monkeypatch.setenv("ALIGNREC_THREADS", "two")
    with pytest.raises(ConfigError, match="ALIGNREC_THREADS='two'"):
        _env_int("ALIGNREC_THREADS", 0, minimum=0)
    monkeypatch.delenv("ALIGNREC_THREADS")
    assert _env_int("ALIGNREC_THREADS", 0, minimum=0) == 0


def test_the_celery_executor_without_dagster_celery_says_what_to_install(monkeypatch):
    import sys

    from alignrec.errors import ConfigError
    from orchestration.definitions import _executor

    monkeypatch.setenv("ALIGNREC_EXECUTOR", "celery")
    monkeypatch.setitem(sys.modules, "dagster_celery", None)  # as where it is not installed
    with pytest.raises(ConfigError, match="requirements-scale.lock"):
        _executor()
