"""Unit tests of the parse-time guard (leanhpo.workflow.guard), the per-key params and the
printed commands (leanhpo.commands). The end-to-end checks are in tests/test_first_hour.py."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import pytest

from leanhpo.commands import Invocation, executable, join
from leanhpo.workflow.guard import rerun_changes, rerun_refusal
from leanhpo.workflow.params import (
    RUNTIME_ENV,
    announce_runtime,
    as_params,
    from_params,
    parse_param,
)

SECTIONS = {
    "study": {"name": "demo", "seed": 42, "storage_timeout_s": 600, "lease_grace_s": 120},
    "train": {"epochs": 2, "max_batch_rows": None, "class_weights": None},
    "study_enqueue": [{"loss": "focal"}],
    "search_space": {
        "loss": {"type": "categorical", "choices": ["bce", "focal"]},
        "focal_gamma": {"type": "float", "low": 1.0, "high": 5.0, "condition": {"loss": ["focal"]}},
    },
}


def test_params_are_one_per_key_and_name_themselves():
    params = as_params(SECTIONS)
    assert params["train__epochs"] == ("train.epochs", 2)
    assert params["study__name"] == ("study.name", "demo")
    assert "study__storage_timeout_s" not in params  # runtime keys are not rerun triggers
    assert "train__max_batch_rows" not in params
    assert parse_param(repr(params["train__epochs"])) == ("train.epochs", 2)  # as recorded
    assert parse_param("{'whole': 'section'}") is None  # an older record's form


def test_a_password_reference_is_no_wildcard_for_snakemake():
    """Snakemake formats str params with the job's wildcards: `${PASSWORD}` must not be one."""
    from snakemake.exceptions import WildcardError
    from snakemake.io import apply_wildcards

    params = as_params({"study": {"storage": "postgresql://u:${LEANHPO_STORAGE_PASSWORD}@h/db"}})
    value = params["study__storage"]
    assert not isinstance(value, str)  # only str params are formatted
    with pytest.raises(WildcardError):  # what a str param would meet
        apply_wildcards(f"{value[0]}={value[1]}", {})


def test_params_round_trip_with_the_search_space_order_and_the_runtime_keys(monkeypatch):
    monkeypatch.delenv(RUNTIME_ENV, raising=False)
    announce_runtime(
        {
            "study": {"storage_timeout_s": 5, "lease_grace_s": 7},
            "tracking": {"write_timeout_s": 3, "final_drain_s": 60},
            "train": {"max_batch_rows": 32, "deterministic": False},
        }
    )
    back = from_params(as_params(SECTIONS).values())
    assert list(back["search_space"]) == ["loss", "focal_gamma"]  # the sampling order
    assert back["study"]["storage_timeout_s"] == 5 and back["train"]["max_batch_rows"] == 32
    assert back["train"]["deterministic"] is False
    assert back["study_enqueue"] == [{"loss": "focal"}]
    assert "tracking" not in back  # only the sections the rule was given


def test_the_end_of_run_drain_bound_is_no_rerun_trigger():
    """tracking.final_drain_s only bounds the last replay of a run (issue 26): a study started
    before it existed, or run again with another value, reruns nothing."""
    params = as_params({"tracking": {"uri": "sqlite:///m.db", "final_drain_s": 5}})
    assert list(params) == ["tracking__uri"]


def _record(metadata: Path, output: str, rule: str, params: dict[str, object]) -> None:
    """A Snakemake 9 metadata record, as its file persistence names and writes it."""
    name = base64.urlsafe_b64encode(output.encode()).decode()
    path = metadata / name
    path.parent.mkdir(parents=True, exist_ok=True)
    # Snakemake records a str param as its repr.
    record = {"rule": rule, "params": sorted(repr(v) for v in params.values())}
    path.write_text(json.dumps({**record, "record_format_version": 6}))


def _finished_study(tmp_path: Path, epochs: int = 2, keep: int = 3) -> dict[str, dict]:
    rules = {
        "run_trial": as_params({"train": {"epochs": epochs}, "retention": {"keep": keep}}),
        "prune_study": as_params({"retention": {"keep": keep}}),
    }
    metadata = tmp_path / ".snakemake" / "metadata"
    for slot in range(3):
        output = f"experiments/demo/trial_{slot:04d}/report.json"
        (tmp_path / output).parent.mkdir(parents=True)
        (tmp_path / output).write_text("{}")
        _record(metadata, output, "run_trial", rules["run_trial"])
    (tmp_path / "experiments/demo/retention.json").write_text("{}")
    _record(metadata, "experiments/demo/retention.json", "prune_study", rules["prune_study"])
    # another study's output in the same folder is not this study's business
    _record(metadata, "experiments/other/retention.json", "prune_study", {})
    return rules


def test_no_change_no_refusal(tmp_path):
    rules = _finished_study(tmp_path)
    changes = rerun_changes("experiments/demo", rules, tmp_path)
    assert changes == {}
    assert rerun_refusal("demo", changes, rerun_finished=False, n_trials=3) is None


def test_a_training_change_is_refused_even_when_reruns_are_accepted(tmp_path):
    _finished_study(tmp_path)
    now = {
        "run_trial": as_params({"train": {"epochs": 3}, "retention": {"keep": 3}}),
        "prune_study": as_params({"retention": {"keep": 3}}),
    }
    changes = rerun_changes("experiments/demo", now, tmp_path)
    assert list(changes) == ["train.epochs"]
    assert changes["train.epochs"].trials == {0, 1, 2}
    for accepted in (False, True):
        message = rerun_refusal("demo", changes, rerun_finished=accepted, n_trials=3)
        assert message is not None
        assert "train.epochs: 2 -> 3" in message and "finished trials 1, 2, 3 of 3" in message
        assert "new study.name" in message


def test_a_retention_change_needs_asking(tmp_path):
    _finished_study(tmp_path)
    now = {
        "run_trial": as_params({"train": {"epochs": 2}, "retention": {"keep": 1}}),
        "prune_study": as_params({"retention": {"keep": 1}}),
    }
    changes = rerun_changes("experiments/demo", now, tmp_path)
    message = rerun_refusal("demo", changes, rerun_finished=False, n_trials=3)
    assert message and "retention.keep: 3 -> 1" in message and "rerun_finished=True" in message
    assert rerun_refusal("demo", changes, rerun_finished=True, n_trials=3) is None


def test_outputs_that_are_gone_or_records_of_another_form_are_left_to_snakemake(tmp_path):
    _finished_study(tmp_path)
    (tmp_path / "experiments/demo/retention.json").unlink()
    metadata = tmp_path / ".snakemake" / "metadata"
    _record(metadata, "experiments/demo/trial_0000/report.json", "run_trial", {"x": "{'old': 1}"})
    now = {"prune_study": as_params({"retention": {"keep": 1}})}
    assert rerun_changes("experiments/demo", now, tmp_path) == {}


def test_commands_use_this_environment_and_leave_password_references_to_the_shell(tmp_path):
    root = Path(sys.executable).parents[2]  # .venv/bin/python -> the folder holding .venv
    assert executable("python", root) == str(
        Path(sys.executable).parent.relative_to(root) / "python"
    )
    assert executable("python", tmp_path).startswith("/")  # not under the folder: absolute
    assert join(["x", "postgresql://u:${PGPASSWORD}@h/db", "a b"]) == (
        "x \"postgresql://u:${PGPASSWORD}@h/db\" 'a b'"
    )


def test_a_leanhpo_command_for_another_working_folder_changes_into_it(tmp_path):
    workdir = tmp_path / "study"
    workdir.mkdir()
    config = workdir / "config.yaml"
    config.write_text("study: {name: x}\n")
    invocation = Invocation(cwd=tmp_path, workdir=workdir, config_files=(config,))
    command = invocation.leanhpo("summary")
    assert command.startswith("cd study && ") and "--config config.yaml" in command
    # and it runs as printed: the CLI finds the config there
    result = subprocess.run(command, shell=True, cwd=tmp_path, capture_output=True, text=True)
    assert "has no study report yet" in result.stdout, result.stderr


@pytest.mark.parametrize("refresh", [False, True])
def test_refusal_message_says_nothing_was_touched(tmp_path, refresh):
    _finished_study(tmp_path)
    keep = 1 if refresh else 3
    epochs = 2 if refresh else 5
    now = {
        "run_trial": as_params({"train": {"epochs": epochs}, "retention": {"keep": keep}}),
        "prune_study": as_params({"retention": {"keep": keep}}),
    }
    message = rerun_refusal(
        "demo", rerun_changes("experiments/demo", now, tmp_path), False, n_trials=3
    )
    assert message and message.startswith("leanhpo: this config would redo finished work")
    assert "nothing on disk was changed" in message


def test_validate_config_checks_the_data_and_the_model_too(tmp_path, capsys):
    from leanhpo.cli import main

    base = Path(__file__).resolve().parents[1] / "config.yaml"
    for overlay, named in (
        ("data: {source: local, path: /nonexistent/redsm5}\n", "data.path"),
        ("model: {id: ./no-such-model}\n", "model.id"),
    ):
        path = tmp_path / "overlay.yaml"
        path.write_text(overlay)
        assert main(["validate-config", "--config", str(base), "--configfile", str(path)]) == 2
        assert named in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "planned"),
    [
        (["snakemake", "-n"], True),
        (["snakemake", "--cores", "1", "-np"], True),
        (["snakemake", "--dry-run"], True),
        (["snakemake", "--cores", "1"], False),
        (["snakemake", "-c4", "--configfile", "config.yaml"], False),
    ],
)
def test_a_dry_run_is_told_from_the_command_line(argv, planned):
    from leanhpo.workflow.stops import dry_run

    assert dry_run(argv) is planned
