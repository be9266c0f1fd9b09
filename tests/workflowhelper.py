"""The real Snakefile run in a test's own working folder: its command and its environment."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).parent / "snakemake"


def snakemake_command(workdir: Path, *overlays: Path | str) -> list[str]:
    """`snakemake` on the repository's Snakefile in `workdir`, with config.yaml, the tiny test
    config and `overlays` (callers add --cores and the rest)."""
    configs = [REPO / "config.yaml", REPO / "tests" / "config" / "tiny.yaml", *overlays]
    command = [str(SNAKEMAKE), "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir)]
    return [*command, "--configfile", *map(str, configs)]


def job_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """`base` (default: this process's environment) with the venv first on PATH, so the jobs
    Snakemake starts find its python and snakemake."""
    env = dict(os.environ if base is None else base)
    env["PATH"] = f"{SNAKEMAKE.parent}:{env['PATH']}"
    return env
