"""MLflow implementation of the metric logger, against a throw-away SQLite store."""

from __future__ import annotations

import subprocess
import sys

import pytest

from alignrec.training import MetricLogger


def test_library_does_not_import_orchestration_packages():
    code = (
        "import sys, alignrec.training, alignrec.evaluation, alignrec.models, alignrec.tracking, "
        "alignrec.commands.train, alignrec.commands.bench, alignrec.registry, alignrec.commands.registry\n"
        "bad = [m for m in ('mlflow', 'dagster', 'dvc', 'great_expectations') if m in sys.modules]\n"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.slow
def test_mlflow_logger_records_params_metrics_and_artifacts(tmp_path):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    from alignrec.tracking import MLflowLogger, default_tracking_uri

    uri = default_tracking_uri(tmp_path / "mlruns")
    assert uri.startswith("sqlite:///") and uri.endswith("mlflow.db")
    art = tmp_path / "mlruns" / "artifacts"
    with MLflowLogger("unit", run_name="r1", tracking_uri=uri, artifact_root=art) as lg:
        assert isinstance(lg, MetricLogger)
        lg.log_params({"model": "bpr", "train.ks": [5, 10]})
        lg.log_metrics({"train/loss": 0.5, "valid/recall@20": 0.1}, step=0)
        lg.log_metrics({"train/loss": 0.4, "valid/recall@20": 0.2}, step=1)
        f = tmp_path / "metrics.json"
        f.write_text("{}")
        lg.log_artifact(f)
        run_id = lg.run_id
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["model"] == "bpr"
    assert run.data.metrics["valid/recall_at_20"] == 0.2
    hist = client.get_metric_history(run_id, "train/loss")
    assert [(m.step, m.value) for m in hist] == [(0, 0.5), (1, 0.4)]
    exp = client.get_experiment(run.info.experiment_id)
    assert exp.artifact_location.startswith(art.resolve().as_uri())
    assert (art / "unit").is_dir()
    assert [a.path for a in client.list_artifacts(run_id)] == ["metrics.json"]
