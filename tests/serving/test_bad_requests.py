"""What the registered pyfunc refuses, called directly (test_serve_http.py sends the same over
HTTP): a one-line ``BadRequest`` (HTTP 400 when served), never a stack trace, a training item
or an infinite score."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException

from alignrec.errors import ConfigError
from alignrec.serving import BadRequest, ServeLimits
from tests.serving.conftest import train_items

pytestmark = pytest.mark.slow


@pytest.fixture
def model(registered, monkeypatch):
    import mlflow

    monkeypatch.delenv("ALIGNREC_SERVE_MAX_K", raising=False)
    monkeypatch.delenv("ALIGNREC_SERVE_MAX_ROWS", raising=False)
    return mlflow.pyfunc.load_model(registered.champion)


def refused(model, frame: pd.DataFrame, params=None) -> str:
    """The one-line reason ``model`` gives for refusing ``frame``."""
    with pytest.raises(MlflowException) as info:
        model.predict(frame, params=params)
    exc = info.value
    assert exc.error_code == "INVALID_PARAMETER_VALUE" and exc.get_http_status_code() == 400
    assert "\n" not in exc.message and "stack_trace" not in json.loads(exc.serialize_as_json())
    return exc.message


@pytest.mark.parametrize("k", [-1, -3, 0, -100, 2**63, 1001, 2.5, math.inf, "abc", True])
def test_a_k_outside_1_to_max_k_is_refused(model, k):
    frame = pd.DataFrame({"user_id": ["3"], "k": pd.Series([k], dtype=object)})
    reason = refused(model, frame)
    assert reason.startswith("row 0: k = ") and "from 1 to 1000 (ALIGNREC_SERVE_MAX_K)" in reason
    if isinstance(k, int) and not isinstance(k, bool):
        reason = refused(model, pd.DataFrame({"user_id": ["3"], "k": [k]}))  # a typed column
        assert f"k = {k}:" in reason


@pytest.mark.parametrize("k", [-5, 0, 2**63])
def test_a_bad_default_k_parameter_is_refused(model, k):
    reason = refused(model, pd.DataFrame({"user_id": ["3"]}), params={"k": k})
    assert reason.startswith(f"params: k = {k}: k must be a whole number from 1 to 1000")


def test_a_missing_k_means_the_default(model):
    out = model.predict(pd.DataFrame({"user_id": ["3", "4", "5"], "k": [5, None, np.nan]}))
    assert out.groupby("user_id").size().to_dict() == {"3": 5, "4": 10, "5": 10}
    out = model.predict(pd.DataFrame({"user_id": ["3", "4"], "k": [2, None]}), params={"k": 3})
    assert out.groupby("user_id").size().to_dict() == {"3": 2, "4": 3}


def test_k_beyond_the_candidates_returns_fewer_rows_all_finite(model, trained):
    n_items = trained.dataset.n_items
    out = model.predict(pd.DataFrame({"user_id": ["3", "nobody"], "k": [1000, 1000], "exclude": [["0"], ["1"]]}))
    mine = out[out["user_id"] == "3"]
    seen = train_items(trained.dataset, "3")
    assert len(mine) == n_items - len(seen | {"0"}) and not set(mine["item_id"]) & (seen | {"0"})
    assert len(out[out["user_id"] == "nobody"]) == n_items - 1
    assert np.isfinite(out["score"]).all()
    json.dumps(out.to_dict("records"), allow_nan=False)  # valid JSON: no -Infinity
    assert list(mine["rank"]) == list(range(1, len(mine) + 1))


def test_a_request_without_user_ids_is_refused(model):
    assert refused(model, pd.DataFrame({"user": ["3"], "k": [2]})) == "the request has no user_id column"
    assert refused(model, pd.DataFrame({"user_id": ["3", None]})) == "row 1: user_id is missing"


def test_limits_come_from_the_environment(registered, monkeypatch):
    import mlflow

    monkeypatch.setenv("ALIGNREC_SERVE_MAX_K", "5")
    monkeypatch.setenv("ALIGNREC_SERVE_MAX_ROWS", "3")
    model = mlflow.pyfunc.load_model(registered.champion)
    assert len(model.predict(pd.DataFrame({"user_id": ["3"], "k": [5]}))) == 5
    assert "from 1 to 5 (ALIGNREC_SERVE_MAX_K)" in refused(
        model, pd.DataFrame({"user_id": ["3"], "k": [6]})
    )
    assert refused(model, pd.DataFrame({"user_id": ["1", "2", "3", "4"], "k": [1] * 4})) == (
        "4 rows in one request: at most 3 (ALIGNREC_SERVE_MAX_ROWS)"
    )
    assert len(model.predict(pd.DataFrame({"user_id": ["1", "2", "3"], "k": [1] * 3}))) == 3
    # the default k (10) counts only where a row uses it
    assert refused(model, pd.DataFrame({"user_id": ["3"]})).startswith("params: k = 10: ")
    assert len(model.predict(pd.DataFrame({"user_id": ["3"]}), params={"k": 4})) == 4


def test_a_bad_limit_stops_the_model_loading(registered, monkeypatch):
    import mlflow

    for value in ("0", "ten", "-3"):
        monkeypatch.setenv("ALIGNREC_SERVE_MAX_ROWS", value)
        with pytest.raises(ConfigError, match="ALIGNREC_SERVE_MAX_ROWS"):
            mlflow.pyfunc.load_model(registered.champion)
    assert ServeLimits.from_env({}) == ServeLimits(1000, 10_000)


def test_the_reason_survives_the_scoring_servers_rewrite():
    """mlflow's scoring server sets ``e.message = "Failed to predict data '<request>'..."`` on
    an MlflowException from predict; a BadRequest keeps its one-line reason."""
    exc = BadRequest("row 0: k = -1:\n a reason on two lines")
    assert exc.message == "row 0: k = -1: a reason on two lines"
    exc.message = "Failed to predict data '   user_id\n0  3'. \nError: " + exc.message
    assert exc.message == "row 0: k = -1: a reason on two lines"
    assert json.loads(exc.serialize_as_json())["message"] == exc.message


def test_a_large_request_is_scored_in_blocks_quickly(model):
    """10,000 rows used to take about 5 s here (one user at a time, 0.5 ms each); scored in
    blocks of users they take well under a tenth of that."""
    import time

    frame = pd.DataFrame({"user_id": [str(u % 70) for u in range(10_000)], "k": [10] * 10_000})
    model.predict(frame.head(10))  # warm-up
    started = time.perf_counter()
    out = model.predict(frame)
    elapsed = time.perf_counter() - started
    assert len(out) == 10 * 10_000 and elapsed < 1.5, f"{elapsed:.2f} s"


def test_too_many_rows_are_refused_before_any_scoring(model, monkeypatch):
    from alignrec.serving import Recommender

    def must_not_score(*args, **kwargs):
        raise AssertionError("scored a request over the row limit")

    monkeypatch.setattr(Recommender, "recommend_many", must_not_score)
    frame = pd.DataFrame({"user_id": ["1"] * 10_001, "k": [-1] * 10_001})
    assert refused(model, frame) == "10001 rows in one request: at most 10000 (ALIGNREC_SERVE_MAX_ROWS)"
