"""Serving: a trained inner-product recommender as an MLflow pyfunc model.

The model is exported as what it computes at inference: final user and item
embeddings (score = dot product), the training interactions to exclude, and the
original ids. ``predict`` takes a table with a ``user_id`` column (optional ``k``
and ``exclude``: a list of item ids per row) and returns the top-k item ids with
their scores. A user's training items are never recommended, and no score is
infinite: a user with fewer than ``k`` candidate items gets fewer rows. An unknown
user gets the most popular training items, flagged ``fallback="popular"``. A row
whose ``k`` is missing (null) gets the default ``k`` (the ``k`` parameter, 10).

A bad request (no ``user_id`` column or value, a ``k`` that is not a whole number
from 1 to ``ALIGNREC_SERVE_MAX_K`` (default 1000), more rows than
``ALIGNREC_SERVE_MAX_ROWS`` (default 10,000)) raises :class:`BadRequest`, which
``mlflow models serve`` answers with HTTP 400 and its one-line reason.

This module imports mlflow; import it only where MLflow is wanted.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from numbers import Integral, Real
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

from alignrec.runs import EXPORT

EXPORT_FILE = EXPORT  # the run folder's servable recommender (alignrec.runs)
DEFAULT_K = 10
# Scores held at once while ranking a request: a block of users times every item (16 MiB).
BLOCK_SCORES = 1 << 22
MAX_K_VAR, DEFAULT_MAX_K = "ALIGNREC_SERVE_MAX_K", 1000
MAX_ROWS_VAR, DEFAULT_MAX_ROWS = "ALIGNREC_SERVE_MAX_ROWS", 10_000


class BadRequest(MlflowException):
    """A request the model refuses: ``mlflow models serve`` answers HTTP 400 with
    ``{"error_code": "INVALID_PARAMETER_VALUE", "message": <reason>, ...}``.

    The reason is one line, and stays the whole message: the scoring server rewrites the
    message of an ``MlflowException`` raised in ``predict`` to ``Failed to predict data
    '<the request as a table>'. \nError: ...``, which would echo the request over several
    lines; assignments after the first are ignored. No ``stack_trace`` is attached (the
    server adds one only to exceptions that are not an ``MlflowException``).
    """

    def __init__(self, reason: str) -> None:
        super().__init__(" ".join(str(reason).split()), error_code=INVALID_PARAMETER_VALUE)

    @property
    def message(self) -> str:
        return self._reason

    @message.setter
    def message(self, value: str) -> None:
        if not hasattr(self, "_reason"):
            self._reason = value


@dataclass(frozen=True)
class ServeLimits:
    """What one request may ask for: ``k`` up to ``max_k``, at most ``max_rows`` rows."""

    max_k: int = DEFAULT_MAX_K
    max_rows: int = DEFAULT_MAX_ROWS

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ServeLimits:
        """``ALIGNREC_SERVE_MAX_K`` and ``ALIGNREC_SERVE_MAX_ROWS`` (positive integers)."""
        from alignrec.errors import ConfigError

        environ = os.environ if environ is None else environ
        values = {}
        for field, var, default in (
            ("max_k", MAX_K_VAR, DEFAULT_MAX_K),
            ("max_rows", MAX_ROWS_VAR, DEFAULT_MAX_ROWS),
        ):
            raw = environ.get(var, "").strip()
            try:
                values[field] = int(raw) if raw else default
            except ValueError:
                values[field] = 0
            if values[field] < 1:
                raise ConfigError(f"{var}={raw!r}: expected a positive integer")
        return cls(**values)


def _shown(value: Any) -> str:
    text = repr(value.item() if isinstance(value, np.generic) else value)
    return text if len(text) <= 40 else text[:37] + "..."


def _whole(value: Any) -> int | None:
    """``value`` as an int when it is a whole number (an integral float counts), else None."""
    if isinstance(value, bool | np.bool_):
        return None
    if isinstance(value, Integral):
        return int(value)
    if isinstance(value, Real) and np.isfinite(value) and float(value).is_integer():
        return int(value)
    return None


def _k_error(where: str, value: Any, limits: ServeLimits) -> BadRequest:
    return BadRequest(
        f"{where} k = {_shown(value)}: k must be a whole number from 1 to {limits.max_k} "
        f"({MAX_K_VAR}), or null for the default"
    )


def check_k(value: Any, limits: ServeLimits, where: str = "params:") -> int:
    """One ``k`` as an int in ``1..limits.max_k``; :class:`BadRequest` otherwise."""
    k = _whole(value)
    if k is None or not 1 <= k <= limits.max_k:
        raise _k_error(where, value, limits)
    return k


def row_ks(column: pd.Series, default_k: int, limits: ServeLimits) -> np.ndarray:
    """Each row's ``k`` (``default_k`` where missing), checked like :func:`check_k`."""
    missing = column.isna().to_numpy()
    ks = np.full(len(column), default_k, dtype=np.int64)
    values = column.to_numpy()
    if values.dtype.kind in "iuf":
        given = values[~missing]
        whole = np.isfinite(given) & (np.floor(given) == given) if given.dtype.kind == "f" else (
            np.ones(len(given), dtype=bool)
        )  # fmt: skip
        ok = whole & (given >= 1) & (given <= limits.max_k)
        if not ok.all():
            row = int(np.flatnonzero(~missing)[np.argmin(ok)])
            raise _k_error(f"row {row}:", values[row], limits)
        ks[~missing] = given.astype(np.int64)
        return ks
    for row in np.flatnonzero(~missing):
        ks[row] = check_k(values[row], limits, f"row {row}:")
    return ks


def export_recommender(model, dataset, path: str | Path) -> Path:
    """Write the arrays the pyfunc needs: embeddings, train matrix, ids and popularity."""
    import torch

    from alignrec import io

    if not hasattr(model, "export_embeddings"):
        raise TypeError(f"{type(model).__name__} does not export inner-product embeddings")
    model.eval()
    with torch.no_grad():
        user_emb, item_emb = model.export_embeddings()
    train = dataset.matrix("train").tocsr()
    popularity = np.asarray(train.sum(axis=0)).ravel()
    with io.atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(
            fh,
            user_emb=user_emb.detach().cpu().numpy().astype(np.float32),
            item_emb=item_emb.detach().cpu().numpy().astype(np.float32),
            indptr=train.indptr,
            indices=train.indices,
            user_ids=np.asarray(dataset.users["user_id"].astype(str).tolist(), dtype=str),
            item_ids=np.asarray(dataset.items["item_id"].astype(str).tolist(), dtype=str),
            popularity=popularity.astype(np.float32),
        )
    return Path(path)


class Recommender:
    """Top-k recommendation from exported arrays (no torch needed)."""

    def __init__(self, path: str | Path) -> None:
        z = np.load(path, allow_pickle=False)
        self.user_emb, self.item_emb = z["user_emb"], z["item_emb"]
        self.indptr, self.indices = z["indptr"], z["indices"]
        self.user_ids, self.item_ids = z["user_ids"], z["item_ids"]
        self.popularity = z["popularity"]
        self.user_index = {u: i for i, u in enumerate(self.user_ids)}
        self.item_index = {it: i for i, it in enumerate(self.item_ids)}

    def recommend(self, user_id: str, k: int = DEFAULT_K, exclude: list[str] | None = None) -> pd.DataFrame:
        """The top ``k`` items for ``user_id`` (fewer when fewer are left to recommend)."""
        return self.recommend_many([user_id], [k], [exclude])

    def recommend_many(
        self,
        user_ids: Sequence[str],
        ks: Sequence[int] | np.ndarray,
        excludes: Sequence[Sequence[str] | None] | None = None,
    ) -> pd.DataFrame:
        """The top ``ks[r]`` items for each ``user_ids[r]``: rows in request order, each
        user's by rank; ``excludes[r]`` lists item ids never to return for row ``r``.

        Rows are scored in blocks of users: one matrix product per block, training and
        excluded items set to -inf, the block's largest ``k`` picked with ``argpartition`` and
        sorted by score (ties by item index). Only finite scores are returned, so a user with
        fewer candidates than ``k`` gets fewer rows.
        """
        users = np.asarray([str(u) for u in user_ids], dtype=object)
        rows = len(users)
        ks = np.asarray(ks, dtype=np.int64).reshape(rows)
        index = np.fromiter((self.user_index.get(u, -1) for u in users), np.int64, count=rows)
        block = max(1, BLOCK_SCORES // max(len(self.item_ids), 1))
        found: list[tuple[np.ndarray, ...]] = []
        for start in range(0, rows, block):
            stop = min(rows, start + block)
            row, rank, item, score = self._top_block(
                index[start:stop], ks[start:stop], None if excludes is None else excludes[start:stop]
            )
            found.append((row + start, rank, item, score))
        row, rank, item, score = (
            np.concatenate([f[i] for f in found]) if found else np.zeros(0, dtype=dtype)
            for i, dtype in enumerate((np.int64, np.int64, np.int64, np.float32))
        )
        # Text columns as Python objects: MLflow's scoring server turns the table into JSON
        # records, which reads object columns about twice as fast as pandas' string dtype.
        return pd.DataFrame(
            {
                "user_id": pd.Series(users[row], dtype=object),
                "rank": rank + 1,
                "item_id": pd.Series(self.item_ids[item].astype(object), dtype=object),
                "score": score.astype(np.float64),
                "fallback": pd.Series(
                    np.where(index[row] >= 0, "", "popular").astype(object), dtype=object
                ),
            }
        )

    def _top_block(
        self, users: np.ndarray, ks: np.ndarray, excludes: Sequence[Sequence[str] | None] | None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """For a block of user indices (-1: unknown), the kept (row, rank - 1, item, score)."""
        n, n_items = len(users), len(self.item_ids)
        known = users >= 0
        scores = np.empty((n, n_items), dtype=np.float32)
        if known.any():
            scores[known] = self.user_emb[users[known]] @ self.item_emb.T
        if not known.all():
            scores[~known] = self.popularity
        # Each known user's training items: the CSR slices of the block, gathered at once.
        rows_known, seen = np.flatnonzero(known), users[known]
        starts = self.indptr[seen].astype(np.int64)
        lengths = self.indptr[seen + 1].astype(np.int64) - starts
        if total := int(lengths.sum()):
            offsets = np.arange(total) - np.repeat(np.cumsum(lengths) - lengths, lengths)
            items = self.indices[np.repeat(starts, lengths) + offsets]
            scores[np.repeat(rows_known, lengths), items] = -np.inf
        for r, exclude in enumerate(excludes if excludes is not None else ()):
            if isinstance(exclude, list | tuple | np.ndarray) and len(exclude):
                cols = [self.item_index[i] for i in map(str, exclude) if i in self.item_index]
                scores[r, cols] = -np.inf
        width = int(min(ks.max(), n_items)) if n else 0
        if width <= 0:
            empty = np.zeros(0, dtype=np.int64)
            return empty, empty, empty, np.zeros(0, dtype=np.float32)
        if width < n_items:
            top = np.argpartition(-scores, width - 1, axis=1)[:, :width]
        else:
            top = np.broadcast_to(np.arange(n_items), (n, n_items))
        top_scores = np.take_along_axis(scores, top, axis=1)
        order = np.lexsort((top, -top_scores), axis=1)
        top = np.take_along_axis(top, order, axis=1)
        top_scores = np.take_along_axis(top_scores, order, axis=1)
        keep = (np.arange(width) < ks[:, None]) & np.isfinite(top_scores)
        row, rank = np.nonzero(keep)
        return row, rank, top[row, rank], top_scores[row, rank]


class RecommenderModel(mlflow.pyfunc.PythonModel):
    """The MLflow pyfunc wrapper of :class:`Recommender`; it checks every request first.

    The limits are read when the model loads (``ALIGNREC_SERVE_MAX_K``,
    ``ALIGNREC_SERVE_MAX_ROWS``); a bad value stops the load with an error naming it.
    """

    def load_context(self, context) -> None:
        self.limits = ServeLimits.from_env()
        self.rec = Recommender(context.artifacts["recommender"])

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        limits = getattr(self, "limits", None) or ServeLimits.from_env()
        rows = len(model_input)
        if rows > limits.max_rows:
            raise BadRequest(
                f"{rows} rows in one request: at most {limits.max_rows} ({MAX_ROWS_VAR})"
            )
        if "user_id" not in model_input.columns:
            raise BadRequest("the request has no user_id column")
        users = model_input["user_id"]
        if users.isna().any():
            raise BadRequest(f"row {int(np.argmax(users.isna().to_numpy()))}: user_id is missing")
        # The default k (the `k` parameter; MLflow fills in 10 when it is not given) is checked
        # only when a row uses it, so a max_k below 10 serves requests that give k on each row.
        given = model_input["k"] if "k" in model_input.columns else pd.Series([None] * rows)
        default_k = DEFAULT_K
        if given.isna().any():
            param_k = (params or {}).get("k")
            default_k = check_k(DEFAULT_K if param_k is None else param_k, limits)
        ks = row_ks(given, default_k, limits)
        excludes = model_input["exclude"].tolist() if "exclude" in model_input.columns else None
        return self.rec.recommend_many(users.astype(str).tolist(), ks, excludes)


def signature():
    """The pyfunc's contract: a table of users (optional ``k`` and ``exclude`` per row) in,
    one row per recommended item out, and a default ``k`` as a parameter.

    ``user_id`` is required by the model itself, and ``k`` typed ``Any``, so that the model,
    not MLflow's schema check, judges them: MLflow refuses a missing column with a message that
    echoes the whole request, and casts a ``long`` column holding a null (``k`` left out on one
    row) to int64, which fails.
    """
    from mlflow.models import ModelSignature
    from mlflow.types.schema import AnyType, Array, ColSpec, ParamSchema, ParamSpec, Schema

    inputs = Schema([
        ColSpec("string", "user_id", required=False),
        ColSpec(AnyType(), "k", required=False),
        ColSpec(Array("string"), "exclude", required=False),
    ])
    outputs = Schema([
        ColSpec("string", "user_id"),
        ColSpec("long", "rank"),
        ColSpec("string", "item_id"),
        ColSpec("double", "score"),
        ColSpec("string", "fallback"),
    ])
    return ModelSignature(inputs, outputs, ParamSchema([ParamSpec("k", "long", DEFAULT_K)]))


def input_example(export_path: str | Path) -> pd.DataFrame:
    """A request for the first exported user's top 10, excluding the first item."""
    with np.load(export_path, allow_pickle=False) as z:
        user, item = str(z["user_ids"][0]), str(z["item_ids"][0])
    return pd.DataFrame({"user_id": [user], "k": [10], "exclude": [[item]]})


# What the pyfunc imports. alignrec itself travels with the model (``code_paths``), so a
# serving environment built from these pins (`mlflow models serve`, `build-docker`) needs no
# alignrec install.
SERVING_PACKAGES = ("mlflow", "cloudpickle", "numpy", "pandas")


def pip_requirements() -> list[str]:
    """The serving environment, pinned to what is installed here: what the pyfunc imports
    (given explicitly, because mlflow's inference loads the model in a subprocess: ~7 s)."""
    from importlib.metadata import PackageNotFoundError, version

    pins = []
    for package in SERVING_PACKAGES:
        try:
            pins.append(f"{package}=={version(package)}")
        except PackageNotFoundError:
            continue
    return pins


def log_recommender(export_path: str | Path, run_id: str, registered_name: str | None = None,
                    tracking_uri: str | None = None):
    """Log the exported recommender as a pyfunc model named ``recommender`` in ``run_id``,
    with its signature and an input example; register it when ``registered_name`` is given
    (:func:`alignrec.registry.register_recommender` registers with tags and aliases)."""
    import shutil
    import tempfile

    import mlflow

    import alignrec

    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    with tempfile.TemporaryDirectory() as tmp, mlflow.start_run(run_id=run_id):
        code = Path(tmp) / "alignrec"  # the package's sources, without bytecode caches
        shutil.copytree(
            Path(alignrec.__file__).parent, code, ignore=shutil.ignore_patterns("__pycache__")
        )
        info = mlflow.pyfunc.log_model(
            name="recommender",
            python_model=RecommenderModel(),
            artifacts={"recommender": str(export_path)},
            signature=signature(),
            input_example=input_example(export_path),
            pip_requirements=pip_requirements(),
            code_paths=[str(code)],
            registered_model_name=registered_name,
        )
    return info


class FusionEncoderModel(mlflow.pyfunc.PythonModel):
    """The stage-1 fusion encoder as an MLflow model.

    Its artifacts are the saved encoder (``load_fusion`` rebuilds it) and the feature
    table it produced; ``predict`` takes a table with an ``item`` column (item indices)
    and returns their stage-1 features, one column per dimension.
    """

    def load_context(self, context) -> None:
        self.features = np.load(context.artifacts["features"])
        self.encoder_dir = context.artifacts["encoder"]

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        items = model_input["item"].to_numpy(dtype=np.int64)
        if len(items) and (items.min() < 0 or items.max() >= len(self.features)):
            raise ValueError(f"item indices must lie in [0, {len(self.features)})")
        rows = self.features[items]
        return pd.DataFrame(rows, columns=[f"f{i}" for i in range(rows.shape[1])])


def log_fusion_encoder(encoder_dir: str | Path, features_path: str | Path, run_id: str,
                       tracking_uri: str | None = None):
    """Log the fusion encoder and its feature table as a pyfunc model named ``encoder``."""
    import mlflow
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, Schema

    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    feats = np.load(features_path, mmap_mode="r")
    example = pd.DataFrame({"item": [0, min(1, len(feats) - 1)]})
    sig = ModelSignature(
        Schema([ColSpec("long", "item")]),
        Schema([ColSpec("float", f"f{i}") for i in range(feats.shape[1])]),
    )
    with mlflow.start_run(run_id=run_id):
        return mlflow.pyfunc.log_model(
            name="encoder",
            python_model=FusionEncoderModel(),
            artifacts={"encoder": str(encoder_dir), "features": str(features_path)},
            signature=sig,
            input_example=example,
        )
