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


LOAD_WITHOUT_ALIGNREC = """
import importlib.util, sys
assert importlib.util.find_spec("alignrec") is None, "alignrec is importable before loading"
import mlflow.pyfunc, pandas as pd
out = mlflow.pyfunc.load_model(sys.argv[1]).predict(pd.DataFrame({"user_id": ["3"], "k": [4]}))
print(len(out), sys.modules["alignrec"].__file__)
"""


def test_the_registered_model_carries_its_code(registered, tmp_path):
    """Loaded where alignrec is not installed (no site hooks, so not the editable install),
    the model imports the alignrec copy it was logged with."""
    import os
    import subprocess
    import sys
    import sysconfig
    from pathlib import Path

    import mlflow

    env = {**os.environ, "PYTHONPATH": sysconfig.get_paths()["purelib"],
           "MLFLOW_TRACKING_URI": registered.uri, "MLFLOW_REGISTRY_URI": registered.uri}  # fmt: skip
    res = subprocess.run(
        [sys.executable, "-S", "-c", LOAD_WITHOUT_ALIGNREC, registered.champion],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    count, origin = res.stdout.split()
    assert count == "4" and "/code/alignrec/" in origin
    requirements = mlflow.pyfunc.get_model_dependencies(registered.champion)
    assert "alignrec" not in Path(requirements).read_text()


def _one_by_one(rec: Recommender, user: str, k: int, exclude: list[str]) -> list[str]:
    """The ranking as the model used to compute it, one user at a time in float64."""
    u = rec.user_index.get(user)
    if u is None:
        scores = rec.popularity.astype(np.float64)
    else:
        scores = (rec.item_emb @ rec.user_emb[u]).astype(np.float64)
        scores[rec.indices[rec.indptr[u] : rec.indptr[u + 1]]] = -np.inf
    for item in exclude:
        scores[rec.item_index[item]] = -np.inf
    order = np.lexsort((np.arange(len(scores)), -scores))
    return [str(rec.item_ids[i]) for i in order if np.isfinite(scores[i])][:k]


def test_batched_scoring_matches_one_user_at_a_time(trained, monkeypatch):
    """Requests are scored in blocks of users (here 7 users per block, so one request spans
    several blocks, with a different k on every row); each user's ranking is the one a
    user-at-a-time pass gives, in request order, unknown users and excludes included."""
    import alignrec.serving as serving

    rec = Recommender(trained.out / EXPORT_FILE)
    monkeypatch.setattr(serving, "BLOCK_SCORES", 7 * len(rec.item_ids))
    rng = np.random.default_rng(0)
    users = [str(u) for u in rng.integers(0, len(rec.user_ids), 40)] + ["nobody", "3", "3"]
    ks = [int(k) for k in rng.integers(1, 60, len(users))]
    excludes = [[str(i) for i in rng.choice(rec.item_ids, 2, replace=False)] for _ in users]
    excludes[-1] = None
    out = rec.recommend_many(users, ks, excludes)
    assert list(out.columns) == ["user_id", "rank", "item_id", "score", "fallback"]
    assert np.isfinite(out["score"]).all()
    at = 0
    for user, k, exclude in zip(users, ks, excludes, strict=True):
        expected = _one_by_one(rec, user, k, exclude or [])
        got = out.iloc[at : at + len(expected)]
        assert list(got["user_id"]) == [user] * len(expected)
        assert list(got["item_id"]) == expected and list(got["rank"]) == list(range(1, len(expected) + 1))
        assert set(got["fallback"]) <= ({"popular"} if user == "nobody" else {""})
        at += len(expected)
    assert at == len(out)
    empty = rec.recommend_many([], [])
    assert list(empty.columns) == list(out.columns) and len(empty) == 0
