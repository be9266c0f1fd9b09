"""The project's container image, built by `make build`, and the engine that runs it.

The engine is the Makefile's: docker when its engine answers, else podman through
`podman-local.sh` (a local Debian base image, for machines with no Docker engine and no
registry; its `setup` installs podman with apt once per machine). Where neither can work, tests
that need the image skip with the reason. The image gets its own tag (leanhpo:test); the layer
cache and the base image stay between runs, so only a changed layer is rebuilt.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PODMAN_LOCAL = Path(os.environ.get("PODMAN_LOCAL", REPO.parent / "shared/tools/podman-local.sh"))
IMAGE = "leanhpo:test"
# A cold build (no layer cache) installs the whole lock: about 7 minutes on 2 cores.
BUILD_TIMEOUT_S = 1800
PODMAN_TOOLS = ("podman", "runc", "debootstrap")


@dataclass(frozen=True)
class ContainerImage:
    engine: str  # the Makefile's CONTAINER, e.g. "docker" or "/…/podman-local.sh podman"
    image: str

    def make(self, target: str, *variables: str, timeout: float) -> subprocess.CompletedProcess:
        """`make TARGET` with this engine and image, output captured."""
        command = ["make", "-C", str(REPO), "--no-print-directory", target]
        command += [f"CONTAINER={self.engine}", f"IMAGE={self.image}", *variables]
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout)

    def engine_command(self, *args: str) -> list[str]:
        return [*self.engine.split(), *args]


def _docker_works() -> bool:
    if shutil.which("docker") is None:
        return False
    probe = subprocess.run(["docker", "info"], capture_output=True, timeout=60)
    return probe.returncode == 0


def find_engine() -> str:
    """The engine the Makefile would pick, or skip with why none can run here."""
    if _docker_works():
        return "docker"
    if not PODMAN_LOCAL.is_file():
        if shutil.which("podman"):
            return "podman"
        pytest.skip(f"no container engine: `docker info` fails, {PODMAN_LOCAL} is missing")
    installed = all(shutil.which(tool) for tool in PODMAN_TOOLS)
    if not installed and (os.geteuid() != 0 or shutil.which("apt-get") is None):
        pytest.skip("podman cannot be set up here: podman-local.sh setup needs root and apt-get")
    return f"{PODMAN_LOCAL} podman"


def tail(result: subprocess.CompletedProcess, chars: int = 4000) -> str:
    return (result.stdout + result.stderr)[-chars:]


def build_image(engine: str, image: str = IMAGE) -> ContainerImage:
    built = ContainerImage(engine, image)
    result = built.make("build", timeout=BUILD_TIMEOUT_S)
    assert result.returncode == 0, f"make build failed:\n{tail(result)}"
    return built


def image_config(image: ContainerImage, field: str) -> str:
    """One field of the image's config (`User`, `WorkingDir`, ...), as the engine prints it."""
    command: Sequence[str] = image.engine_command(
        "image", "inspect", "--format", f"{{{{.Config.{field}}}}}", image.image
    )
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=True)
    return result.stdout.strip()
