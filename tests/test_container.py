"""The container route: `make build`, then `make train-container` runs the tiny study in the image.

The same study also runs with the host's .venv, at the same time (each on one core, so the
wall time is about one study): CPU, same torch build, same thread count, so the study's test
metrics must be identical.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from services.container import ContainerImage, build_image, find_engine, image_config, tail
from workflowhelper import job_env, snakemake_command

pytestmark = [pytest.mark.workflow, pytest.mark.slow]

STUDY_TIMEOUT_S = 900
# train-container starts with `make build`, which only checks the layer cache here.
CONTAINER_TIMEOUT_S = 1200
TINY_OVERLAY = "tests/config/tiny.yaml"


@pytest.fixture(scope="module")
def container_image() -> ContainerImage:
    """The working tree's image, built with `make build` (skips where no engine can run)."""
    return build_image(find_engine())


def _study_report(experiments: Path) -> dict:
    return json.loads((experiments / "tiny" / "study_report.json").read_text())


def _not_owned_by(uid: int, root: Path) -> list[Path]:
    paths = [root, *root.rglob("*")]
    return [path for path in paths if path.lstat().st_uid != uid]


def test_image_runs_as_a_non_root_user_in_app(container_image: ContainerImage):
    assert image_config(container_image, "User") == "leanhpo"
    assert image_config(container_image, "WorkingDir") == "/app"


def test_tiny_study_in_the_container_matches_the_host(
    container_image: ContainerImage, tmp_path: Path
):
    host_dir = tmp_path / "host"
    host_log = (tmp_path / "host.log").open("w")
    host = subprocess.Popen(
        [*snakemake_command(host_dir), "--cores", "1"],
        stdout=host_log,
        stderr=subprocess.STDOUT,
        env=job_env(),
    )
    try:
        experiments = tmp_path / "container"
        result = container_image.make(
            "train-container",
            f"EXPERIMENTS={experiments}",
            f"OVERLAY={TINY_OVERLAY}",
            "CORES=1",
            timeout=CONTAINER_TIMEOUT_S,
        )
        assert result.returncode == 0, f"make train-container failed:\n{tail(result)}"
        assert host.wait(timeout=STUDY_TIMEOUT_S) == 0, (tmp_path / "host.log").read_text()[-4000:]
    finally:
        if host.poll() is None:
            host.kill()
            host.wait()
        host_log.close()

    assert _not_owned_by(os.getuid(), experiments) == []
    in_container = _study_report(experiments)
    on_host = _study_report(host_dir / "experiments")
    assert in_container["n_trials"] == on_host["n_trials"] == 3
    assert in_container["test_metrics"] == on_host["test_metrics"]
    assert in_container["test_metrics_ci"] == on_host["test_metrics_ci"]
