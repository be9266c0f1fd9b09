"""bench/gpu_check.py, the check prepared for a GPU (issue 28, part 3): without CUDA it stops at
once, and `--device cpu --smoke` runs each of its steps on the CPU at toy size."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO

SCRIPT = REPO / "bench" / "gpu_check.py"


def _run(tmp_path, *args: str, timeout: int) -> subprocess.CompletedProcess[str]:
    # No GPU for these runs even on a machine that has one: the full check takes minutes.
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "TMPDIR": str(tmp_path)}
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_without_cuda_it_says_so_and_exits_0_at_once(tmp_path):
    out = tmp_path / "gpu_check.json"
    done = _run(tmp_path, "--out", str(out), timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("no CUDA")
    assert not out.exists()  # a real GPU's results are never overwritten by a run without one


@pytest.mark.slow
def test_smoke_runs_every_step_on_the_cpu(tmp_path):
    out = tmp_path / "gpu_check.json"
    done = _run(tmp_path, "--device", "cpu", "--smoke", "--out", str(out), timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    text = out.read_text()
    assert str(tmp_path) not in text and str(REPO) not in text  # no absolute paths
    record = json.loads(text)
    steps = record["steps"]
    assert list(steps) == ["study", "checkpoint", "throughput", "parity"]
    assert all(step["ok"] for step in steps.values()), steps
    study = steps["study"]
    assert study["kill"]["landed_mid_trial"] and study["resumed_from_epoch"] == 1
    assert study["differing_metrics"] == []
    assert study["checkpoint_weights"]["a"] == study["checkpoint_weights"]["b"]
    assert study["compute"]["precision"] == "bf16"  # bf16 autocast on the CPU, as asked
    assert steps["checkpoint"]["identical_after_load"]
    assert steps["throughput"]["deterministic"]["identical_repeats"]
    parity = steps["parity"]
    assert parity["reproduces_report"]
    assert parity["predicted_with"]["cpu_fp32"]["precision"] == "fp32"
    assert "predicting on cpu in fp32" in parity["predicted_with"]["cpu_fp32"]["warnings"][0]
    assert "| parity | yes |" in done.stdout
