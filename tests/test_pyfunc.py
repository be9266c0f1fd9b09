"""The export as an MLflow pyfunc model on the study's parent run (issue 10, part 3), against the
embedded store (SQLite in tmp): same output as predict_texts, logged once as a logged model of the
parent run (issue 24), optional registration, and an MLflow outage that leaves the export written
and the model logged later.

The tests share one tiny study (tests/studyhelper.py) and run in file order: the outage first, so
that its later run is the one that logs the model.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import mlflow
import pandas as pd
import pytest
import yaml
from services.mlflow_server import free_port
from studyhelper import Study

from leanhpo.cli import main
from leanhpo.data import load_split
from leanhpo.export import load_exported, predict_texts
from leanhpo.export.pyfunc import ExportPyfunc, model_fingerprint
from leanhpo.fsutil import read_json
from leanhpo.study.evaluate import evaluate_study
from leanhpo.study.export import export_best_model
from leanhpo.study.publish import FINGERPRINT_TAG, MODEL_ARTIFACT, MODEL_URI_TAG
from leanhpo.tracking import Tracker

MODEL_NAME = "leanhpo-test-model"


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("pyfunc")
    study = Study(root, train={"epochs": 1})
    study.run(0)
    report_path = study.dir / "study_report.json"
    evaluate_study(study.study_json, study.data, [study.report_path(0)], report_path, study.config)
    parent = read_json(study.study_json)["mlflow"]["parent_run_id"]
    return SimpleNamespace(root=root, study=study, report=report_path, parent=parent)


def _export(made: SimpleNamespace, **tracking) -> dict:
    config = copy.deepcopy(made.study.config)
    config["tracking"].update(tracking)
    return export_best_model(
        made.study.dir, made.report, made.study.dir / "best_model", config=config
    )


@contextmanager
def _tracking_uri(uri: str) -> Iterator[None]:
    before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(before)


def _client(made: SimpleNamespace) -> mlflow.MlflowClient:
    return Tracker(made.study.config["tracking"]["uri"], "leanhpo").client


def _logged_models(made: SimpleNamespace) -> list:
    """The logged models whose source is the study's parent run, as the MLflow UI finds them."""
    client = _client(made)
    experiment = client.get_run(made.parent).info.experiment_id
    return list(
        client.search_logged_models([experiment], filter_string=f"source_run_id = '{made.parent}'")
    )


def test_an_outage_leaves_the_export_written_and_sync_tracking_logs_the_model_later(
    made, monkeypatch
):
    closed = f"http://127.0.0.1:{free_port()}"
    result = _export(made, uri=closed, write_timeout_s=1)
    assert (made.study.dir / "best_model" / "manifest.json").is_file()
    assert result["mlflow"]["status"] == "pending", result["mlflow"]
    client = _client(made)
    assert client.get_run(made.parent).data.tags.get(FINGERPRINT_TAG) is None
    # sync-tracking with the right URI logs it (the hook in cli._cmd_sync_tracking).
    config_file = made.root / "config.yaml"
    config_file.write_text(yaml.safe_dump(made.study.config))
    monkeypatch.chdir(made.root)  # experiments/<study> is relative to the working folder
    assert main(["sync-tracking", "--config", str(config_file)]) == 0
    tags = client.get_run(made.parent).data.tags
    assert tags[FINGERPRINT_TAG] == model_fingerprint(made.study.dir / "best_model")
    assert [m.tags[FINGERPRINT_TAG] for m in _logged_models(made)] == [tags[FINGERPRINT_TAG]]


def test_the_model_is_a_logged_model_of_the_parent_run(made):
    """The parent run's "Logged models" (issue 24): MLflow 3's LoggedModel with the parent as
    source run, READY, recorded as the run's output, and loadable by its own URI."""
    result = _export(made)["mlflow"]
    [model] = _logged_models(made)
    assert (model.name, model.status.value, model.model_id) == (
        MODEL_ARTIFACT,
        "READY",
        result["model_id"],
    )
    assert model.tags[FINGERPRINT_TAG] == model_fingerprint(made.study.dir / "best_model")
    run = _client(made).get_run(made.parent)
    assert run.outputs is not None
    assert [o.model_id for o in run.outputs.model_outputs] == [model.model_id]
    assert run.data.tags[MODEL_URI_TAG] == model.model_uri == f"models:/{model.model_id}"
    with _tracking_uri(made.study.config["tracking"]["uri"]):
        loaded = mlflow.pyfunc.load_model(model.model_uri)
    assert (loaded.metadata.model_id, loaded.metadata.run_id) == (model.model_id, made.parent)
    texts = ["I can't sleep at night and I feel tired all day."]
    expected = predict_texts(load_exported(made.study.dir / "best_model", "cpu"), texts)
    assert loaded.predict(pd.DataFrame({"text": texts})) == expected


def test_the_pyfunc_from_the_parent_run_predicts_what_predict_texts_does(made):
    result = _export(made)["mlflow"]
    assert result["status"] in ("logged", "already_logged")
    assert result["model_uri"] == f"runs:/{made.parent}/{MODEL_ARTIFACT}"
    test = load_split(made.study.data, "test")
    texts, ids = [p["text"] for p in test], [p["post_id"] for p in test]
    expected = predict_texts(load_exported(made.study.dir / "best_model", "cpu"), texts, ids)
    with _tracking_uri(made.study.config["tracking"]["uri"]):
        model = mlflow.pyfunc.load_model(result["model_uri"])
    assert model.predict(pd.DataFrame({"text": texts, "post_id": ids})) == expected
    without_ids = model.predict(pd.DataFrame({"text": texts}))
    assert [row["post_id"] for row in without_ids] == [str(i + 1) for i in range(len(texts))]
    assert [row["symptoms"] for row in without_ids] == [row["symptoms"] for row in expected]
    wrapped = model.unwrap_python_model()
    assert isinstance(wrapped, ExportPyfunc)
    # Two posts make another batch (other padding) than the whole split: compare like with like.
    first_two = predict_texts(load_exported(made.study.dir / "best_model", "cpu"), texts[:2])
    assert wrapped.predict(None, texts[:2]) == first_two
    signature = model.metadata.signature
    assert signature.inputs.input_names() == ["text", "post_id"]
    assert signature.outputs.input_names() == ["post_id", "symptoms", "evidence"]
    assert model.metadata.saved_input_example_info is not None
    # Models from code: MLflow stored our code file, not a pickle of the model object.
    names = {a.path for a in _client(made).list_logged_model_artifacts(result["model_id"])}
    assert "python_model.pkl" not in names
    assert "MLmodel" in names


def test_a_second_export_logs_nothing_new(made):
    _export(made)
    client = _client(made)
    before = _artifact_times(made)
    tags = client.get_run(made.parent).data.tags
    again = _export(made)["mlflow"]
    assert again["status"] == "already_logged"
    assert _artifact_times(made) == before  # not uploaded again
    assert client.get_run(made.parent).data.tags[FINGERPRINT_TAG] == tags[FINGERPRINT_TAG]
    assert len(_logged_models(made)) == 1


def _artifact_times(made: SimpleNamespace) -> dict[str, int]:
    [model] = _logged_models(made)
    root = Path(model.artifact_location.removeprefix("file://"))
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def test_registration_under_tracking_register_model_happens_once(made):
    first = _export(made, register_model=MODEL_NAME)["mlflow"]
    assert first["registered"] == {"name": MODEL_NAME, "version": "1"}
    second = _export(made, register_model=MODEL_NAME)["mlflow"]
    assert second["registered"] == {"name": MODEL_NAME, "version": "1"}
    client = _client(made)
    versions = client.search_model_versions(f"name = '{MODEL_NAME}'")
    assert [str(v.version) for v in versions] == ["1"]
    assert versions[0].run_id == made.parent
    # The logged model's files (MLflow's database registry stores no model id).
    assert versions[0].source == _client(made).get_logged_model(first["model_id"]).artifact_location
    with _tracking_uri(made.study.config["tracking"]["uri"]):
        model = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}/1")
    test = load_split(made.study.data, "test")[:3]
    expected = predict_texts(
        load_exported(made.study.dir / "best_model", "cpu"), [p["text"] for p in test]
    )
    assert model.predict(pd.DataFrame({"text": [p["text"] for p in test]})) == expected


def test_no_tracking_config_exports_without_mlflow(made):
    result = export_best_model(made.study.dir, made.report, made.study.dir / "best_model")
    assert "mlflow" not in result
