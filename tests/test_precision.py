"""Precision is part of the model (issue 28, part 2): a study trained with bf16 autocast on the
CPU (train.amp: bf16) records it, and predict reproduces its test metrics exactly in it.

One tiny in-process study (tests/studyhelper.py): a trial, the test evaluation, the export.
"""

from __future__ import annotations

import json
import warnings
from types import SimpleNamespace

import pytest
from studyhelper import exported_study, gold_posts, score_predictions

from leanhpo import cli
from leanhpo.export import INFO_NAME, load_exported, model_card, predict_texts
from leanhpo.export import precision as precision_module
from leanhpo.export.precision import PrecisionWarning, choose_precision
from leanhpo.export.pyfunc import ExportPyfunc
from leanhpo.fsutil import read_json

BF16 = {"train": {"amp": "bf16", "epochs": 1}}


@pytest.fixture(scope="module")
def bf16_study(tmp_path_factory):
    return exported_study(tmp_path_factory.mktemp("bf16"), BF16)


def _predict(model, gold):
    return predict_texts(model, [p["text"] for p in gold], [p["post_id"] for p in gold])


@pytest.mark.slow
def test_a_bf16_study_records_its_precision_and_predict_reproduces_its_test_metrics(bf16_study):
    made = bf16_study
    compute = made.report["compute"]
    assert (compute["device"], compute["precision"], compute["deterministic"]) == (
        "cpu",
        "bf16",
        True,
    )
    trial = read_json(made.study.report_path(0))
    assert trial["compute"]["precision"] == "bf16" and "note" not in trial["compute"]
    info = read_json(made.folder / INFO_NAME)
    assert info["compute"] == compute
    assert "in `bf16`" in (made.folder / "README.md").read_text()
    with warnings.catch_warnings():
        warnings.simplefilter("error", PrecisionWarning)  # the recorded precision: no warning
        model = load_exported(made.folder, "cpu")
    assert model.precision == "bf16"
    gold = gold_posts(made.study)
    scored = score_predictions(model, gold, _predict(model, gold))
    expected = made.report["test_metrics"]
    assert scored["criteria_matching"] == expected["criteria_matching"]
    assert scored["evidence_binding"] == expected["evidence_binding"]


@pytest.mark.slow
def test_predict_in_fp32_on_a_bf16_model_warns_naming_both(bf16_study, tmp_path, capsys):
    made = bf16_study
    with pytest.warns(
        PrecisionWarning, match=r"computed on cpu in bf16; predicting on cpu in fp32"
    ):
        model = load_exported(made.folder, "cpu", "fp32")
    assert model.precision == "fp32"
    gold = gold_posts(made.study)[:4]
    probabilities = {
        name: [row["symptoms"]["DEPRESSED_MOOD"]["probability"] for row in _predict(m, gold)]
        for name, m in (("fp32", model), ("bf16", load_exported(made.folder, "cpu")))
    }
    assert probabilities["fp32"] != probabilities["bf16"]  # the precision really changed
    posts = tmp_path / "posts.txt"
    posts.write_text("I cannot sleep.\nNothing is fun any more.\n")
    out = tmp_path / "out.jsonl"
    argv = ["predict", "--model", str(made.folder), "--input", str(posts), "--output", str(out)]
    assert cli.main([*argv, "--precision", "fp32", "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert "leanhpo: warning: this model's test scores were computed on cpu in bf16" in err
    assert len(out.read_text().splitlines()) == 2
    assert cli.main([*argv, "--device", "cpu"]) == 0
    assert "warning" not in capsys.readouterr().err


@pytest.mark.slow
def test_the_pyfunc_model_predicts_in_the_recorded_precision(bf16_study):
    made = bf16_study
    wrapper = ExportPyfunc()
    wrapper.load_context(SimpleNamespace(artifacts={"export": str(made.folder)}))
    assert wrapper.model.precision == "bf16"
    gold = gold_posts(made.study)[:3]
    texts = [p["text"] for p in gold]
    assert wrapper.predict(None, texts) == predict_texts(load_exported(made.folder, "cpu"), texts)


def test_precision_choice_per_device_and_request(monkeypatch):
    # No GPU here: a CUDA device with bf16 (Ampere on) is assumed, then one without.
    monkeypatch.setattr(precision_module, "bf16_supported", lambda device_type: True)
    info = {"compute": {"device": "cuda", "precision": "bf16", "deterministic": True}}
    with pytest.warns(PrecisionWarning, match="other cpu kernels than the cuda ones"):
        assert choose_precision(info, True, "cpu") == "bf16"  # bf16 autocast runs on every CPU
    with warnings.catch_warnings():
        warnings.simplefilter("error", PrecisionWarning)
        assert choose_precision(info, True, "cuda") == "bf16"
        # an export made before the record: as its train.amp says on this device, silently
        assert choose_precision({}, True, "cpu") == "fp32"
        assert choose_precision({}, "bf16", "cpu") == "bf16"
    with pytest.raises(ValueError, match="unknown precision"):
        choose_precision(info, True, "cuda", "fp16")
    monkeypatch.setattr(precision_module, "bf16_supported", lambda device_type: False)
    with pytest.warns(PrecisionWarning, match=r"in fp32 \(this cuda device has no bf16\)"):
        assert choose_precision(info, True, "cuda") == "fp32"


def test_the_card_says_when_a_model_is_not_bitwise_reproducible():
    compute = {"device": "cuda", "precision": "bf16", "deterministic": False, "note": "NOTE"}
    info = {
        "config": {"model": {"id": "tiny"}, "train": {"amp": True}},
        "null_threshold": 0.0,
        "decision_thresholds": None,
        "decision_threshold": 0.5,
        "compute": compute,
    }
    card = model_card(info)
    assert "scores computed on `cuda` in `bf16` (train.amp `True`" in card
    assert "**not bitwise reproducible**: NOTE" in card
    assert "deterministic kernels" in model_card(
        {**info, "compute": {**compute, "deterministic": True}}
    )
    assert json.dumps(info)  # the card reads only what leanhpo_model.json holds
