"""Serving: a trained inner-product recommender as an MLflow pyfunc model.

The model is exported as what it computes at inference: final user and item
embeddings (score = dot product), the training interactions to exclude, and the
original ids. ``predict`` takes a table with a ``user_id`` column (optional ``k``
and ``exclude``: a list of item ids per row) and returns the top-k item ids with
their scores. A user's training items are never recommended. An unknown user
gets the most popular training items, flagged ``fallback="popular"``. Give ``k``
on every row or on none (the ``k`` parameter is the default): MLflow's schema check
refuses an integer column with missing values.

This module imports mlflow; import it only where MLflow is wanted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd

EXPORT_FILE = "recommender.npz"


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

    def recommend(self, user_id: str, k: int = 10, exclude: list[str] | None = None) -> pd.DataFrame:
        user_id = str(user_id)
        u = self.user_index.get(user_id)
        if u is None:
            scores, fallback = self.popularity.astype(np.float64).copy(), "popular"
        else:
            scores, fallback = self.item_emb @ self.user_emb[u], ""
            scores = scores.astype(np.float64)
            scores[self.indices[self.indptr[u] : self.indptr[u + 1]]] = -np.inf
        for item in exclude or []:
            i = self.item_index.get(str(item))
            if i is not None:
                scores[i] = -np.inf
        k = int(min(k, np.isfinite(scores).sum()))
        top = np.argpartition(-scores, k - 1)[:k] if k else np.array([], dtype=int)
        top = top[np.lexsort((top, -scores[top]))]
        return pd.DataFrame(
            {
                "user_id": user_id,
                "rank": np.arange(1, len(top) + 1),
                "item_id": self.item_ids[top],
                "score": scores[top],
                "fallback": fallback,
            }
        )


class RecommenderModel(mlflow.pyfunc.PythonModel):
    """The MLflow pyfunc wrapper of :class:`Recommender`."""

    def load_context(self, context) -> None:
        self.rec = Recommender(context.artifacts["recommender"])

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        if "user_id" not in model_input.columns:
            raise ValueError("input needs a 'user_id' column")
        default_k = int((params or {}).get("k", 10))
        frames = []
        for _, row in model_input.iterrows():
            k = row.get("k", default_k)
            k = default_k if k is None or (isinstance(k, float) and np.isnan(k)) else int(k)
            exclude = row.get("exclude")
            exclude = list(exclude) if isinstance(exclude, list | tuple | np.ndarray) else []
            frames.append(self.rec.recommend(str(row["user_id"]), k, exclude))
        return pd.concat(frames, ignore_index=True)


def signature():
    """The pyfunc's contract: a table of users (optional ``k`` and ``exclude`` per row) in,
    one row per recommended item out, and a default ``k`` as a parameter."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Array, ColSpec, ParamSchema, ParamSpec, Schema

    inputs = Schema([
        ColSpec("string", "user_id"),
        ColSpec("long", "k", required=False),
        ColSpec(Array("string"), "exclude", required=False),
    ])
    outputs = Schema([
        ColSpec("string", "user_id"),
        ColSpec("long", "rank"),
        ColSpec("string", "item_id"),
        ColSpec("double", "score"),
        ColSpec("string", "fallback"),
    ])
    return ModelSignature(inputs, outputs, ParamSchema([ParamSpec("k", "long", 10)]))


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
