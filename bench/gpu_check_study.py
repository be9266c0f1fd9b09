"""The study and parity steps of bench/gpu_check.py (see its docstring): a study killed and
resumed against an uninterrupted one, then predict with its export on the device and on the CPU.
Everything runs through leanhpo's own functions: the trial job (in this process, and in a child
`python -m leanhpo run-trial` for the kill), the test evaluation, the export and predict."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from gpu_check_steps import Check

from leanhpo.data import load_split, prepare_dataset
from leanhpo.export import load_exported, predict_texts
from leanhpo.export.precision import PrecisionWarning
from leanhpo.metric_names import SYMPTOMS
from leanhpo.study.create import create_study
from leanhpo.study.evaluate import evaluate_study, structure_metrics
from leanhpo.study.export import export_best_model
from leanhpo.training.evaluation import evidence_pairs
from leanhpo.training.metrics import criteria_metrics, evidence_metrics
from leanhpo.training.setup import encode
from leanhpo.trial.job import run_trial_job

KILL_TIMEOUT_S = 600


# -- study: kill -9 and resume against an uninterrupted run -----------------------------------


def study_step(check: Check) -> dict[str, Any]:
    configs = {name: check.config(name) for name in ("gpu_a", "gpu_b")}
    for name, config in configs.items():
        folder = check.study_dir(name)
        prepare_dataset(config["data"], folder / "data")
        create_study({k: config[k] for k in ("study", "tracking")}, folder / "study.json")
    a, b = check.study_dir("gpu_a"), check.study_dir("gpu_b")
    uninterrupted = [_trial(configs["gpu_a"], a, slot) for slot in (0, 1)]
    kill = _killed_trial(check, configs["gpu_b"], b)
    resumed = _trial(configs["gpu_b"], b, 0)
    differing = _differing(uninterrupted[0]["history"], resumed["history"])
    weights = {
        name: _checkpoint_weights(folder / "trial_0000") for name, folder in (("a", a), ("b", b))
    }
    report_path = a / "study_report.json"
    paths = [a / f"trial_{slot:04d}" / "report.json" for slot in (0, 1)]
    report = evaluate_study(a / "study.json", a / "data", paths, report_path, configs["gpu_a"])
    export_best_model(a, report_path, a / "best_model")
    check.found.update(export=a / "best_model", report=report, data=a / "data")
    same_weights = bool(weights["a"]) and weights["a"] == weights["b"]
    resumed_from = resumed["timings"]["resumed_from_epoch"]
    ok = kill["landed_mid_trial"] and resumed_from >= 1 and not differing and same_weights
    test = report["test_metrics"]
    return {
        "ok": ok,
        "summary": (
            f"killed in epoch {kill['epoch']} after {kill['delay_s']} s, resumed from epoch "
            f"{resumed_from}: {len(differing)} metrics differ, weights "
            f"{'identical' if same_weights else 'DIFFER'}; test macro-F1 "
            f"{test['criteria_matching']['f1_macro']:.4f}"
        ),
        "trials": [
            {"slot": r["slot"], "status": r["status"], "best": r["best_validation_score"]}
            for r in uninterrupted
        ],
        "kill": kill,
        "resumed_from_epoch": resumed_from,
        "differing_metrics": differing,
        "checkpoint_weights": weights,
        "compute": report["compute"],
        "test_criteria_f1_macro": test["criteria_matching"]["f1_macro"],
        "test_evidence_f1": test["evidence_binding"]["f1"],
        "train_seconds": [r["timings"]["train_seconds"] for r in uninterrupted],
    }


def _trial(config: dict[str, Any], folder: Path, slot: int) -> dict[str, Any]:
    report = folder / f"trial_{slot:04d}" / "report.json"
    return run_trial_job(slot, config, folder / "study.json", folder / "data", report)


def _killed_trial(check: Check, config: dict[str, Any], folder: Path) -> dict[str, Any]:
    """Slot 0 in a child process (`python -m leanhpo run-trial`), SIGKILLed in epoch 2."""
    config_file = check.work / f"{config['study']['name']}.yaml"
    config_file.write_text(yaml.safe_dump(config, sort_keys=False))
    # The same thread count as this process: CPU reductions add in another order otherwise.
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    command = [sys.executable, "-m", "leanhpo", "run-trial", "--slot", "0"]
    log = folder / "trial_0000" / "logs" / "trial.jsonl"
    with open(check.work / "killed_trial.out", "wb") as out:
        child = subprocess.Popen(
            [*command, "--config", str(config_file)],
            cwd=check.work,
            env=env,
            stdout=out,
            stderr=out,
        )
        try:
            records = _wait_for_epoch(child, log, 2)
            first = {
                r["context"]["kind"]: r["timestamp"]
                for r in records
                if r["context"].get("epoch") == 1
            }
            epoch_s = _seconds(first["epoch_start"], first["epoch_end"])
            delay = 0.0 if check.smoke else round(min(0.5 * epoch_s, 30.0), 2)
            time.sleep(delay)
            child.send_signal(signal.SIGKILL)
        finally:
            child.kill()
            code = child.wait()
    finished = (folder / "trial_0000" / "report.json").exists()
    last = _records(log)[-1]["context"]
    return {
        "epoch": 2,
        "epoch_1_seconds": round(epoch_s, 2),
        "delay_s": delay,
        "returncode": code,
        "last_event": f"{last.get('kind')} (epoch {last.get('epoch')})",
        "landed_mid_trial": code == -signal.SIGKILL and not finished,
    }


def _wait_for_epoch(child: subprocess.Popen[bytes], log: Path, epoch: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + KILL_TIMEOUT_S
    while time.monotonic() < deadline:
        records = _records(log)
        if any(
            r["context"].get("kind") == "epoch_start" and r["context"].get("epoch") == epoch
            for r in records
        ):
            return records
        if child.poll() is not None:
            raise RuntimeError(f"the trial process ended ({child.returncode}) before epoch {epoch}")
        time.sleep(0.01)
    raise TimeoutError(f"no epoch {epoch} within {KILL_TIMEOUT_S} s")


def _records(log: Path) -> list[dict[str, Any]]:
    """The trial log's records so far; a line the child is still writing is left for later."""
    if not log.exists():
        return []
    records = []
    for line in log.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            break
    return records


def _seconds(start: str, end: str) -> float:
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def _differing(one: list[dict[str, Any]], two: list[dict[str, Any]]) -> list[str]:
    """`epoch N: key` of every metric that is not identical (or missing on one side)."""
    found = []
    for x, y in zip(one, two, strict=False):
        keys = set(x["metrics"]) | set(y["metrics"])
        found += [
            f"epoch {x['epoch']}: {k}"
            for k in sorted(keys)
            if x["metrics"].get(k) != y["metrics"].get(k)
        ]
    if len(one) != len(two):
        found.append(f"epochs: {len(one)} against {len(two)}")
    return found


def _checkpoint_weights(trial_dir: Path) -> dict[str, str]:
    """Epoch -> SHA-256 of the checkpoint's weights file, from its manifest."""
    found = {}
    for manifest in sorted(trial_dir.glob("checkpoints/epoch_*/MANIFEST.json")):
        files = json.loads(manifest.read_text())["files"]
        found[manifest.parent.name] = files["model.safetensors"]["sha256"]
    return found


# -- parity: predict on the device against the CPU, in the recorded precision and in fp32 ----


def parity_step(check: Check) -> dict[str, Any]:
    if "export" not in check.found:
        raise RuntimeError("parity predicts with the study step's export: run the study step too")
    folder, report = check.found["export"], check.found["report"]
    gold = load_split(check.found["data"], "test")
    variants = {
        "device": (check.device, "auto"),
        "cpu": ("cpu", "auto"),
        "cpu_fp32": ("cpu", "fp32"),
    }
    rows, scores, used = {}, {}, {}
    for name, (device, precision) in variants.items():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", PrecisionWarning)
            model = load_exported(folder, device, precision)
        rows[name] = predict_texts(model, [p["text"] for p in gold], [p["post_id"] for p in gold])
        scores[name] = _score(model, gold, rows[name])
        used[name] = {
            "device": device,
            "precision": model.precision,
            "warnings": [
                str(w.message) for w in caught if issubclass(w.category, PrecisionWarning)
            ],
        }
    expected = {k: report["test_metrics"][k] for k in ("criteria_matching", "evidence_binding")}
    reproduces = {k: scores["device"][k] for k in expected} == expected
    compared = {name: _changes(rows["device"], rows[name]) for name in ("cpu", "cpu_fp32")}
    macro = {name: scores[name]["criteria_matching"]["f1_macro"] for name in variants}
    return {
        "ok": reproduces,
        "summary": (
            f"device reproduces the report: {reproduces}; against the CPU "
            f"({used['cpu']['precision']}) {compared['cpu']['decisions']} decisions and "
            f"{compared['cpu']['spans']} spans of {compared['cpu']['pairs']} differ, macro-F1 "
            f"{macro['device']:.4f} / {macro['cpu']:.4f} (CPU fp32: {compared['cpu_fp32']['decisions']} "
            f"decisions, {compared['cpu_fp32']['spans']} spans, {macro['cpu_fp32']:.4f})"
        ),
        "test_posts": len(gold),
        "reproduces_report": reproduces,
        "report_compute": report["compute"],
        "predicted_with": used,
        "against_device": compared,
        "criteria_f1_macro": macro,
        "evidence_f1": {name: scores[name]["evidence_binding"]["f1"] for name in variants},
    }


def _score(model: Any, gold: list[dict[str, Any]], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Predict's rows scored as the study report scores the test split (losses aside)."""
    probabilities = np.array(
        [[row["symptoms"][s]["probability"] for s in SYMPTOMS] for row in rows]
    )
    labels = np.array([post["labels"] for post in gold])
    examples, _ = evidence_pairs(encode(model.network, model.config, gold), {})
    spans = [_span(row["evidence"][s]) for row in rows for s in SYMPTOMS]
    predicted = [
        pair.__class__(**{**vars(pair), "pred_span": span})
        for pair, span in zip(examples, spans, strict=True)
    ]
    decision = np.array(model.decision_thresholds)
    flat: dict[str, Any] = {
        f"criteria_{k}": v for k, v in criteria_metrics(labels, probabilities, decision).items()
    }
    flat.update({f"evidence_{k}": v for k, v in evidence_metrics(predicted).items()})
    flat["evidence_null_threshold"] = model.null_threshold
    return structure_metrics(flat)


def _span(evidence: dict[str, Any] | None) -> tuple[int, int] | None:
    return None if evidence is None else (evidence["start"], evidence["end"])


def _changes(one: list[dict[str, Any]], two: list[dict[str, Any]]) -> dict[str, Any]:
    """Symptom decisions and evidence spans that differ, and the largest probability change."""
    pairs = [(a, b, s) for a, b in zip(one, two, strict=True) for s in SYMPTOMS]
    return {
        "pairs": len(pairs),
        "decisions": sum(
            a["symptoms"][s]["present"] != b["symptoms"][s]["present"] for a, b, s in pairs
        ),
        "spans": sum(a["evidence"][s] != b["evidence"][s] for a, b, s in pairs),
        "max_probability_change": max(
            (
                abs(a["symptoms"][s]["probability"] - b["symptoms"][s]["probability"])
                for a, b, s in pairs
            ),
            default=0.0,
        ),
    }
