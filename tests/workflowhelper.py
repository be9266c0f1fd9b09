"""The real Snakefile run in a test's own working folder: its command and its environment."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).parent / "snakemake"
KILL_WINDOW = (0.04, 0.2)  # kill_storm's instants, as shares of the uninterrupted run's wall time


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


def kill_storm(
    command: list[str],
    rounds: int,
    seed: int,
    uninterrupted_s: float,
    after_kill: Callable[[], None] | None = None,
) -> list[float]:
    """Run `command` (in its own session) up to `rounds` times, each killed with SIGKILL to its
    whole process group (Snakemake and its jobs) at a seeded random instant; `after_kill` runs
    after each kill. Stops early when a run ends before its instant. Returns the instants.

    The instants are drawn from KILL_WINDOW times `uninterrupted_s`, the wall time of the same
    run without kills measured in the same test: a fixed window in seconds lets a study that
    got faster (a warm worker, a quieter machine) finish before the kills a test asks for. A
    killed run progresses at most its instant (less: the resume redoes the unsaved epoch), so
    three kills cover at most 60 % of the study, with room for a storm run up to 1.6 times faster
    than the measured one, and the fourth round at the earliest can end it.
    """
    rng = random.Random(seed)
    low, high = (share * uninterrupted_s for share in KILL_WINDOW)
    kills: list[float] = []
    for _ in range(rounds):
        process = subprocess.Popen(
            command,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=job_env(),
            start_new_session=True,
        )
        instant = rng.uniform(low, high)
        try:
            process.wait(timeout=instant)
            break  # finished before this round's instant came
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            kills.append(round(instant, 1))
            if after_kill is not None:
                after_kill()
    print(f"kill -9 at {kills} s after each start (uninterrupted: {uninterrupted_s:.1f} s)")
    return kills


def job_counts(output: str) -> dict[str, int]:
    """The 'Job stats' table of a (dry) run's output: {rule: count}."""
    counts = {}
    for line in output.split("Job stats:", 1)[-1].splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            counts[parts[0]] = int(parts[1])
    return counts
