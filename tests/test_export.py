"""Export the study's winner and predict with it (issue 10, parts 1 and 2).

Each study is the tiny in-process one (tests/studyhelper.py): one trial, the test evaluation,
then the export. Predictions are scored with the study's own metric functions against the
gold test split and must equal the study report's test metrics exactly.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
import yaml
from conftest import REPO, tiny_config_dict
from studyhelper import exported_study, gold_posts, score_predictions

from leanhpo.config import Config
from leanhpo.export import (
    HEADS_NAME,
    INFO_NAME,
    MANIFEST_NAME,
    ExportError,
    load_exported,
    model_card,
    predict_texts,
    write_export,
    write_predictions,
)
from leanhpo.fsutil import read_json
from leanhpo.metric_names import SYMPTOMS
from leanhpo.study.export import export_best_model
from leanhpo.training.evaluation import evaluate
from leanhpo.training.setup import build_network, encode

STUDIES = {
    "truncate": {},
    "windows": {
        "model": {"long_posts": "windows", "window_stride": 32, "max_windows": 128},
        "train": {"epochs": 1},
    },
    "no_checkpoints": {"train": {"checkpointing": False, "epochs": 1}},
}
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    """Studies are made on first use and shared by the module's tests."""
    made: dict[str, SimpleNamespace] = {}

    def get(name: str) -> SimpleNamespace:
        if name not in made:
            made[name] = exported_study(tmp_path_factory.mktemp(name), STUDIES[name])
        return made[name]

    return get


@pytest.mark.parametrize("name", list(STUDIES))
def test_predict_reproduces_the_study_reports_test_metrics(studies, name):
    made = studies(name)
    model = load_exported(made.folder, "cpu")
    gold = gold_posts(made.study)
    rows = predict_texts(model, [p["text"] for p in gold], [p["post_id"] for p in gold])
    assert [row["post_id"] for row in rows] == [p["post_id"] for p in gold]
    scored = score_predictions(model, gold, rows)
    expected = made.report["test_metrics"]
    assert scored["criteria_matching"] == expected["criteria_matching"]
    assert scored["evidence_binding"] == expected["evidence_binding"]
    for row in rows:
        for name_, decision in row["symptoms"].items():
            assert decision["present"] == (decision["probability"] >= 0.5), name_
        for evidence in filter(None, row["evidence"].values()):
            text = next(p["text"] for p in gold if p["post_id"] == row["post_id"])
            assert text[evidence["start"] : evidence["end"]] == evidence["text"]
    source = made.result["source_checkpoint"]
    if name == "no_checkpoints":
        assert source["kind"] == "retrained" and "checkpointing off" in source["reason"]
    else:
        assert (
            source["sha256"] == min(made.report["checkpoints"], key=lambda c: c["epoch"])["sha256"]
        )
    if name == "windows":
        split = encode(model.network, model.config, gold)
        assert len(split.examples) > len(gold)  # some test posts took several windows


def test_the_export_loads_with_transformers_and_holds_no_pickle(studies):
    from transformers import AutoModel, AutoTokenizer

    made = studies("truncate")
    folder = made.folder
    encoder = AutoModel.from_pretrained(folder, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = load_exported(folder, "cpu")
    ours = model.network.model.encoder.state_dict()
    assert all(torch.equal(ours[k], v) for k, v in encoder.state_dict().items())
    assert (
        tokenizer("I can't sleep")["input_ids"]
        == model.network.tokenizer("I can't sleep")["input_ids"]
    )
    names = {p.name for p in folder.iterdir()}
    assert not [n for n in names if n.endswith(PICKLE_SUFFIXES)]
    assert {"model.safetensors", "config.json", HEADS_NAME, INFO_NAME, "README.md"} <= names
    manifest = read_json(folder / MANIFEST_NAME)
    assert set(manifest["files"]) == names - {MANIFEST_NAME}
    info = read_json(folder / INFO_NAME)
    report = made.report
    assert info["symptoms"] == list(SYMPTOMS)
    assert info["decision_thresholds"] == dict.fromkeys(SYMPTOMS, 0.5)  # the default, per symptom
    assert info["null_threshold"] == report["test_metrics"]["evidence_binding"]["null_threshold"]
    assert info["study"] == {"id": report["study_id"], "name": report["study_name"]}
    assert info["best_trial"]["uuid"] == report["best_trial"]["uuid"]
    assert info["best_trial"]["epoch"] == min(c["epoch"] for c in report["checkpoints"])
    assert info["dataset"]["fingerprint"] == report["dataset"]["fingerprint"]
    assert info["metrics"]["test"] == report["test_metrics"]
    # train.amp true on the CPU: fp32, as every study here computed before precision was recorded
    assert info["compute"] == report["compute"]
    assert report["compute"]["device"] == "cpu" and report["compute"]["precision"] == "fp32"
    card = (folder / "README.md").read_text()
    assert "not a diagnostic" in card and "python -m leanhpo predict" in card
    assert f"{report['test_metrics']['criteria_matching']['f1_macro']:.4g}" in card
    assert not list(folder.parent.glob(".best_model.*"))  # no temporary folder left


@pytest.mark.parametrize(
    "name", [HEADS_NAME, "model.safetensors", INFO_NAME, "tokenizer.json", "README.md"]
)
def test_a_flipped_byte_is_caught_and_named(studies, tmp_path, name):
    folder = tmp_path / "copy"
    shutil.copytree(studies("truncate").folder, folder)
    path = folder / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ExportError, match=name.replace(".", r"\.")):
        load_exported(folder, "cpu")


def test_folders_that_are_not_exports_are_refused(studies, tmp_path):
    with pytest.raises(ExportError, match="not a leanhpo export"):
        load_exported(tmp_path, "cpu")
    with pytest.raises(ExportError, match="not a folder"):
        load_exported(tmp_path / "missing", "cpu")
    folder = tmp_path / "copy"
    shutil.copytree(studies("truncate").folder, folder)
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04 not loaded")
    with pytest.raises(ExportError, match=r"pytorch_model\.bin"):
        load_exported(folder, "cpu")


def test_a_rerun_replaces_the_export_and_a_foreign_folder_is_left_alone(studies, tmp_path):
    made = studies("truncate")
    before = read_json(made.folder / MANIFEST_NAME)
    export_best_model(made.study.dir, made.study.dir / "study_report.json", made.folder)
    after = read_json(made.folder / MANIFEST_NAME)
    assert after["created_at"] != before["created_at"]
    assert after["files"]["model.safetensors"] == before["files"]["model.safetensors"]
    assert not list(made.folder.parent.glob(".best_model.*"))
    load_exported(made.folder, "cpu")
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(ExportError, match="not a leanhpo export"):
        export_best_model(made.study.dir, made.study.dir / "study_report.json", foreign)
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_export_refuses_a_stale_or_missing_study_report(studies, tmp_path):
    made = studies("truncate")
    report = json.loads((made.study.dir / "study_report.json").read_text())
    primary = min(report["checkpoints"], key=lambda c: c["epoch"])
    primary["sha256"] = "0" * 64  # the trial's checkpoint was rewritten after the evaluation
    stale = tmp_path / "study_report.json"
    stale.write_text(json.dumps(report))
    with pytest.raises(ExportError, match="stale"):
        export_best_model(made.study.dir, stale, tmp_path / "out")
    with pytest.raises(ExportError, match="evaluate the study first"):
        export_best_model(made.study.dir, tmp_path / "absent.json", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_binary_pairs_export_predicts_what_evaluate_gives(tmp_path, sample_posts):
    """An export of a freshly built binary_pairs network: predict goes through the same code."""
    config = Config.from_dict(tiny_config_dict(tmp_path, model={"input_format": "binary_pairs"}))
    network = build_network(config, seed=3)
    # trained from a folder that the machine loading the export does not have
    stored = config.to_dict()
    stored["model"]["id"] = str(tmp_path / "gone" / "encoder")
    info = {"config": stored, "decision_threshold": 0.5, "null_threshold": 0.0, "seed": 3}
    write_export(network, info, model_card({**info, "symptoms": list(SYMPTOMS)}), tmp_path / "m")
    model = load_exported(tmp_path / "m", "cpu")
    posts = sample_posts["test"][:5]
    rows = predict_texts(model, [p["text"] for p in posts])
    reference = evaluate(
        network.model, encode(network, config, posts), config.model, config.train,
        network.device, network.pad_token_id, torch.ones(len(SYMPTOMS)),
    )  # fmt: skip
    assert [[row["symptoms"][s]["probability"] for s in SYMPTOMS] for row in rows] == (
        reference.probabilities.tolist()
    )
    spans = [pair.pred_span for pair in reference.evidence(0.0)]
    assert [
        None
        if row["evidence"][s] is None
        else (row["evidence"][s]["start"], row["evidence"][s]["end"])
        for row in rows
        for s in SYMPTOMS
    ] == spans
    assert [row["post_id"] for row in rows] == ["1", "2", "3", "4", "5"]


def _cli(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    return subprocess.run(
        [sys.executable, "-m", "leanhpo", *args],
        input=stdin,
        capture_output=True,
        env=env,
        timeout=300,
        check=False,
    )


BAD_INPUTS = {
    "missing_text_column": ("posts.csv", b"post_id,body\n1,I cannot sleep\n", "no `text` column"),
    "empty_text": (
        "posts.jsonl",
        b'{"text": "fine"}\n{"text": "  "}\n',
        "line 2: the text is empty",
    ),
    "non_utf8": ("posts.txt", "I feel fine\nJe suis épuisé\n".encode("latin-1"), "line 2"),
    "missing_file": (None, b"", "does not exist"),
}


@pytest.mark.parametrize("case", [*BAD_INPUTS, "not_an_export"])
def test_bad_input_exits_2_through_the_cli_and_writes_nothing(studies, tmp_path, case):
    model = studies("truncate").folder
    output = tmp_path / "out" / "predictions.jsonl"
    if case == "not_an_export":
        source = tmp_path / "posts.txt"
        source.write_text("I cannot sleep\n")
        model, expected = tmp_path, "not a leanhpo export"
    else:
        name, data, expected = BAD_INPUTS[case]
        source = tmp_path / (name or "absent.csv")
        if name:
            source.write_bytes(data)
    result = _cli("predict", "--model", str(model), "--input", str(source), "--output", str(output))
    assert result.returncode == 2, result.stderr
    stderr = result.stderr.decode()
    assert expected in stderr and (str(source) in stderr or str(model) in stderr), stderr
    assert "Traceback" not in stderr
    assert not output.exists() and not (output.parent.exists() and list(output.parent.iterdir()))


def test_csv_jsonl_and_text_inputs_agree(studies, tmp_path, capsys):
    from leanhpo.cli import main

    model = str(studies("truncate").folder)
    texts = [" ".join(p["text"].split()) for p in gold_posts(studies("truncate").study)][:6]
    texts[0] = 'She said "no, never", twice'  # quotes and commas survive CSV
    ids = [f"p{i}" for i in range(len(texts))]
    csv_file = tmp_path / "posts.csv"
    import csv

    with csv_file.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["post_id", "text", "extra"])
        writer.writerows([(i, t, "x") for i, t in zip(ids, texts, strict=True)])
    jsonl_file = tmp_path / "posts.jsonl"
    jsonl_file.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    text_file = tmp_path / "posts.data"  # any other extension is text
    text_file.write_text("\n".join(texts) + "\n")
    outputs = {}
    for name, source in (("csv", csv_file), ("jsonl", jsonl_file)):
        out = tmp_path / f"{name}.jsonl"
        assert (
            main(["predict", "--model", model, "--input", str(source), "--output", str(out)]) == 0
        )
        outputs[name] = [json.loads(line) for line in out.read_text().splitlines()]
    capsys.readouterr()
    assert main(["predict", "--model", model, "--input", str(text_file), "--batch-size", "2"]) == 0
    outputs["text"] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [row["post_id"] for row in outputs["csv"]] == ids
    assert [row["post_id"] for row in outputs["text"]] == [str(i + 1) for i in range(len(texts))]
    strip = [
        [{k: v for k, v in row.items() if k != "post_id"} for row in rows]
        for rows in outputs.values()
    ]
    assert strip[0] == strip[1]
    # another batch size pads differently: the same decisions, probabilities to float noise
    for a, b in zip(strip[0], strip[2], strict=True):
        for s in SYMPTOMS:
            assert a["symptoms"][s]["probability"] == pytest.approx(
                b["symptoms"][s]["probability"], abs=1e-5
            )


def test_stdin_to_stdout_through_the_cli(studies):
    result = _cli("predict", "--model", str(studies("truncate").folder), "--input", "-",
                  stdin=b"I can't sleep at night.\nNothing is fun any more.\n")  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.decode().splitlines()]
    assert [row["post_id"] for row in rows] == ["1", "2"]
    assert set(rows[0]["symptoms"]) == set(SYMPTOMS) == set(rows[0]["evidence"])
    assert "wrote 2 predictions to stdout" in result.stderr.decode()


def test_a_failure_half_way_leaves_the_previous_output_as_it_was(tmp_path):
    output = tmp_path / "predictions.jsonl"
    output.write_text("previous\n")

    def chunks():
        yield [{"post_id": "1"}]
        raise RuntimeError("the model died")

    with pytest.raises(RuntimeError):
        write_predictions(chunks(), str(output))
    assert output.read_text() == "previous\n"
    assert [p.name for p in tmp_path.iterdir()] == ["predictions.jsonl"]


def test_cli_export_writes_best_model(studies, tmp_path, monkeypatch):
    from leanhpo.cli import main

    made = studies("truncate")
    root = made.study.dir.parent.parent  # experiments/<study> lies under it
    (root / "config.yaml").write_text(yaml.safe_dump(made.study.config))
    monkeypatch.chdir(root)
    out = tmp_path / "exported"
    assert main(["export", "--out", str(out)]) == 0
    assert (
        read_json(out / INFO_NAME)["best_trial"] == read_json(made.folder / INFO_NAME)["best_trial"]
    )
    load_exported(out, "cpu")
