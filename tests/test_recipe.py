"""The real-study recipe (overlays/real-redsm5.yaml, README "Run it on the real ReDSM5") runs
as written up to what this machine lacks (the gated files, the encoder, a GPU) and stops there
with what to do."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from workflowhelper import REPO, SNAKEMAKE, job_env

from leanhpo.cli import main
from leanhpo.config import deep_merge, validate_config
from leanhpo.data import generate_sample
from leanhpo.exit_codes import EXIT_BAD_INPUT

RECIPE = REPO / "overlays" / "real-redsm5.yaml"


def recipe() -> dict:
    with (REPO / "config.yaml").open() as base, RECIPE.open() as overlay:
        return validate_config(deep_merge(yaml.safe_load(base), yaml.safe_load(overlay)))


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A study folder with the recipe's relative paths, an empty hub cache and SQLite stores."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path


def run(*configs: Path, command: str, extra: tuple[str, ...] = ()) -> int:
    args = [command, *extra]
    for config in (REPO / "config.yaml", RECIPE, *configs):
        args += ["--config", str(config)]
    return main(args)


def test_the_recipe_is_a_valid_windows_study_on_one_gpu() -> None:
    config = recipe()
    model = config["model"]
    assert (model["id"], model["long_posts"], config["train"]["device"]) == (
        "bert-base",
        "windows",
        "cuda",
    )
    # The windows cover the longest real post (8,541 tokens) whole.
    assert (
        model["max_length"]
        + (model["max_windows"] - 1) * (model["max_length"] - 2 - model["window_stride"])
        > 8_541
    )
    assert config["resources"]["gpu"] == 1


def test_snakemake_plans_the_study(tmp_path: Path) -> None:
    command = [
        str(SNAKEMAKE),
        "--snakefile",
        str(REPO / "Snakefile"),
        "--directory",
        str(tmp_path),
        "--configfile",
        str(REPO / "config.yaml"),
        str(RECIPE),
        "--cores",
        "4",
        "--dry-run",
    ]
    done = subprocess.run(command, env=job_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr + done.stdout
    assert "run_trial" in done.stdout and "length_report" in done.stdout
    assert done.stdout.count("wildcards: slot=") == recipe()["study"]["n_trials"]


def test_without_the_files_prepare_says_where_to_get_them(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(command="prepare-data") == EXIT_BAD_INPUT
    message = capsys.readouterr().err
    assert "data/redsm5" in message and "redsm5_posts.csv" in message
    assert "huggingface.co/datasets/irlab-udc/redsm5" in message
    assert not (workdir / "experiments" / "redsm5-bert-base" / "data" / "train.jsonl").exists()


def test_with_the_files_it_stops_at_the_encoder_then_at_the_gpu(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # ReDSM5-format CSVs where the recipe expects the real ones.
    generate_sample(workdir / "data" / "redsm5", 40, seed=3, profile="long_tailed")
    assert run(command="prepare-data") == 0
    assert (workdir / "experiments" / "redsm5-bert-base" / "data" / "data_report.json").is_file()

    # The encoder is not in the (empty) cache and the hub is off.
    assert run(command="length-report") == EXIT_BAD_INPUT
    message = capsys.readouterr().err
    assert "google-bert/bert-base-uncased" in message and "HF_HUB_OFFLINE" in message

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU; the no-GPU stop cannot happen here")
    # With an encoder that is here, the trial stops at the device, before any training.
    tiny = workdir / "tiny.yaml"
    tiny.write_text(
        yaml.safe_dump({"model": {"id": "tiny", "max_length": 128, "window_stride": 32}})
    )
    assert run(tiny, command="create-study") == 0
    capsys.readouterr()
    assert run(tiny, command="run-trial", extra=("--slot", "0")) == EXIT_BAD_INPUT
    message = capsys.readouterr().err
    assert "no CUDA device is visible" in message and "resources.gpu: 1" in message
    checkpoints = workdir / "experiments" / "redsm5-bert-base" / "trial_0000" / "checkpoints"
    assert not any(checkpoints.glob("epoch_*"))
