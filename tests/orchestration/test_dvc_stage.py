"""The DVC pipeline: params.yaml maps onto the assets' run config, every asset has exactly one
stage, dvc.yaml agrees with both, and a stage materializes its assets on synthetic data."""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path

import dagster as dg
import pytest
import yaml

from alignrec.errors import ConfigError
from orchestration.definitions import defs
from orchestration.dvc_stage import (
    COMMON,
    STAGES,
    SUMMARY_FILE,
    load_params,
    main,
    op_configs,
    stage_asset_keys,
    summary_sources,
    write_summaries,
)

ROOT = Path(__file__).resolve().parents[2]
PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())
DVC_YAML = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
CMD = re.compile(r"^python -m orchestration\.dvc_stage (\w+)(?: (\S+))?$")


def test_params_become_run_config_the_assets_accept():
    params = load_params(ROOT / "params.yaml")
    ops = {op: cfg for stage in STAGES for op, cfg in op_configs(stage, params).items()}
    assert ops["stage1_features"]["config"]["overrides"]["epochs"] == str(
        PARAMS["stage1"]["fusion"]["epochs"]
    )
    assert ops["alignrec_model"]["config"]["features"] == "stage1"
    assert ops["bpr_model"]["config"]["sets"]["patience"] == str(
        PARAMS["stage2"]["bpr"]["sets"]["patience"]
    )
    assert set(ops) == {
        "stage1_features",
        "bpr_model",
        "lightgcn_model",
        "alignrec_model",
        "benchmark",
    }
    job = defs.resolve_implicit_global_asset_job_def()
    dg.validate_run_config(job, {"ops": ops})  # raises on a key or type the assets refuse


def test_params_yaml_survives_dvc_set_param_unchanged(tmp_path):
    """`dvc exp run -S` loads params.yaml with ruamel and dumps it back: a flow mapping past the
    line width would come back rewrapped, with trailing spaces."""
    from dvc.utils.hydra import apply_overrides
    from dvc.utils.serialize._yaml import dumps_yaml, parse_yaml_for_update

    text = (ROOT / "params.yaml").read_text()
    assert dumps_yaml(parse_yaml_for_update(text, "params.yaml")) == text
    path = tmp_path / "params.yaml"
    path.write_text(text)
    apply_overrides(str(path), ["stage2.alignrec.seed=1", "stage2.lightgcn.sets.n_layers=3"])
    after = path.read_text().splitlines()
    before = text.splitlines()
    assert len(after) == len(before)
    assert [(a, b) for a, b in zip(before, after, strict=True) if a != b] == [
        ("      n_layers: 2", "      n_layers: 3"),
        ("    seed: 0", "    seed: 1"),
    ]


def test_benchmark_grids_in_params_reach_the_asset_config(tmp_path):
    path = _write(tmp_path, _set("benchmark.grids", {"lightgcn": {"n_layers": [3], "reg_weight": [1e-3]}}))
    ops = op_configs("benchmark", load_params(path))
    assert ops["benchmark"]["config"]["grids"] == {
        "lightgcn": {"n_layers": ["3"], "reg_weight": ["0.001"]}
    }
    dg.validate_run_config(defs.resolve_implicit_global_asset_job_def(), {"ops": ops})
    ops = op_configs("benchmark", load_params(_write(tmp_path, _set("benchmark.cached_only", True))))
    assert ops["benchmark"]["config"]["cached_only"] is True
    dg.validate_run_config(defs.resolve_implicit_global_asset_job_def(), {"ops": ops})


def _write(tmp_path: Path, edit) -> Path:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    edit(params)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def _set(dotted: str, value):
    def edit(params):
        *parents, last = dotted.split(".")
        node = params
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value

    return edit


@pytest.mark.parametrize(
    ("stage", "edit", "named"),
    [
        ("data", _set("stage3", {}), "stage3"),
        ("data", _set("dataset", "no-such-data"), "no-such-data"),
        ("stage1", _set("stage1.fusion.epoch", 3), "stage1.fusion.epoch"),
        ("stage1", _set("stage1.fusion.epochs", "many"), "stage1.fusion.epochs"),
        ("stage1", _set("stage1.fusion.num_layers", 0), "num_layers"),
        ("stage2", _set("stage2.alignrec.seed", "one"), "stage2.alignrec.seed"),
        ("stage2", _set("stage2.alignrec.sets.patiense", 5), "patiense"),
        ("stage2", _set("stage2.lightgcn.grid.n_layers", [1, "two"]), "n_layers"),
        ("stage2", _set("stage2.bpr.features", "stage1"), "stage2.bpr.features"),
        ("stage2", _set("stage2.gru", {"seed": 0}), "stage2.gru"),
        ("benchmark", _set("benchmark.models", ["bpr", "gru"]), "gru"),
        ("benchmark", _set("benchmark.seeds", -1), "benchmark.seeds"),  # 0: the profile's
        ("benchmark", _set("benchmark.profile", "fastest"), "'fastest'"),
        ("benchmark", _set("benchmark.sets.epoch", 5), "epoch"),
        ("benchmark", _set("benchmark.grids.lightgcn.n_layer", [2]), "n_layer"),
        ("benchmark", _set("benchmark.grids.lightgcn.n_layers", []), "lightgcn.n_layers"),
        ("benchmark", _set("benchmark.grids.gru", {"n_layers": [1]}), "gru"),
        ("benchmark", _set("benchmark.cached_only", "yes"), "benchmark.cached_only"),
    ],
)
def test_a_wrong_param_is_a_config_error_naming_it(tmp_path, stage, edit, named):
    with pytest.raises(ConfigError, match=re.escape(named)):
        op_configs(stage, load_params(_write(tmp_path, edit)))


def test_an_unknown_dataset_says_how_to_make_it_a_partition(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_params(_write(tmp_path, _set("dataset", "my-shop")))
    message = str(info.value)
    assert "key 'dataset': unknown dataset 'my-shop'" in message
    assert "ALIGNREC_DATASETS" in message and "code location" in message


def test_every_asset_belongs_to_exactly_one_stage():
    stages_of = {
        key: [s for s in STAGES if key in stage_asset_keys(defs, s)]
        for key in defs.resolve_all_asset_keys()
    }
    assert {k.to_user_string(): v for k, v in stages_of.items() if len(v) != 1} == {}
    assert all(stage_asset_keys(defs, s) for s in STAGES), "a stage without assets"


def _expand(name: str, stage: dict) -> list[tuple[str, dict, dict]]:
    """``(name, stage, item)`` per generated stage: a ``matrix`` stage gives one per combination."""
    matrix = stage.get("matrix")
    if not matrix:
        return [(name, stage, {})]
    keys = list(matrix)
    return [
        (f"{name}@{'-'.join(map(str, combo))}", stage, dict(zip(keys, combo, strict=True)))
        for combo in itertools.product(*(matrix[k] for k in keys))
    ]


def _lookup(tree: dict, dotted: str):
    node = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(dotted)
        node = node[part]
    return node


def _render(text: str, item: dict) -> str:
    def value(m):
        key = m.group(1)
        return str(
            _lookup({"item": item}, key) if key.startswith("item.") else _lookup(PARAMS, key)
        )

    return re.sub(r"\$\{([^}]+)\}", value, text)


def _paths(entries) -> list[str]:
    return [next(iter(e)) if isinstance(e, dict) else e for e in entries or []]


GENERATED = [g for name, stage in DVC_YAML.items() for g in _expand(name, stage)]


def test_dvc_yaml_runs_every_stage_with_its_own_params():
    seen = set()
    for name, stage, item in GENERATED:
        m = CMD.match(_render(stage["cmd"], item))
        assert m, f"{name}: cmd {stage['cmd']!r} does not run orchestration.dvc_stage"
        seen.add(m.group(1))
        params = [_render(p, item) for p in stage.get("params", [])]
        for key in params:
            _lookup(PARAMS, key)  # KeyError: dvc.yaml names a param params.yaml lacks
        sections = STAGES[m.group(1)].sections
        assert set(COMMON) <= set(params), name
        assert {p.split(".")[0] for p in params} == {*COMMON, *sections}, name
        if m.group(2):
            assert m.group(2) in {k.to_user_string() for k in stage_asset_keys(defs, m.group(1))}
    assert seen == set(STAGES)


def test_dvc_yaml_outputs_do_not_overlap_and_deps_exist():
    outs, deps = [], []
    for name, stage, item in GENERATED:
        for field in ("outs", "metrics", "plots"):
            outs += [(Path(_render(p, item)), name) for p in _paths(stage.get(field))]
        deps += [(Path(_render(p, item)), name) for p in _paths(stage.get("deps"))]
    for (a, sa), (b, sb) in itertools.combinations(outs, 2):
        assert a != b and a not in b.parents and b not in a.parents, f"{sa}: {a} overlaps {sb}: {b}"
    artifacts = Path(PARAMS["artifacts"])
    for path, name in outs:
        assert artifacts in path.parents, f"{name}: {path} is outside params 'artifacts'"
    produced = {p for p, _ in outs}
    pulled = {
        Path(o["path"])
        for f in ROOT.glob("*.dvc")
        if f.is_file()
        for o in yaml.safe_load(f.read_text())["outs"]
    }
    for path, name in deps:
        if artifacts in path.parents:
            assert path in produced, f"{name}: {path} is no stage's output"
        else:
            assert path in pulled or (ROOT / path).exists(), (
                f"{name}: dependency {path} does not exist"
            )


def test_dvc_metrics_are_the_compact_summaries_the_stages_write():
    from alignrec.paths import artifacts_root

    artifacts = Path(PARAMS["artifacts"])
    declared = 0
    for name, stage, item in GENERATED:
        metrics = [Path(_render(p, item)) for p in _paths(stage.get("metrics"))]
        if not metrics:
            continue
        m = CMD.match(_render(stage["cmd"], item))
        assets = [m.group(2)] if m.group(2) else [
            k.to_user_string() for k in stage_asset_keys(defs, m.group(1))
        ]
        sources = summary_sources(m.group(1), PARAMS["dataset"], assets)
        summaries = [source.with_name(SUMMARY_FILE).relative_to(artifacts_root()) for source, _ in sources]
        assert sorted(p.relative_to(artifacts) for p in metrics) == sorted(summaries), name
        outs = {Path(_render(p, item)) for p in _paths(stage.get("outs"))}
        for source, _ in sources:  # the full results stay tracked, as outputs
            assert artifacts / source.relative_to(artifacts_root()) in outs, name
        declared += len(metrics)
    assert declared == 4  # stage2@bpr, @lightgcn, @alignrec and the benchmark


def test_summaries_hold_only_the_headline_figures():
    from alignrec.paths import artifacts_root
    from orchestration.assets.training import run_dir

    bench = artifacts_root() / "benchmark" / "tiny"  # the DVC stage's benchmark folder

    figures = {f"{m}@{k}": 0.1 for m in ("recall", "ndcg", "precision", "map", "hit") for k in (5, 10, 20, 50)}
    run = run_dir("tiny", "bpr")
    run.mkdir(parents=True)
    (run / "metrics.json").write_text(json.dumps({"model": "bpr", "seed": 0, "best_epoch": 3,
                                                  "valid": figures, "test": figures}))
    models = {m: {"test_recall_at_20_mean": 0.3, "test_recall_at_20_std": 0.01,
                  "test_recall_at_20_per_seed": [0.3, 0.3], "p_wilcoxon_vs_alignrec": 0.5}
              for m in ("bpr", "lightgcn", "alignrec")}
    bench.mkdir(parents=True)
    (bench / "report.json").write_text(json.dumps({"models": models, "gain": {}}))

    assert write_summaries("stage2", "tiny", ["bpr_model", "lightgcn_model"]) == [run / SUMMARY_FILE]
    head = {"recall@20": 0.1, "ndcg@20": 0.1}
    assert json.loads((run / SUMMARY_FILE).read_text()) == {"valid": head, "test": head}
    assert write_summaries("benchmark", "tiny", ["benchmark"]) == [bench / SUMMARY_FILE]
    summary = json.loads((bench / SUMMARY_FILE).read_text())
    assert summary == {"R@20": {"bpr": 0.3, "lightgcn": 0.3, "alignrec": 0.3}}
    assert write_summaries("data", "tiny", ["dataset", "raw_data"]) == []


@pytest.mark.slow
def test_data_stage_materializes_on_synthetic(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    params = _write(tmp_path, lambda p: p.update(dataset="synthetic", artifacts="artifacts"))
    assert main(["data", "--params", str(params)]) == 0
    assert (tmp_path / "artifacts" / "datasets" / "synthetic" / "tables").is_dir()
    assert "materialized dataset, raw_data" in capsys.readouterr().out
    with dg.DagsterInstance.get() as instance:  # the run is in the persistent instance
        runs = instance.get_runs(filters=dg.RunsFilter(tags={"alignrec/dvc_stage": "data"}))
    assert len(runs) == 1 and runs[0].is_success
    # a downstream stage loads the stored upstream values and fails clearly without them
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "empty"))
    assert main(["protocols", "--params", str(params)]) == 1
    err = capsys.readouterr().err
    assert "stored value is missing" in err and "dataset/synthetic" in err


def _make_repro(*args: str, env: dict[str, str] | None = None, dry: bool = True):
    """``make repro`` in the project, without its set-up and ``dvc pull`` prerequisites."""
    import os
    import subprocess

    # Under `make test` the parent make's MAKELEVEL/MAKEFLAGS would make this one print
    # "Entering/Leaving directory" lines around its commands.
    drop = {"DATASET", "MAKELEVEL", "MAKEFLAGS", "MFLAGS"}
    full_env = {k: v for k, v in os.environ.items() if k not in drop}
    return subprocess.run(
        ["make", "--no-print-directory", *(["-n"] if dry else []), "-o", ".venv/bin/.installed",
         "-o", "data", "repro", *args],
        cwd=ROOT, env={**full_env, **(env or {})}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_make_repro_honours_dataset_like_make_pipeline():
    """`make repro DATASET=x` used to run plain `dvc repro` on params.yaml's dataset, ignoring
    x; it now sets params.yaml's dataset to x through `dvc exp run -S` (after checking x)."""
    for res in (
        _make_repro("DATASET=synthetic"),
        _make_repro(env={"DATASET": "synthetic"}),
    ):
        assert res.returncode == 0, res.stderr
        lines = res.stdout.splitlines()
        assert lines[-2].endswith("python -m orchestration.repro_dataset 'synthetic'")
        assert lines[-1].endswith(".venv/bin/dvc exp run -S 'dataset=synthetic'")
    plain = _make_repro()
    assert plain.returncode == 0 and plain.stdout.splitlines()[-1].endswith(".venv/bin/dvc repro")
    assert "exp run" not in plain.stdout


@pytest.mark.parametrize(
    "name, reason",
    [("my-shop", "unknown dataset 'my-shop'"),
     ("amazon-baby", "'amazon-baby' has no item content")],
)  # fmt: skip
def test_make_repro_refuses_a_dataset_it_cannot_build_before_touching_params(name, reason):
    before = (ROOT / "params.yaml").read_bytes()
    res = _make_repro(f"DATASET={name}", dry=False)
    assert res.returncode != 0 and reason in res.stderr, res.stderr
    assert "dvc exp run" not in res.stdout + res.stderr
    assert (ROOT / "params.yaml").read_bytes() == before


def test_setting_the_dataset_changes_only_that_line_of_params(tmp_path):
    """What `dvc exp run -S dataset=NAME` (make repro DATASET=NAME) does to params.yaml."""
    from dvc.utils.hydra import apply_overrides

    text = (ROOT / "params.yaml").read_text()
    path = tmp_path / "params.yaml"
    path.write_text(text)
    apply_overrides(str(path), ["dataset=lastfm-2k"])
    changed = [
        (a, b)
        for a, b in zip(text.splitlines(), path.read_text().splitlines(), strict=True)
        if a != b
    ]
    assert len(changed) == 1 and changed[0][1].startswith("dataset: lastfm-2k")
    assert load_params(path)["dataset"] == "lastfm-2k"
