"""The benchmark on a tiny in-memory dataset: the report, selection on validation only,
resuming from finished runs, and models skipped for lack of their inputs."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import alignrec.data
from alignrec import cli
from alignrec.benchmark import grids as grids_mod
from alignrec.benchmark import run_benchmark
from alignrec.benchmark import runner as runner_mod
from alignrec.benchmark.report import METRICS, key
from alignrec.benchmark.tracking import BenchmarkTracking
from alignrec.errors import ConfigError
from alignrec.models import BPR, MODELS
from alignrec.training import MemoryLogger
from alignrec.training import train as real_train
from tests.training.synth import clustered
from tests.training.test_grid import LockedTestDataset

FAST = {"epochs": 2, "batch_size": 64}
GRIDS = {"bpr": {"reg_weight": [1e-3, 1e-5]}, "alignrec": {"alpha": [0.01, 0.1]}}
# One registered multimodal baseline, when there is one, runs on the dataset's mm: tables.
MULTIMODAL = [m for m, cls in MODELS.items() if cls.uses_modalities][:1]
ASKED = ["bpr", "lightgcn", *MULTIMODAL, "alignrec"]
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("bench")
    return run_benchmark(
        clustered(0), ASKED, seeds=2, out=out, grids=GRIDS, progress=False, overrides=FAST
    )


def _records(result, model):
    return [
        json.loads((result.out / "runs" / model / f"s{s}" / "metrics.json").read_text())
        for s in range(2)
    ]


def test_report_files_are_written_and_agree_with_the_runs(bench):
    report = json.loads(bench.report_json.read_text())
    assert set(report["models"]) == set(ASKED) and report["skipped"] == {}
    for model in ASKED:
        summary, records = report["models"][model], _records(bench, model)
        for metric in METRICS:
            values = [r["test"][metric] for r in records]
            assert summary[f"{key(metric)}_per_seed"] == values
            assert summary[f"{key(metric)}_mean"] == pytest.approx(np.mean(values))
            assert summary[f"{key(metric)}_std"] == pytest.approx(np.std(values, ddof=1))
        assert summary["train_seconds_mean"] == pytest.approx(
            np.mean([r["train_seconds"] for r in records])
        )
        assert summary["epochs_run_per_seed"] == [2.0, 2.0]
        grid = bench.out / "runs" / model / "s0" / "grid.json"
        seed0 = (
            [row["train_seconds"] for row in json.loads(grid.read_text())]
            if grid.is_file()
            else [records[0]["train_seconds"]]
        )
        assert len(seed0) == (2 if model in GRIDS else 1) and all(s > 0 for s in seed0)
        assert summary["compute_seconds"] == pytest.approx(
            sum(seed0) + records[1]["train_seconds"]
        )
        if model != "alignrec":
            for test in ("wilcoxon", "ttest"):
                assert 0.0 <= summary[f"p_{test}_vs_alignrec"] <= 1.0
            assert summary["paired_users_vs_alignrec"] == 60
    for metric in METRICS:
        k = f"{key(metric)}_mean"
        best = max((m for m in ASKED if m != "alignrec"), key=lambda m: report["models"][m][k])
        assert report["best_baseline"][key(metric)] == best
        ref = report["models"][best][k]
        assert report["gain"][key(metric)] == pytest.approx(
            (report["models"]["alignrec"][k] - ref) / ref
        )
    # The protocol's patience, then the overrides, set every run and are stated in the report.
    assert report["settings"] == {"patience": 20, **FAST}
    assert (
        json.loads((bench.out / "runs/bpr/s1/config.json").read_text())["train"]["patience"] == 20
    )
    total = sum(report["models"][m]["compute_seconds"] for m in ASKED)
    assert report["compute_seconds"] == pytest.approx(total)
    md = bench.report_md.read_text()
    # every run trained on the fixture's one thread, as its stamp records
    assert report["threads"] == {"per_run": [1], "unrecorded": 0}
    compute = f"grid points included: {total / 3600:.2f} h (one torch thread per run)."
    assert compute in md
    assert compute in (bench.out / "table.md").read_text()  # the README's block states it too
    assert "| **alignrec** |" in md and "gain over the best baseline" in md
    r10 = report["models"]["alignrec"]["test_recall_at_10_mean"]
    assert f"| **alignrec** | {r10:.4f} ± " in md  # two seeds: mean ± std
    assert "`patience=20`" in md
    assert report["patience"] == 20
    assert "Early stopping: one patience for every model, 20 epochs" in md
    assert "the AlignRec release uses 30" in md
    assert "scipy.stats.wilcoxon" in md and "## Grid winners" in md
    for name in [*(f"{key(m)}.png" for m in METRICS), "valid_curves.png"]:
        assert (bench.plots / name).read_bytes()[:8] == PNG


def test_grid_winner_is_the_best_on_validation_and_is_retrained_on_other_seeds(bench):
    s0 = bench.out / "runs" / "bpr" / "s0"
    rows = json.loads((s0 / "grid.json").read_text())
    best = max(rows, key=lambda r: r["valid/recall@20"])
    assert best["winner"] and bench.models["bpr"].winner == best["point"]
    s1 = json.loads((bench.out / "runs" / "bpr" / "s1" / "config.json").read_text())
    assert s1["model"]["reg_weight"] == best["point"]["reg_weight"]
    assert not (bench.out / "runs" / "lightgcn" / "s0" / "grid.json").exists()  # no grid given


def test_selection_never_reads_test(monkeypatch, tmp_path):
    ds = clustered(1)
    locked = LockedTestDataset(
        ds.name,
        ds.n_users,
        ds.n_items,
        ds.interactions,
        ds.items,
        ds.users,
        ds.features,
        ds.meta,
        lock=[True],
    )
    real, scored = runner_mod.evaluate_test_once, []

    def score_after_selection(result, dataset, device="cpu"):
        locked.lock[0] = False  # the run is fixed: its test split may be read, once
        try:
            scored.append(result.model_name)
            return real(result, dataset, device)
        finally:
            locked.lock[0] = True

    monkeypatch.setattr(runner_mod, "evaluate_test_once", score_after_selection)
    result = run_benchmark(
        locked,
        ["bpr", "alignrec"],
        seeds=2,
        out=tmp_path,
        grids=GRIDS,
        progress=False,
        overrides=FAST,
    )
    assert sorted(scored) == ["alignrec", "alignrec", "bpr", "bpr"]  # once per run
    assert set(result.models) == {"bpr", "alignrec"}


def test_a_rerun_reuses_finished_runs_and_reruns_what_changed(bench, monkeypatch, tmp_path):
    out = tmp_path / "bench"
    shutil.copytree(bench.out, out)

    def no_training(*args, **kwargs):
        raise RuntimeError("retrained")

    monkeypatch.setattr(runner_mod, "train", no_training)
    monkeypatch.setattr(runner_mod, "grid_search", no_training)
    again = run_benchmark(
        clustered(0), ASKED, seeds=2, out=out, grids=GRIDS, progress=False, overrides=FAST
    )
    assert again.report["runs_reused"] == 2 * len(ASKED) and again.report["runs_trained"] == 0
    before = json.loads(bench.report_json.read_text())["models"]
    assert (
        again.report["models"]["bpr"]["test_recall_at_20_mean"]
        == before["bpr"]["test_recall_at_20_mean"]
    )
    # The compute of reused runs still counts; a grid run without its time on record does not.
    assert again.report["compute_seconds"] == pytest.approx(
        sum(m["compute_seconds"] for m in before.values())
    )
    # A run stamped before stamps held its threads is counted as such.
    stamp = out / "runs" / "lightgcn" / "s0" / runner_mod.STAMP
    stamp.write_text(json.dumps({**json.loads(stamp.read_text()), "threads": None}))
    older = run_benchmark(
        clustered(0), ASKED, seeds=2, out=out, grids=GRIDS, progress=False, overrides=FAST
    )
    assert older.report["threads"] == {"per_run": [1], "unrecorded": 1}
    assert (
        "h (one torch thread per run, where recorded: not for 1 run(s) stamped before it was)."
        in older.report_md.read_text()
    )
    grid = out / "runs" / "bpr" / "s0" / "grid.json"
    grid.write_text(json.dumps([{**r, "train_seconds": None} for r in json.loads(grid.read_text())]))
    unknown = run_benchmark(
        clustered(0), ASKED, seeds=2, out=out, grids=GRIDS, progress=False, overrides=FAST
    )
    assert unknown.report["compute_seconds"] is None
    assert unknown.report["models"]["bpr"]["compute_seconds"] is None
    assert "Training compute is not on record for bpr " in unknown.report_md.read_text()

    # A run killed before it finished (no stamp) is the only one trained again.
    (out / "runs" / "lightgcn" / "s1" / runner_mod.STAMP).unlink()
    calls = []
    monkeypatch.setattr(
        runner_mod, "train", lambda *a, **k: calls.append(a[0]) or real_train(*a, **k)
    )

    resumed = run_benchmark(
        clustered(0), ASKED, seeds=2, out=out, grids=GRIDS, progress=False, overrides=FAST
    )
    assert calls == ["lightgcn"] and resumed.report["runs_trained"] == 1

    # A changed grid (or config) reruns that model's seed 0.
    with pytest.raises(RuntimeError, match="retrained"):
        run_benchmark(
            clustered(0),
            ["bpr"],
            seeds=2,
            out=out,
            progress=False,
            overrides=FAST,
            grids={"bpr": {"reg_weight": [1e-2, 1e-3]}},
        )
    assert json.loads((out / "report.json").read_text())["runs_trained"] == 1  # report kept


def test_cached_only_reports_finished_runs_and_trains_nothing(bench, monkeypatch, tmp_path):
    out = tmp_path / "bench"
    shutil.copytree(bench.out, out)
    (out / "runs" / "lightgcn" / "s1" / runner_mod.STAMP).unlink()  # killed mid-run
    shutil.rmtree(out / "runs" / "bpr")  # never started

    def no_training(*args, **kwargs):
        raise RuntimeError("trained")

    monkeypatch.setattr(runner_mod, "train", no_training)
    monkeypatch.setattr(runner_mod, "grid_search", no_training)
    monkeypatch.setattr(alignrec.data, "load_dataset", lambda name: clustered(0))
    monkeypatch.setitem(grids_mod.PROFILES, "full", grids_mod.Profile("full", 2, GRIDS, "test"))
    args = ["benchmark", "--dataset", "tiny", "--models", ",".join(ASKED), "--profile", "full"]
    args += ["--out", str(out), "--set", "epochs=2", "--set", "batch_size=64", "--no-progress"]
    res = CliRunner().invoke(cli.app, [*args, "--cached-only"])
    assert res.exit_code == 0, res.output

    report = json.loads((out / "report.json").read_text())
    done = [m for m in ASKED if m not in ("bpr", "lightgcn")]
    assert sorted(report["models"]) == sorted(done)
    assert report["runs_trained"] == 0 and report["runs_reused"] == 2 * len(done)
    assert "1 of 2 runs finished" in report["skipped"]["lightgcn"]
    assert "0 of 2 runs finished" in report["skipped"]["bpr"]
    before = json.loads(bench.report_json.read_text())["models"]
    for m in done:
        assert report["models"][m]["test_recall_at_20_per_seed"] == (
            before[m]["test_recall_at_20_per_seed"]
        )
    assert "**lightgcn**: not trained yet" in (out / "report.md").read_text()
    assert "skipped lightgcn: not trained yet" in res.output
    # Without the flag the same call trains the missing runs.
    res = CliRunner().invoke(cli.app, args)
    assert isinstance(res.exception, RuntimeError) and "trained" in str(res.exception)


class FakeMultimodal(BPR):
    """Stands in for a multimodal baseline: only its flag matters here."""

    uses_modalities = True


def test_models_without_their_inputs_are_skipped_with_a_reason(monkeypatch, tmp_path):
    monkeypatch.setitem(MODELS, "fakemm", FakeMultimodal)
    bare = dataclasses.replace(clustered(2, modalities=False), features={})  # like amazon-baby
    result = run_benchmark(
        bare,
        ["bpr", "fakemm", "alignrec", "lightgcn"],
        seeds=1,
        out=tmp_path,
        progress=False,
        overrides=FAST,
        grids={},
        skip={"lightgcn": "not wanted here"},
    )
    assert list(result.models) == ["bpr"]
    assert "no item modalities" in result.skipped["fakemm"]
    assert "no item content" in result.skipped["alignrec"]
    assert result.skipped["lightgcn"] == "not wanted here"
    report = json.loads(result.report_json.read_text())
    assert report["skipped"] == result.skipped and "gain" not in report
    md = result.report_md.read_text()
    assert "## Skipped" in md and "**fakemm**: multimodal model" in md


def test_published_numbers_sit_beside_ours_on_amazon_baby(tmp_path):
    baby = dataclasses.replace(clustered(3, modalities=False), name="amazon-baby", features={})
    result = run_benchmark(
        baby,
        ["bpr", "vbpr" if "vbpr" in MODELS else "bpr"],
        seeds=1,
        out=tmp_path,
        progress=False,
        overrides=FAST,
        grids={},
    )
    md = result.report_md.read_text()
    assert "## Published MMRec numbers" in md and "| bpr | published (MMRec) | 0.0357" in md
    # One seed: each cell is the value alone, not a spread of ± 0.0000.
    r20 = result.report["models"]["bpr"]["test_recall_at_20_mean"]
    ours = next(line for line in md.splitlines() if line.startswith("| bpr | ours |"))
    assert f"| {r20:.4f} |" in ours and "±" not in ours
    assert "±" not in next(line for line in md.splitlines() if line.startswith("| bpr | 0."))
    assert result.report["published"]["bpr"]["test_recall_at_20"] == 0.0575
    # No AlignRec row: no p-value columns, no gain row.
    assert "p-values" not in md and "p Wilcoxon" not in md and "gain" not in result.report
    if "vbpr" in MODELS:
        assert "| vbpr | published (MMRec), different features |" in md
        assert "| vbpr | ours | skipped |" in md


def test_tracking_nests_training_runs_under_a_summary_run(tmp_path):
    made: list[tuple[str, str, dict, MemoryLogger]] = []

    def new_logger(experiment, run_name, tags):
        lg = MemoryLogger()
        lg.run_id, lg.closed = f"run{len(made)}", None
        lg.close = lambda status="FINISHED", lg=lg: setattr(lg, "closed", status)
        lg.log_artifacts = lambda folder, path=None, lg=lg: lg.artifacts.append(f"{path}/")
        made.append((experiment, run_name, tags, lg))
        return lg

    tracking = BenchmarkTracking("clustered", new_logger, {"dagster_run": "r1"})
    result = run_benchmark(
        clustered(0),
        ["bpr", "alignrec"],
        seeds=2,
        out=tmp_path,
        progress=False,
        overrides=FAST,
        grids={"bpr": GRIDS["bpr"]},
        logger_factory=tracking.logger_factory,
    )
    tracking.log_report(result)
    experiments = {e for e, *_ in made}
    assert experiments == {"benchmark-clustered"}
    summary = made[0][3]
    names = [n for _, n, _, _ in made[1:]]
    assert names == ["bpr-s0-g0", "bpr-s0-g1", "bpr-s1", "alignrec-s0", "alignrec-s1"]
    assert all(
        t["mlflow.parentRunId"] == "run0" and t["dagster_run"] == "r1" for _, _, t, _ in made[1:]
    )
    assert all(lg.closed == "FINISHED" for *_, lg in made)
    assert {a.rsplit("/", 1)[-1] for a in summary.artifacts} >= {"report.md", "report.json", ""}
    metrics = summary.metrics[0][1]
    assert (
        metrics["alignrec/test_recall_at_20_mean"]
        == result.report["models"]["alignrec"]["test_recall_at_20_mean"]
    )
    assert 0 <= metrics["bpr/p_wilcoxon_vs_alignrec"] <= 1


def test_cli_prints_the_table_and_writes_the_report(monkeypatch, tmp_path):
    ds = clustered(0)
    monkeypatch.setattr(alignrec.data, "load_dataset", lambda name: ds)
    full = grids_mod.Profile("full", 3, {"bpr": GRIDS["bpr"]}, "test")
    monkeypatch.setitem(grids_mod.PROFILES, "full", full)
    res = CliRunner().invoke(
        cli.app,
        [
            "benchmark",
            "--dataset",
            "tiny",
            "--profile",
            "full",
            "--models",
            "bpr,lightgcn",
            "--models",
            "alignrec",
            "--seeds",
            "2",
            "--out",
            str(tmp_path),
            "--set",
            "epochs=2",
            "--set",
            "batch_size=64",
            "--threads",
            "1",
            "--no-progress",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "| **alignrec** |" in res.output and "wrote " in res.output
    report = json.loads((tmp_path / "report.json").read_text())
    assert set(report["models"]) == {"bpr", "lightgcn", "alignrec"}
    assert report["models"]["bpr"]["grid_points"] == 2


def test_grid_changes_replace_keys_of_one_model_grid_and_are_checked():
    from alignrec.benchmark.grids import GRIDS as DEFAULT
    from alignrec.benchmark.grids import parse_grid_changes, with_grid_changes

    changes = parse_grid_changes(["lightgcn.n_layers=3", "LightGCN.dropout=0.1,0.2"])
    assert changes == {"lightgcn": {"n_layers": ["3"], "dropout": ["0.1", "0.2"]}}
    grids = with_grid_changes(changes)
    assert grids["lightgcn"] == {
        "n_layers": ["3"],
        "reg_weight": DEFAULT["lightgcn"]["reg_weight"],
        "dropout": ["0.1", "0.2"],
    }
    assert grids["bpr"] == DEFAULT["bpr"] and DEFAULT["lightgcn"]["n_layers"] == [2, 3]
    with pytest.raises(ConfigError, match="MODEL.KEY"):
        parse_grid_changes(["n_layers=3"])
    with pytest.raises(ConfigError, match="gru"):
        with_grid_changes({"gru": {"n_layers": [1]}})
    with pytest.raises(ConfigError, match="lightgcn.n_layers"):
        with_grid_changes({"lightgcn": {"n_layers": []}})


def test_cli_grid_option_pins_a_model_and_names_a_wrong_key(monkeypatch, tmp_path):
    ds = clustered(0)
    monkeypatch.setattr(alignrec.data, "load_dataset", lambda name: ds)
    args = ["benchmark", "--dataset", "tiny", "--models", "bpr", "--seeds", "1"]
    args += ["--out", str(tmp_path), "--set", "epochs=2", "--threads", "1", "--no-progress"]
    res = CliRunner().invoke(cli.app, [*args, "--grid", "bpr.reg_weight=0.001"])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["models"]["bpr"]["grid_points"] == 1
    stamp = json.loads((tmp_path / "runs" / "bpr" / "s0" / runner_mod.STAMP).read_text())
    assert [c["model"]["reg_weight"] for c in stamp["configs"]] == [0.001]
    md = (tmp_path / "report.md").read_text()
    assert "| bpr | none (pinned) | reg_weight=0.001 |" in md
    assert "Not searched, trained at the values given (`--grid`): bpr." in md

    res = CliRunner().invoke(cli.app, [*args, "--grid", "bpr.reg_weigth=0.1,0.01"])
    assert isinstance(res.exception, ConfigError) and "reg_weigth" in str(res.exception)
    assert report == json.loads((tmp_path / "report.json").read_text())  # nothing rewritten


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_a_missing_gpu_stops_the_benchmark_before_any_run(tmp_path):
    with pytest.raises(ConfigError, match="no CUDA GPU"):
        run_benchmark(clustered(0), ["bpr"], seeds=1, out=tmp_path, device="cuda", progress=False)
    assert not (tmp_path / "runs").exists()


def test_every_registered_model_has_a_small_grid_of_valid_configs():
    from alignrec.benchmark.grids import GRIDS
    from alignrec.training import grid_points, resolve_configs

    assert set(GRIDS) == set(MODELS)
    for model, grid in GRIDS.items():
        points = grid_points(grid)
        assert 2 <= len(points) <= 4, model
        for point in points:
            resolve_configs(model, point)


def test_a_run_stopped_by_a_signal_stops_the_benchmark_and_is_not_reused(monkeypatch, tmp_path):
    data = clustered(0)

    def signalled(*args, **kwargs):
        result = real_train(*args, **kwargs)
        return dataclasses.replace(result, stop_reason="signal")

    monkeypatch.setattr(runner_mod, "train", signalled)
    with pytest.raises(KeyboardInterrupt, match="bpr s0: stopped by a signal"):
        run_benchmark(
            data, ["bpr"], seeds=2, out=tmp_path, grids={}, progress=False, overrides=FAST
        )
    folder = tmp_path / "runs/bpr/s0"
    assert (folder / "metrics.json").is_file() and not (folder / runner_mod.STAMP).exists()
    assert not (tmp_path / "report.md").exists()
    monkeypatch.setattr(runner_mod, "train", real_train)
    again = run_benchmark(
        data, ["bpr"], seeds=2, out=tmp_path, grids={}, progress=False, overrides=FAST
    )
    assert again.models["bpr"].reused == [False, False]


def test_a_grid_search_stops_at_a_signal(monkeypatch):
    from alignrec.training import grid as grid_mod

    calls = []

    def signalled(*args, **kwargs):
        calls.append(args[2])
        return dataclasses.replace(real_train(*args, **kwargs), stop_reason="signal")

    monkeypatch.setattr(grid_mod, "train", signalled)
    g = grid_mod.grid_search("bpr", clustered(0), {"reg_weight": [1e-3, 1e-5]}, FAST)
    assert g.interrupted and len(calls) == 1 and g.valid_scores[0] is not None


def test_the_report_states_how_alignrecs_features_were_chosen(tmp_path):
    from alignrec.benchmark.report import _choice_line, read_choice

    features = tmp_path / "stage1" / "features.npy"
    features.parent.mkdir()
    features.write_bytes(b"")
    assert read_choice(str(features)) is None
    choice = {
        "chosen": "raw:text",
        "rule": "mean of validation Recall@20 under zero-shot and item-CF",
        "scores": [{"name": "stage1", "score": 0.1}, {"name": "raw:text", "score": 0.2}],
    }
    (features.parent / "choice.json").write_text(json.dumps(choice))
    assert read_choice(str(features)) == choice
    line = _choice_line(choice)
    assert "`raw:text`, chosen on validation" in line and "stage1 0.1000" in line
    assert read_choice("raw:concat") is None  # a named set has no record
    # `alignrec pretrain-features --out x.npy` keeps the choice in its summary x.json
    cli_out = tmp_path / "cli" / "x.npy"
    cli_out.parent.mkdir()
    cli_out.write_bytes(b"")
    (cli_out.parent / "x.json").write_text(json.dumps({"features": str(cli_out), "stage2_choice": None}))
    assert read_choice(str(cli_out)) is None  # --no-select: no choice was made
    (cli_out.parent / "x.json").write_text(json.dumps({"features": str(cli_out), "stage2_choice": choice}))
    assert read_choice(str(cli_out)) == choice


def test_a_run_made_by_other_code_is_retrained_and_reported_as_such(bench, monkeypatch, tmp_path):
    out = tmp_path / "bench"
    shutil.copytree(bench.out, out)
    monkeypatch.setattr(runner_mod, "model_code_digest", lambda model: f"changed-{model}")

    def no_training(*args, **kwargs):
        raise RuntimeError("retrained")

    monkeypatch.setattr(runner_mod, "train", no_training)
    monkeypatch.setattr(runner_mod, "grid_search", no_training)
    args = dict(seeds=2, out=out, grids=GRIDS, progress=False, overrides=FAST)
    # --cached-only reports the runs, naming every one as made by other code ...
    stale = run_benchmark(clustered(0), ["bpr"], cached_only=True, **args)
    assert stale.report["stale_runs"] == ["bpr s0", "bpr s1"]
    assert stale.report["models"]["bpr"]["test_recall_at_20_per_seed"] == (
        bench.report["models"]["bpr"]["test_recall_at_20_per_seed"]
    )
    assert "Made by other code" in (out / "table.md").read_text()
    # trained nothing: the report says so and keeps no wall time
    assert "Rebuilt from the stored runs" in (out / "report.md").read_text()
    assert stale.report["wall_seconds"] == 0.0
    # ... and a benchmark that may train retrains them
    with pytest.raises(RuntimeError, match="retrained"):
        run_benchmark(clustered(0), ["bpr"], **args)


def test_cached_only_without_a_dataset_rebuilds_every_report_from_the_runs(
    bench, monkeypatch, tmp_path
):
    root = tmp_path / "results"
    out = root / "tiny" / "full"
    shutil.copytree(bench.out, out)
    for f in ("report.json", "report.md", "table.md"):
        (out / f).unlink()
    (out / "runs" / "vbpr" / "s1" / runner_mod.STAMP).unlink()  # an unfinished run

    def fail(*args, **kwargs):
        raise RuntimeError("read data or trained")

    monkeypatch.setattr(alignrec.data, "load_dataset", fail)
    monkeypatch.setattr(runner_mod, "train", fail)
    res = CliRunner().invoke(cli.app, ["benchmark", "--cached-only", "--out", str(root)])
    assert res.exit_code == 0, res.output
    report = json.loads((out / "report.json").read_text())
    before = bench.report["models"]
    assert sorted(report["models"]) == sorted(m for m in before if m != "vbpr")
    assert "1 of 2 runs finished" in report["skipped"]["vbpr"]
    for m in report["models"]:
        for k in ("test_recall_at_20_per_seed", "p_wilcoxon_vs_alignrec", "winner"):
            assert report["models"][m].get(k) == before[m].get(k), (m, k)
    assert report["stale_runs"] == []
    table = (out / "table.md").read_text()
    assert table.startswith("# Benchmark on") and "| alignrec" in table.replace("**", "")
    # no wall time of its own: the report says it was rebuilt, not that it took 0 s
    md = (out / "report.md").read_text()
    assert "Rebuilt from the stored runs" in md and "Wall time" not in md
    assert "Wall time" in (bench.out / "report.md").read_text()

    missing = CliRunner().invoke(cli.app, ["benchmark", "--cached-only", "--out", str(tmp_path / "x")])
    assert missing.exit_code != 0 and "no benchmark reports" in str(missing.exception or missing.output)
    no_dataset = CliRunner().invoke(cli.app, ["benchmark"])
    assert no_dataset.exit_code != 0


def test_the_table_names_the_profile_and_seeds_that_differ_from_it(tmp_path):
    torch.set_num_threads(1)
    quick = run_benchmark(
        clustered(0), ["bpr"], seeds=2, out=tmp_path / "q", profile="quick", progress=False,
        overrides=FAST,
    )
    assert quick.profile == "quick"
    assert "`alignrec benchmark --dataset clustered --profile quick --seeds 2`" in (
        quick.out / "table.md"
    ).read_text()
    from alignrec.benchmark.report import rebuild

    pinned = grids_mod.get_profile("quick").grids["bpr"]
    assert quick.models["bpr"].winner == {k: v[0] for k, v in pinned.items()}
    assert rebuild(quick.out).report["models"]["bpr"]["winner"] == quick.models["bpr"].winner
    custom = run_benchmark(
        clustered(0), ["bpr"], seeds=1, out=tmp_path / "c", grids={"bpr": GRIDS["bpr"]},
        profile="quick", progress=False, overrides=FAST,
    )
    assert custom.profile is None and "(custom settings)" in (custom.out / "table.md").read_text()


def test_a_rebuild_keeps_the_feature_choice_without_the_features_file(bench, tmp_path):
    from alignrec.benchmark.report import rebuild

    choice = {"chosen": "stage1:centre=0.5", "rule": "r", "scores": [{"name": "stage1", "score": 0.3}]}
    out = tmp_path / "b"
    shutil.copytree(bench.out, out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert "features_choice" in manifest  # the benchmark keeps it beside the runs
    manifest["features_choice"] = choice
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert rebuild(out).report["alignrec_features_choice"] == choice
    assert "They are `stage1:centre=0.5`" in (out / "table.md").read_text()
    # a manifest written before it kept the choice: the earlier report's choice stays
    del manifest["features_choice"]
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert rebuild(out).report["alignrec_features_choice"] == choice


def test_finished_runs_of_another_folder_are_copied_not_retrained(bench, monkeypatch, tmp_path):
    """``reuse_from`` (the DVC stage's: the repository's results/): a run finished there under
    the same key is copied into ``out``; a run under another key is trained."""

    def fail(*args, **kwargs):
        raise RuntimeError("trained")

    monkeypatch.setattr(runner_mod, "train", fail)
    monkeypatch.setattr(runner_mod, "grid_search", fail)
    out = tmp_path / "dvc"
    copied = run_benchmark(
        clustered(0), ["bpr", "alignrec"], seeds=2, out=out, grids=GRIDS, progress=False,
        overrides=FAST, reuse_from=bench.out,
    )
    for m in ("bpr", "alignrec"):
        assert all(copied.models[m].reused)
        for s in range(2):
            run = out / "runs" / m / f"s{s}"
            assert (run / runner_mod.STAMP).read_bytes() == (
                bench.out / "runs" / m / f"s{s}" / runner_mod.STAMP
            ).read_bytes()
            assert (run / "per_user.npz").is_file()
    assert not list(out.glob("runs/*/.*copying"))
    assert copied.report["models"]["bpr"]["test_recall_at_20_per_seed"] == (
        bench.report["models"]["bpr"]["test_recall_at_20_per_seed"]
    )
    with pytest.raises(RuntimeError, match="trained"):  # another key: not taken from there
        run_benchmark(
            clustered(0), ["bpr"], seeds=1, out=tmp_path / "other", grids=GRIDS, progress=False,
            overrides={**FAST, "epochs": 3}, reuse_from=bench.out,
        )


def test_the_report_adds_the_seeds_every_model_has_finished(bench, monkeypatch, tmp_path):
    """``finished_seeds`` (the profile's seeds): a one-seed call in a folder holding two seeds
    reports both, training nothing; a model missing the later seed stops the extension."""
    import shutil

    def fail(*args, **kwargs):
        raise RuntimeError("trained")

    monkeypatch.setattr(runner_mod, "train", fail)
    monkeypatch.setattr(runner_mod, "grid_search", fail)
    out = tmp_path / "b"
    shutil.copytree(bench.out, out)
    kw = dict(grids=GRIDS, progress=False, overrides=FAST, out=out)
    one = run_benchmark(clustered(0), ["bpr", "alignrec"], seeds=1, **kw)
    assert one.seeds == 1 and len(one.models["bpr"].records) == 1
    both = run_benchmark(clustered(0), ["bpr", "alignrec"], seeds=1, finished_seeds=True, **kw)
    assert both.seeds == 2
    for m in ("bpr", "alignrec"):
        assert both.models[m].records == _records(bench, m)
        assert both.models[m].reused == [True, True]
    assert both.report["models"]["bpr"]["test_recall_at_20_per_seed"] == (
        bench.report["models"]["bpr"]["test_recall_at_20_per_seed"]
    )
    import tqdm.auto

    bars = []

    class Bar(tqdm.auto.tqdm):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            bars.append(self)

    monkeypatch.setattr(tqdm.auto, "tqdm", Bar)
    run_benchmark(clustered(0), ["bpr", "alignrec"], seeds=1, finished_seeds=True,
                  **{**kw, "progress": True})
    assert (bars[-1].n, bars[-1].total) == (4, 4)  # the bar counts the seeds the folder adds
    (out / "runs" / "alignrec" / "s1" / runner_mod.STAMP).unlink()
    partial = run_benchmark(clustered(0), ["bpr", "alignrec"], seeds=1, finished_seeds=True, **kw)
    assert partial.seeds == 1
    assert [len(partial.models[m].records) for m in ("bpr", "alignrec")] == [1, 1]


def test_a_rebuild_writes_the_table_the_benchmark_wrote(tmp_path):
    """Skipped models keep the order they were asked in (the manifest's keys are sorted)."""
    from alignrec.benchmark.report import rebuild

    out = tmp_path / "b"
    run_benchmark(
        clustered(0), ["vbpr", "lightgcn", "bpr"], seeds=1, out=out, grids=GRIDS,
        progress=False, overrides=FAST, cached_only=True,
    )
    table = (out / "table.md").read_text()
    line = next(x for x in table.splitlines() if x.startswith("Skipped:"))
    assert line.index("vbpr (") < line.index("lightgcn (") < line.index(" bpr (")
    rebuild(out)
    assert (out / "table.md").read_text() == table


def test_a_benchmark_of_some_models_adds_them_to_the_folders_report(monkeypatch, tmp_path):
    monkeypatch.setattr(alignrec.data, "load_dataset", lambda name: clustered(0))
    pinned = {"bpr": {"reg_weight": [1e-3]}, "lightgcn": {"n_layers": [1]}}
    monkeypatch.setitem(grids_mod.PROFILES, "quick", grids_mod.Profile("quick", 1, pinned, "test"))
    args = ["benchmark", "--dataset", "tiny", "--profile", "quick", "--out", str(tmp_path)]
    args += ["--set", "epochs=2", "--set", "batch_size=64", "--threads", "1", "--no-progress"]

    def report():
        return json.loads((tmp_path / "report.json").read_text())

    res = CliRunner().invoke(cli.app, [*args, "--models", "bpr"])
    assert res.exit_code == 0, res.output
    assert set(report()["models"]) == {"bpr"}
    res = CliRunner().invoke(cli.app, [*args, "--models", "bpr,lightgcn", "--cached-only"])
    assert res.exit_code == 0, res.output
    assert report()["skipped"]["lightgcn"].startswith("not trained yet: 0 of 1")
    bpr = report()["models"]["bpr"]

    # Training LightGCN alone adds it to the report, which keeps BPR.
    res = CliRunner().invoke(cli.app, [*args, "--models", "lightgcn"])
    assert res.exit_code == 0, res.output
    assert set(report()["models"]) == {"bpr", "lightgcn"} and report()["skipped"] == {}
    assert report()["models"]["bpr"] == bpr and "| lightgcn |" in res.output
    # LightGCN's run was trained by this call, BPR's reused, and the report says so
    assert (report()["runs_trained"], report()["runs_reused"]) == (1, 1)
    assert "Wall time " in (tmp_path / "report.md").read_text()
    # A run at other settings is not mixed into that report: its own replaces it.
    res = CliRunner().invoke(cli.app, [*args, "--models", "bpr", "--set", "patience=1"])
    assert res.exit_code == 0, res.output
    assert set(report()["models"]) == {"bpr"} and report()["settings"]["patience"] == 1


def test_p_values_below_a_double_are_shown_as_a_bound_not_as_zero():
    from alignrec.benchmark.report import _p

    assert _p(0.0) == "< 1e-300"  # scipy's value once the p-value underflows
    assert _p(4.03e-248) == "4.03e-248"
    assert _p(0.5) == "0.500"
    assert _p(None) == "-"
