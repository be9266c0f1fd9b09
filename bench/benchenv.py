"""The environment block every bench result records, and paths as the results show them.

The bench scripts run as `python bench/<name>.py`, so this folder is on `sys.path` and they
`import benchenv`. Importing it costs nothing heavy: versions come from the installed packages'
metadata, not from importing them, and the device is asked of torch only when the script has
already imported it (a script that never imports torch ran nothing on a GPU).
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import re
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parents[1]
# Packages whose versions every result records (null when one is not installed).
VERSIONED = ("numpy", "torch", "transformers", "optuna", "mlflow")
# What a path outside the repository becomes: a temporary folder, anywhere else.
TMP, OUTSIDE = "<tmp>", "<outside>"


def environment(extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The common block, then the script's own `extra` keys (which win on a clash)."""
    memory = psutil.virtual_memory()
    block: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "memory_gib": round(memory.total / 2**30, 1),
        "memory_available_gib": round(memory.available / 2**30, 1),
        "load_average_start": os.getloadavg(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        **{name: package_version(name) for name in VERSIONED},
        **device(),
        "git": git_state(),
    }
    return block | dict(extra or {})


def cpu_model() -> str:
    try:
        found = re.search(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text())
    except OSError:  # not Linux
        found = None
    return found.group(1).strip() if found else (platform.processor() or platform.machine())


def package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def device() -> dict[str, Any]:
    """`device` is "cuda" or "cpu"; `gpu` the CUDA device's name, or null."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return {"device": "cpu", "gpu": None}
    return {"device": "cuda", "gpu": torch.cuda.get_device_name(0)}


def git_state() -> dict[str, Any] | None:
    """The commit the results came from, and whether tracked files differed from it."""
    try:
        commit = _git("rev-parse", "HEAD")
        changed = _git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):  # no git, not a checkout, or stuck
        return None
    return {"commit": commit, "dirty": bool(changed)}


def _git(*args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(REPO), *args], capture_output=True, text=True, check=True, timeout=30
    )
    return done.stdout.strip()


def relative_path(path: str | os.PathLike[str], temporary: bool = False) -> str:
    """A path as the results show it: relative to the repository, else a placeholder.

    Inside the repository: `bench/results/x.json`. Under the system's temporary folder, or
    any folder the caller says is `temporary`: `<tmp>/` and its path below that folder (the
    name alone for a temporary folder elsewhere). Anywhere else: `<outside>/` and its name.
    """
    resolved = Path(path).expanduser().resolve()
    if resolved.is_relative_to(REPO):
        return resolved.relative_to(REPO).as_posix() or "."
    system_tmp = Path(tempfile.gettempdir()).resolve()
    if resolved.is_relative_to(system_tmp):
        return f"{TMP}/{resolved.relative_to(system_tmp).as_posix()}"
    return f"{TMP if temporary else OUTSIDE}/{resolved.name}"


def hide_folder(text: str, folder: str | os.PathLike[str], temporary: bool = True) -> str:
    """`text` with each mention of `folder` (a log line, a message) replaced by its shown form."""
    absolute = str(Path(folder).resolve())
    return text.replace(absolute, relative_path(absolute, temporary))
