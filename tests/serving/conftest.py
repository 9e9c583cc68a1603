"""A tiny AlignRec run logged to a throw-away SQLite MLflow store, shared by the tests of this folder."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

import alignrec.data
from tests.training.synth import clustered

NAME = "alignrec-clustered"


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> SimpleNamespace:
    """AlignRec trained 2 epochs on the clustered dataset, exported for serving (``out``),
    its MLflow run in a fresh store (``uri``); ``dataset`` is the data it saw."""
    import torch

    from alignrec.commands.train import run_train
    from alignrec.tracking import MLflowLogger

    root: Path = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    data = clustered(0)

    def logger(tag=None):
        return MLflowLogger(
            "train-clustered", "alignrec", tracking_uri=uri, artifact_root=root / "artifacts"
        )

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(alignrec.data, "load_dataset", lambda name: data)
        record = run_train(
            "alignrec",
            "clustered",
            root / "run",
            sets=["epochs=2"],
            quiet=True,
            logger_factory=logger,
            export=True,
        )
    torch.set_num_threads(threads)
    return SimpleNamespace(uri=uri, out=root / "run", record=record, dataset=data)


@pytest.fixture
def tracking(trained, monkeypatch) -> str:
    """Point MLflow's tracking and registry at the module's store; return its URI."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", trained.uri)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", trained.uri)
    return trained.uri


@pytest.fixture(scope="session")
def registered(trained) -> SimpleNamespace:
    """The run registered as version 1 of ``alignrec-clustered`` (the first champion)."""
    from alignrec.registry import register_recommender

    decision = register_recommender(trained.out, trained.record, NAME, tracking_uri=trained.uri)
    return SimpleNamespace(
        name=NAME, decision=decision, uri=trained.uri, champion=f"models:/{NAME}@champion"
    )


def train_items(dataset, user_id: str) -> set[str]:
    """The item ids ``user_id`` interacted with in training (rows of the export's order)."""
    train = dataset.matrix("train").tocsr()
    u = dataset.users["user_id"].astype(str).tolist().index(user_id)
    item_ids = dataset.items["item_id"].astype(str).to_numpy()
    return set(item_ids[train.indices[train.indptr[u] : train.indptr[u + 1]]])
