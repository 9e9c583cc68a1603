"""The registered pyfunc and ``alignrec recommend``: top-k per user, never a training item,
the popularity fallback flagged for unknown users."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from alignrec import cli
from alignrec.serving import EXPORT_FILE, Recommender
from tests.serving.conftest import train_items

pytestmark = pytest.mark.slow


def test_recommender_excludes_training_and_requested_items(trained):
    rec = Recommender(trained.out / EXPORT_FILE)
    for user in ("0", "7", "13"):
        top = rec.recommend(user, k=5)
        assert len(top) == 5 and not set(top["item_id"]) & train_items(trained.dataset, user)
        assert np.all(np.diff(top["score"].to_numpy()) <= 0) and (top["fallback"] == "").all()
        excluded = rec.recommend(user, k=5, exclude=[top["item_id"].iloc[0]])
        assert top["item_id"].iloc[0] not in set(excluded["item_id"])
    unknown = rec.recommend("nobody", k=3)
    assert (unknown["fallback"] == "popular").all() and len(unknown) == 3


def test_registered_pyfunc_takes_k_and_exclude_per_row(registered, trained):
    import mlflow

    model = mlflow.pyfunc.load_model(registered.champion)
    out = model.predict(
        pd.DataFrame({"user_id": ["3", "nobody"], "k": [4, 2], "exclude": [["0"], []]})
    )
    assert list(out.columns) == ["user_id", "rank", "item_id", "score", "fallback"]
    assert out.groupby("user_id").size().to_dict() == {"3": 4, "nobody": 2}
    mine = out[out["user_id"] == "3"]
    assert not set(mine["item_id"]) & (train_items(trained.dataset, "3") | {"0"})
    assert (out.loc[out["user_id"] == "nobody", "fallback"] == "popular").all()
    assert len(model.predict(pd.DataFrame({"user_id": ["3"]}), params={"k": 6})) == 6


def test_recommend_command_prints_the_champions_top_k(registered, trained):
    res = CliRunner().invoke(
        cli.app,
        [
            "recommend",
            "--model",
            registered.champion,
            "--user",
            "5",
            "--user",
            "nobody",
            "--k",
            "3",
            "--tracking-uri",
            registered.uri,
        ],
    )
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[0].split() == ["user_id", "rank", "item_id", "score", "fallback"]
    rows = [line.split() for line in lines[2:8]]
    assert [r[0] for r in rows] == ["5"] * 3 + ["nobody"] * 3
    assert [r[4] for r in rows] == ["-"] * 3 + ["popular"] * 3
    assert not {r[2] for r in rows[:3]} & train_items(trained.dataset, "5")
    assert "note: user nobody is unknown to the model" in res.output


def test_recommend_command_names_a_missing_model(registered):
    res = CliRunner().invoke(
        cli.app,
        [
            "recommend",
            "--model",
            "models:/absent@champion",
            "--user",
            "1",
            "--tracking-uri",
            registered.uri,
        ],
    )
    assert res.exit_code != 0 and "models:/absent@champion" in str(res.exception)
