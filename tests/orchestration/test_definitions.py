"""The Dagster definitions load, every job resolves, and the data group materializes."""

from __future__ import annotations

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


def test_instance_settings_sit_where_dagster_dev_does_not_warn(tmp_path):
    """`make ui` runs `dagster dev` in the project root with DAGSTER_HOME=.dagster; a dagster.yaml
    in the root makes it warn that the file "will not be used" (though the home links to it).
    The settings live in orchestration/, and the home's dagster.yaml links there."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    assert not (root / "dagster.yaml").exists() and not (root / "dagster.yml").exists()
    settings = root / "orchestration" / "dagster.yaml"
    for script in ("Makefile", "scripts/ui.sh"):
        assert "/orchestration/dagster.yaml" in (root / script).read_text(), script
    (tmp_path / "dagster.yaml").symlink_to(settings)
    with dg.DagsterInstance.from_config(str(tmp_path)) as inst:
        assert inst.run_coordinator.get_run_queue_config().max_concurrent_runs == 1
        assert not inst.telemetry_enabled


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
