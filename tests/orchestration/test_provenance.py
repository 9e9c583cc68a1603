"""Dagster, DVC and the registry agree (issue 21, item 4).

A run of ``dvc repro`` (a Dagster run tagged ``alignrec/dvc_stage``) writes where dvc.yaml
declares its outputs, with a provenance record naming its Dagster run, MLflow run and registry
version; every other Dagster run (the UI, ``dagster asset materialize``, a schedule) writes under
``ALIGNREC_HOME/dagster/<run id>/`` and never touches a file DVC tracks. A stage that DVC
restores from its run cache brings back an old provenance record, which
:func:`orchestration.provenance.check` then reports.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import dagster as dg
import pytest
import yaml

from orchestration import provenance
from orchestration.paths import DVC_STAGE_TAG, RUNS_DIR, dvc_stage, encoder_cache, output_root
from tests.orchestration.test_dvc_stage import GENERATED, PARAMS, _paths, _render

TINY_STAGE1 = {"epochs": "1", "num_layers": "1", "codebook_size": "8", "codebook_sample": "500"}
FAST = {"epochs": "2", "patience": "2"}


def _context(tags: dict[str, str], run_id: str = "child", root: str | None = None):
    run = SimpleNamespace(tags=tags, run_id=run_id, root_run_id=root)
    return SimpleNamespace(run=run, run_id=run_id)


def test_only_a_dvc_stage_run_writes_alignrec_home_itself(isolated_home):
    ui = _context({})
    assert output_root(ui) == isolated_home / RUNS_DIR / "child" and dvc_stage(ui) is None
    assert encoder_cache(ui, "x") == isolated_home / RUNS_DIR / "encoders" / "x"
    # a re-execution writes where the run it re-executes wrote, so it resumes there
    assert output_root(_context({}, root="first")) == isolated_home / RUNS_DIR / "first"
    stage = _context({DVC_STAGE_TAG: "stage2"})
    assert output_root(stage) == isolated_home and dvc_stage(stage) == "stage2"
    assert encoder_cache(stage, "x") == isolated_home / "datasets" / "x" / "encoders"
    # a directly invoked asset has no run: it is not a DVC stage
    direct = dg.build_asset_context(partition_key="synthetic")
    assert output_root(direct) == isolated_home / RUNS_DIR / direct.run_id


def test_dvc_yaml_declares_the_provenance_of_every_asset_that_records_it():
    declared = {}
    for name, stage, item in GENERATED:
        outs = [Path(_render(p, item)) for p in _paths(stage.get("outs"))]
        declared[name] = {p.stem for p in outs if p.parent.parent.name == provenance.PROVENANCE_DIR}
    expected = {name: set() for name in declared}
    for asset, stage in provenance.STAGE_OF.items():
        expected[stage].add(asset)
    assert declared == expected


def _dvc_outs(home: Path, dataset: str, stages=None) -> list[Path]:
    """Every output dvc.yaml declares (of the named ``stages``), for ``dataset`` with
    ``artifacts`` at ``home``."""
    outs = []
    for name, stage, item in GENERATED:
        if stages is not None and name not in stages:
            continue
        for field in ("outs", "metrics", "plots"):
            for p in _paths(stage.get(field)):
                rel = Path(_render(p.replace("${dataset}", dataset), item))
                outs.append(home / rel.relative_to(PARAMS["artifacts"]))
    return outs


@pytest.mark.slow
def test_a_ui_run_writes_under_its_run_folder_never_into_dvcs_outputs(
    tmp_path, monkeypatch, isolated_home
):
    """`make pipeline`, the UI and the schedule run without the DVC tag: they used to write
    artifacts/datasets/<name>/..., runs/ and benchmark/, the files dvc.yaml tracks."""
    from mlflow.tracking import MlflowClient

    from orchestration.assets import data, features, training
    from orchestration.resources import ComputeResource, MLflowResource

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    selected = [*data.assets, features.encoder_outputs, features.stage1_features,
                *(a for a in training.assets if a.key.path[-1] in ("bpr_model", "alignrec_model")),
                *(c for c in training.checks
                  if any(k.asset_key.path[-1] == "bpr_model" for k in c.check_keys))]  # fmt: skip
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            selected,
            partition_key="synthetic",
            instance=instance,
            resources={"mlflow": MLflowResource(),
                       "compute": ComputeResource(device="cpu", threads=1)},
            run_config={"ops": {"stage1_features": {"config": {"overrides": TINY_STAGE1}},
                                "bpr_model": {"config": {"sets": FAST}},
                                "alignrec_model": {"config": {"sets": FAST}}}},
        )  # fmt: skip
    assert result.success
    # the check read the run's own tables (there are none where DVC keeps them)
    assert [e.check_name for e in result.get_asset_check_evaluations() if e.passed] == [
        "bpr_model_valid"
    ]
    run_folder = isolated_home / RUNS_DIR / result.run_id
    assert [p for p in _dvc_outs(isolated_home, "synthetic") if p.exists()] == []
    written = [p for p in isolated_home.rglob("*") if p.is_file()]
    allowed = (run_folder, isolated_home / RUNS_DIR / "encoders", isolated_home / "raw")
    assert [p for p in written if not any(a in p.parents for a in allowed)] == []
    # downstream assets read the folders their upstream asset returned
    tables = Path(result.output_for_node("dataset")["folder"])
    assert tables == run_folder / "datasets" / "synthetic" / "tables"
    stage1 = result.output_for_node("stage1_features")
    assert Path(stage1["features"]).parent == run_folder / "datasets" / "synthetic" / "stage1"
    ar = result.output_for_node("alignrec_model")
    assert Path(ar["folder"]) == run_folder / "runs" / "synthetic" / "alignrec"
    assert ar["tables"] == str(tables)
    assert Path(result.output_for_node("bpr_model")["folder"]).parent == Path(ar["folder"]).parent

    tags = MlflowClient(uri).get_model_version("alignrec-synthetic", ar["version"]).tags
    assert tags["dagster_run"] == result.run_id and tags["run_folder"] == ar["folder"]
    assert "dvc_stage" not in tags
    record = provenance.read(run_folder, "synthetic")
    assert set(record) == {"stage1_features", "bpr_model", "alignrec_model"}
    assert record["alignrec_model"]["dagster_run_id"] == result.run_id
    assert record["alignrec_model"]["version"] == ar["version"]
    assert record["alignrec_model"]["dvc_stage"] is None
    assert record["stage1_features"]["mlflow_run_id"] == stage1["mlflow_run_id"]


def _params(tmp_path: Path, seed: int) -> Path:
    params = yaml.safe_load((Path(__file__).resolve().parents[2] / "params.yaml").read_text())
    params.update(dataset="synthetic", artifacts="artifacts")
    params["stage1"]["fusion"].update({k: int(v) for k, v in TINY_STAGE1.items()})
    params["stage2"]["alignrec"]["sets"].update(epochs=2, patience=2)
    params["stage2"]["alignrec"]["seed"] = seed
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


@pytest.mark.slow
def test_a_dvc_stage_records_provenance_that_shows_a_run_cache_restore(tmp_path, monkeypatch):
    """A DVC stage writes dvc.yaml's outputs and a provenance record that matches Dagster, the
    MLflow run and the registry; files put back as DVC's run cache does are reported."""
    from mlflow.tracking import MlflowClient

    from orchestration.dvc_stage import main

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    params = _params(tmp_path, seed=0)
    for stage in (["data"], ["stage1"], ["stage2", "alignrec_model"]):
        assert main([*stage, "--params", str(params)]) == 0
    home = tmp_path / "artifacts"
    declared = _dvc_outs(home, "synthetic", ("data", "stage1", "stage2@alignrec"))
    assert [p for p in declared if not p.exists()] == []
    assert not (home / RUNS_DIR).exists()
    # the upstream values a stage loads are the DVC stages' own
    assert (tmp_path / "dagster" / "storage" / "dvc" / "stage1_features" / "synthetic").is_file()

    record = provenance.read(home, "synthetic")["alignrec_model"]
    with dg.DagsterInstance.get() as instance:
        [run] = instance.get_runs(filters=dg.RunsFilter(tags={DVC_STAGE_TAG: "stage2"}))
        assert record["dagster_run_id"] == run.run_id and record["dvc_stage"] == "stage2"
        client = MlflowClient(uri)
        version = client.get_model_version("alignrec-synthetic", record["version"])
        assert version.run_id == record["mlflow_run_id"] and record["version"] == "1"
        assert version.tags["dagster_run"] == run.run_id and version.tags["dvc_stage"] == "stage2"
        assert version.tags["run_folder"] == str(home / "runs" / "synthetic" / "alignrec")
        findings = provenance.check("synthetic", home, instance, uri)
        assert {f.asset for f in findings} == {"stage1_features", "alignrec_model"}
        assert all(f.agrees for f in findings), findings

        # seed 1 trains and registers v2; going back to seed 0, DVC restores seed 0's files
        # (and their provenance) from its run cache without any run: v1's files, v2 newest
        saved = tmp_path / "saved"
        shutil.copytree(home / "runs", saved / "runs")
        shutil.copytree(home / provenance.PROVENANCE_DIR, saved / provenance.PROVENANCE_DIR)
        assert main(["stage2", "alignrec_model", "--params", str(_params(tmp_path, seed=1))]) == 0
        assert provenance.read(home, "synthetic")["alignrec_model"]["version"] == "2"
        for sub in ("runs", provenance.PROVENANCE_DIR):
            shutil.rmtree(home / sub)
            shutil.copytree(saved / sub, home / sub)
        findings = {f.asset: f for f in provenance.check("synthetic", home, instance, uri)}
    assert findings["stage1_features"].agrees
    bad = findings["alignrec_model"]
    assert not bad.agrees
    assert "alignrec-synthetic v1's" in bad.text and "registered is v2" in bad.text
    assert "restored them from its run cache" in bad.text and "--no-run-cache" in bad.text
    metrics = json.loads((home / "runs" / "synthetic" / "alignrec" / "metrics.json").read_text())
    assert metrics["seed"] == 0  # the files are indeed the restored run's
    assert provenance.main(["--params", str(params)]) == 1
