"""``alignrec bench-speed``: the epoch's parts, the all-models profile and its files (tiny data)."""

from __future__ import annotations

import json
import sys
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from alignrec import cli
from alignrec.commands.bench import PART_COLUMNS, add_ratios, bench_speed, part_seconds

TINY = "synthetic:tiny"


def test_parts_of_a_labelled_model_are_present_and_non_negative():
    r = bench_speed("lightgcn", TINY, epochs=1, evals=1, threads=1, profile_batches=2)
    parts = r["parts_seconds"]
    assert set(parts) == set(PART_COLUMNS)
    assert all(v >= 0 for v in parts.values()), parts
    # LightGCN labels its propagation and its loss; backward and the step are always timed
    for name in ("graph", "loss", "backward", "optimiser"):
        assert parts[name] > 0, (name, parts)
    assert parts["content"] == 0  # LightGCN has no content branch
    assert sum(parts.values()) == pytest.approx(r["epoch_seconds"])
    assert r["eval_seconds"] > 0 and r["peak_rss_mib"] > 0


def test_batches_times_the_first_batches_and_scales_to_the_epoch():
    # 1,200 interactions: about 870 train pairs; batches of 100 make 9 per epoch
    r = bench_speed(
        "bpr",
        TINY,
        epochs=1,
        evals=0,
        threads=1,
        batches=2,
        profile_batches=0,
        sets=["batch_size=100"],
    )
    assert r["batches_timed"] == 2
    assert r["batches_per_epoch"] == -(-r["train_pairs"] // 100)
    assert r["parts_seconds"] == {}  # no profile asked for
    assert len(r["epoch_seconds_all"]) == 2  # a warm-up and the timed epoch
    assert len(r["eval_seconds_all"]) == 0


def test_a_first_step_of_per_epoch_work_counts_once_not_scaled(monkeypatch):
    """A model that does once-per-epoch work in its first step (LATTICE rebuilds its graphs
    there): scaling that step with the others would count the work once per batch."""
    import time as _time

    from alignrec.models.bpr import BPR

    pause, state = 0.3, {"fresh": False}
    on_epoch_start, loss = BPR.on_epoch_start, BPR.loss

    def start(self, epoch):
        state["fresh"] = True
        return on_epoch_start(self, epoch)

    def slow_first(self, users, pos, neg):
        if state["fresh"]:
            state["fresh"] = False
            _time.sleep(pause)
        return loss(self, users, pos, neg)

    monkeypatch.setattr(BPR, "on_epoch_start", start)
    monkeypatch.setattr(BPR, "loss", slow_first)
    kw = dict(epochs=1, evals=0, threads=1, sets=["batch_size=100"], warmup=False)
    r = bench_speed("bpr", TINY, batches=3, profile_batches=3, same_process_rounds=2, **kw)
    assert r["batches_per_epoch"] >= 8
    # the pause once, plus 8 or more fast steps; scaled with the other two timed steps it
    # would count 3 times or more
    assert pause <= r["epoch_seconds"] < 2 * pause, r["epoch_seconds_all"]
    # the profile weights the first step once as well: the unlabelled pause is "other"
    assert r["parts_seconds"]["other"] == pytest.approx(pause, rel=0.5)
    # the same-process epoch keeps it too: the rounds time steps past an epoch's first, and
    # what the epoch adds once comes from the timing above
    same = r["same_process"]
    assert pause <= same["epoch_once_seconds"] < 2 * pause
    n = r["batches_per_epoch"]
    assert same["model_epoch_seconds"] >= same["model_step_seconds"] * n + pause
    assert same["reference_epoch_seconds"] < same["reference_step_seconds"] * n + pause


def test_without_warmup_every_epoch_and_validation_is_timed():
    r = bench_speed("bpr", TINY, epochs=1, evals=1, threads=1, profile_batches=0, warmup=False)
    assert len(r["epoch_seconds_all"]) == 1 and len(r["eval_seconds_all"]) == 1
    assert r["epoch_seconds"] == r["epoch_seconds_all"][0]


def _event(name: str, start: float, end: float) -> SimpleNamespace:
    return SimpleNamespace(name=name, time_range=SimpleNamespace(start=start, end=end))


def test_part_seconds_counts_a_nested_label_in_the_inner_one_only():
    events = [
        _event("bench:step", 0, 100),
        _event("part:graph", 0, 50),
        _event("part:content", 10, 30),  # inside graph
        _event("aten::mm", 12, 20),  # operators are not parts
        _event("part:backward", 60, 90),
        _event("bench:step", 200, 260),
        _event("part:loss", 200, 210),
    ]
    parts, total = part_seconds(events)
    assert total == pytest.approx(160e-6)
    assert parts == pytest.approx(
        {"graph": 30e-6, "content": 20e-6, "backward": 30e-6, "loss": 10e-6}
    )


def test_all_models_mode_writes_the_profile_and_lists_models_that_cannot_run(tmp_path):
    out = tmp_path / "speed"
    # without item features: VBPR (multimodal) cannot run and is listed with the reason
    res = CliRunner().invoke(
        cli.app,
        [
            "bench-speed",
            "--models",
            "bpr,vbpr,lightgcn",
            "--dataset",
            f"{TINY},dim=0",
            "--threads",
            "1",
            "--epochs",
            "1",
            "--evals",
            "1",
            "--batches",
            "1",
            "--profile-batches",
            "1",
            "--set",
            "batch_size=100",
            "--out",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    report = json.loads((out / "profile.json").read_text())
    for key in ("machine", "torch", "threads", "git_commit", "date", "command", "models"):
        assert key in report
    rows = {r["model"]: r for r in report["models"]}
    assert [r["model"] for r in report["models"]] == ["lightgcn", "bpr", "vbpr"]  # reference first
    assert "no item modalities" in rows["vbpr"]["skipped"]
    assert rows["lightgcn"]["epoch_ratio"] == pytest.approx(1.0)
    # BPR's steps timed in turns with LightGCN's in BPR's own process (5 rounds by default)
    same = rows["bpr"]["same_process"]
    assert same["rounds"] == 5 and same["model_step_seconds"] > 0
    assert same["reference_step_seconds"] > 0
    assert rows["bpr"]["epoch_ratio_same_process"] == pytest.approx(same["epoch_ratio"])
    # an epoch of each at the rounds' pace: BPR's steps plus what its epoch adds once (at least
    # its sampling), against as many LightGCN steps (the model's batch size) plus that sampling
    n = rows["bpr"]["batches_per_epoch"]
    once = same["epoch_once_seconds"]
    assert once > 0
    assert same["model_epoch_seconds"] == pytest.approx(same["model_step_seconds"] * n + once)
    ref_steps = same["reference_step_seconds"] * n
    assert ref_steps < same["reference_epoch_seconds"] <= ref_steps + once
    assert same["epoch_ratio"] == pytest.approx(
        same["model_epoch_seconds"] / same["reference_epoch_seconds"]
    )
    # BPR's step has no matrix product: its floor turns run nothing, far below its step; an
    # epoch of them is the first step's (timed apart) and the others'
    assert 0 <= same["floor_step_seconds"] < same["model_step_seconds"]
    assert 0 <= same["floor_first_step_seconds"] < same["model_step_seconds"]
    assert rows["bpr"]["floor_ratio_same_process"] == pytest.approx(
        (same["floor_first_step_seconds"] + same["floor_step_seconds"] * (n - 1))
        / same["reference_epoch_seconds"]
    )
    # BPR has no graph: its graph turns run nothing either; LightGCN's step propagates over
    # the graph, and its products (replayed in the same turns) take part of its step
    assert 0 <= same["graph_floor_step_seconds"] < same["model_step_seconds"]
    assert 0 < same["reference_floor_step_seconds"] < same["reference_step_seconds"]
    arithmetic = (
        same["floor_first_step_seconds"] + same["graph_floor_first_step_seconds"]
        + (same["floor_step_seconds"] + same["graph_floor_step_seconds"]) * (n - 1)
    )
    assert rows["bpr"]["arithmetic_floor_ratio_same_process"] == pytest.approx(
        arithmetic / same["reference_epoch_seconds"]
    )
    assert rows["bpr"]["floor_headroom"] is None  # no products: no floor to run near
    assert rows["lightgcn"]["floor_headroom"] == pytest.approx(
        same["reference_epoch_seconds"] / (same["reference_floor_step_seconds"] * n)
    )
    assert rows["lightgcn"]["floor_headroom"] > 1
    assert rows["bpr"]["epoch_target_below_floor"] is False
    assert rows["lightgcn"]["same_process"] is None
    assert rows["lightgcn"]["epoch_ratio_same_process"] == 1.0
    # and 2 full validations of each in turns
    assert same["model_eval_seconds"] > 0 and same["reference_eval_seconds"] > 0
    assert rows["bpr"]["eval_ratio_same_process"] == pytest.approx(
        same["model_eval_seconds"] / same["reference_eval_seconds"]
    )
    assert rows["lightgcn"]["eval_ratio_same_process"] == 1.0
    # the validation floor: the evaluator's own work (LightGCN's validation less its products)
    # plus BPR's products, both replayed alone in the same turns
    assert 0 < same["reference_eval_products_seconds"] < same["reference_eval_seconds"]
    assert 0 < same["model_eval_products_seconds"] < same["model_eval_seconds"]
    assert rows["bpr"]["eval_floor_ratio_same_process"] == pytest.approx(
        (same["reference_eval_seconds"] - same["reference_eval_products_seconds"]
         + same["model_eval_products_seconds"]) / same["reference_eval_seconds"]
    )
    assert set(rows["bpr"]["parts_seconds"]) == set(PART_COLUMNS)
    md = (out / "profile.md").read_text().splitlines()
    assert md[0].startswith("# ")
    header = [c.strip() for c in md[2].strip("|").split("|")]
    assert header == [
        "model",
        "epoch s",
        "x LightGCN",
        "x LightGCN, same process",
        "graph",
        "content",
        "loss",
        "backward",
        "optimiser",
        "other",
        "dense GFLOP/step",
        "dense floor s",
        "dense floor x LightGCN, same process",
        "arithmetic floor x LightGCN, same process",
        "epoch x own arithmetic floor",
        "validation s",
        "x LightGCN",
        "x LightGCN, same process",
        "validation floor x LightGCN, same process",
        "peak RSS MiB",
    ]
    body = [line for line in md[4:] if line.startswith("| ")]
    assert [line.split("|")[1].strip() for line in body] == ["lightgcn", "bpr"]
    assert all(len(line.strip("|").split("|")) == len(header) for line in body)
    assert any(line.startswith("Not run: vbpr:") for line in md)
    assert md[-1].startswith("Produced by `alignrec bench-speed --models bpr,vbpr,lightgcn")
    assert "first 1 batches" in md[-1]


@pytest.mark.parametrize("flag", ["--model", "--models"])
def test_an_unknown_model_is_a_clear_error(flag, monkeypatch, capsys):
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "alignrec",
            "bench-speed",
            flag,
            "lightgcn,nosuch" if flag == "--models" else "nosuch",
            "--dataset",
            TINY,
        ],
    )
    with pytest.raises(SystemExit) as exc:
        cli.main()
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "unknown model 'nosuch'" in err and "registered:" in err and "Traceback" not in err


def test_ratios_to_lightgcn_and_the_targets_judge_only_what_was_measured():
    nan = float("nan")
    rows = [
        {"model": "lightgcn", "epoch_seconds": 2.0, "eval_seconds": 4.0},
        {"model": "alignrec", "epoch_seconds": 5.0, "eval_seconds": 4.0},  # 2.5x: over 2x
        {"model": "mgcn", "epoch_seconds": 5.0, "eval_seconds": 4.0},  # 2.5x: within 3x
        {"model": "grcn", "epoch_seconds": 5.0, "eval_seconds": 8.0},  # validation 2x: over
        {"model": "bpr", "epoch_seconds": 1.0, "eval_seconds": nan},  # no validation timed
        {"model": "vbpr", "skipped": "no modalities"},
    ]
    add_ratios(rows)
    by = {r["model"]: r for r in rows}
    assert by["alignrec"]["epoch_ratio"] == pytest.approx(2.5)
    assert [by[m]["within_targets"] for m in ("lightgcn", "alignrec", "mgcn", "grcn", "bpr")] == [
        True,
        False,
        True,
        False,
        True,
    ]
    assert "epoch_ratio" not in by["vbpr"]


def test_the_same_process_ratio_decides_the_epoch_target_where_there_is_one():
    rows = [
        {"model": "lightgcn", "epoch_seconds": 2.0, "eval_seconds": 4.0, "same_process": None},
        # 3.5x against the reference's process, 2.8x in turns in its own: within 3x
        {"model": "mgcn", "epoch_seconds": 7.0, "eval_seconds": 4.0,
         "same_process": {"epoch_ratio": 2.8}},
        # 2.5x against the reference's process, 3.2x in its own: over
        {"model": "slmrec", "epoch_seconds": 5.0, "eval_seconds": 4.0,
         "same_process": {"epoch_ratio": 3.2}},
        # validation 1.6x against the reference's process, 1.4x in its own: within 1.5x
        {"model": "lattice", "epoch_seconds": 2.0, "eval_seconds": 6.4,
         "same_process": {"epoch_ratio": 1.0, "eval_ratio": 1.4}},
        # validation 1.25x against the reference's process, 1.6x in its own: over
        {"model": "freedom", "epoch_seconds": 2.0, "eval_seconds": 5.0,
         "same_process": {"epoch_ratio": 1.0, "eval_ratio": 1.6}},
    ]
    add_ratios(rows)
    by = {r["model"]: r for r in rows}
    assert by["mgcn"]["epoch_ratio"] == pytest.approx(3.5)
    assert by["mgcn"]["epoch_ratio_same_process"] == 2.8
    assert "eval_ratio_same_process" not in by["mgcn"]  # no validation timed in its process
    assert by["lightgcn"]["epoch_ratio_same_process"] == 1.0
    assert by["lightgcn"]["eval_ratio_same_process"] == 1.0
    assert [by[m]["within_targets"] for m in ("lightgcn", "mgcn", "slmrec", "lattice", "freedom")] == [
        True, True, False, True, False
    ]


def test_dense_arithmetic_is_counted_with_its_floor():
    """BPR's step has no matrix product; AlignRec projects every item's features to d, forward
    and backward (gradients for the weights and for the trainable feature table)."""
    from alignrec.data.synthetic import SCALES

    kw = dict(epochs=1, evals=0, threads=1, profile_batches=0, warmup=False)
    bpr = bench_speed("bpr", TINY, **kw)
    assert bpr["dense_gflop_per_step"] == 0 and bpr["dense_floor_seconds"] == 0
    ours = bench_speed("alignrec", TINY, **kw)
    items, dim = SCALES["tiny"].items, SCALES["tiny"].dim
    projection = 2 * items * dim * 64  # [items, dim] @ [dim, 64], in FLOPs
    assert ours["dense_gflop_per_step"] * 1e9 >= 3 * projection
    assert ours["gemm_gflops"] > 0
    assert ours["dense_floor_seconds"] == pytest.approx(
        (ours["dense_gflop_first_step"] + (ours["batches_per_epoch"] - 1)
         * ours["dense_gflop_per_step"]) / ours["gemm_gflops"]
    )
    # in its own process beside LightGCN: its arithmetic floor (matrix products, and the sums
    # over its user-item and item-item graphs) and how near its epoch runs to it
    same = bench_speed("alignrec", TINY, same_process_rounds=1, **kw)["same_process"]
    n = ours["batches_per_epoch"]
    arithmetic = (
        same["floor_first_step_seconds"] + same["graph_floor_first_step_seconds"]
        + (same["floor_step_seconds"] + same["graph_floor_step_seconds"]) * (n - 1)
    )
    assert same["graph_floor_step_seconds"] > 0
    assert same["arithmetic_floor_ratio"] == pytest.approx(
        arithmetic / same["reference_epoch_seconds"]
    )
    assert same["floor_headroom"] == pytest.approx(same["model_epoch_seconds"] / arithmetic)
    # LATTICE rebuilds its item-item graphs (item x item similarity products) in an epoch's
    # first step only: that step is counted once, not for every batch
    lattice = bench_speed("lattice", TINY, sets=["batch_size=100"], **kw)
    assert lattice["dense_gflop_first_step"] > lattice["dense_gflop_per_step"]


def test_a_target_below_the_arithmetic_floor_is_named():
    rows = [
        {"model": "lightgcn", "epoch_seconds": 2.0, "eval_seconds": 4.0, "same_process": None},
        # its matrix products alone are 3.2x LightGCN's epoch: 3x is out of reach
        {"model": "mgcn", "epoch_seconds": 9.0, "eval_seconds": 4.0,
         "same_process": {"epoch_ratio": 4.5, "floor_ratio": 3.2}},
        # AlignRec's target is 2x: a floor of 2.1x is over it, one of 1.9x is not
        {"model": "alignrec", "epoch_seconds": 9.0, "eval_seconds": 4.0,
         "same_process": {"epoch_ratio": 4.5, "floor_ratio": 2.1}},
        {"model": "grcn", "epoch_seconds": 9.0, "eval_seconds": 4.0,
         "same_process": {"epoch_ratio": 4.5, "floor_ratio": 1.9}},
    ]
    rows[3]["same_process"]["eval_floor_ratio"] = 1.6  # scores 1.6x LightGCN's at best
    rows[2]["same_process"]["eval_floor_ratio"] = 1.4
    # with its graph products, a model's floor rises: here its matrix products are under its
    # target, and its sums over the graph's edges take it over
    rows.append(
        {"model": "dualgnn", "epoch_seconds": 9.0, "eval_seconds": 4.0,
         "same_process": {"epoch_ratio": 4.5, "floor_ratio": 1.9, "arithmetic_floor_ratio": 3.4,
                          "floor_headroom": 1.3}}
    )
    add_ratios(rows)
    by = {r["model"]: r for r in rows}
    assert by["mgcn"]["floor_ratio_same_process"] == 3.2
    assert [by[m]["epoch_target_below_floor"] for m in ("mgcn", "alignrec", "grcn")] == [
        True, True, False
    ]
    assert by["dualgnn"]["arithmetic_floor_ratio_same_process"] == 3.4
    assert by["dualgnn"]["epoch_target_below_floor"] is True
    assert by["dualgnn"]["floor_headroom"] == 1.3
    assert by["grcn"]["eval_floor_ratio_same_process"] == 1.6
    assert by["grcn"]["validation_target_below_floor"] is True
    assert by["alignrec"]["validation_target_below_floor"] is False
    assert "validation_target_below_floor" not in by["mgcn"]  # no validation timed
    assert "epoch_target_below_floor" not in by["lightgcn"]  # no floor measured for it
