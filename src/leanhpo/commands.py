"""Commands as a person can paste them: with the path of the environment leanhpo runs in.

A message that says `snakemake ...` or `python -m leanhpo ...` fails in a shell where the
project's .venv is not activated ("command not found", "No module named leanhpo"). Every command
leanhpo prints (the closing summary, error messages) is rendered here instead, with the
interpreter and Snakemake of the running environment, relative to the current folder when they
live under it (`.venv/bin/python -m leanhpo summary`), else absolute.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path


def executable(name: str, cwd: Path | None = None) -> str:
    """`name` (python, snakemake, mlflow, ...) from this interpreter's bin folder, as a path
    relative to `cwd` (default: the current folder) when it lies under it."""
    folder = Path(sys.executable).parent
    candidate = folder / name
    if name == "python" and not candidate.exists():
        candidate = Path(sys.executable)
    return _shown(candidate, cwd)


def _shown(path: Path, cwd: Path | None) -> str:
    base = (cwd or Path.cwd()).absolute()
    absolute = path if path.is_absolute() else base / path
    try:
        return str(absolute.relative_to(base))
    except ValueError:
        return str(absolute)


def shown_path(path: Path | str, cwd: Path | None = None) -> str:
    """A file of the study as seen from `cwd` (relative when under it)."""
    return _shown(Path(path).absolute(), cwd)


def leanhpo(*args: str, cwd: Path | None = None) -> str:
    """`.venv/bin/python -m leanhpo <args>`."""
    return join([executable("python", cwd), "-m", "leanhpo", *args])


def join(words: Sequence[str]) -> str:
    """Words quoted for a POSIX shell, leaving `${VAR}` references to the shell (passwords are
    written that way, see leanhpo.urls): double quotes where a word holds one."""
    return " ".join(_quote(word) for word in words)


def _quote(word: str) -> str:
    if "${" in word and not any(c in word for c in '"`\\'):
        return f'"{word}"'
    return shlex.quote(word)


@dataclass(frozen=True)
class Invocation:
    """How the user started Snakemake, to print follow-up commands that act on the same study:
    the folder they typed in, the workflow's working folder, the options that choose the
    workflow and its config, and the config files Snakemake merged (empty: config.yaml)."""

    cwd: Path = field(default_factory=lambda: Path.cwd().absolute())
    workdir: Path = field(default_factory=lambda: Path.cwd().absolute())
    options: tuple[str, ...] = ()  # --snakefile/--directory/--configfile, as needed
    config_files: tuple[Path, ...] = ()

    def snakemake(self, *args: str) -> str:
        return join([executable("snakemake", self.cwd), *self.options, *args])

    def leanhpo(self, command: str, *args: str) -> str:
        """`python -m leanhpo <command>` on the same config files, run in the working folder
        (its paths, experiments/..., are relative to it)."""
        config: list[str] = []
        for path in self.config_files:
            config += ["--config", _shown(path, self.workdir)]
        words = [executable("python", self.workdir), "-m", "leanhpo", command, *config, *args]
        if self.workdir == self.cwd:
            return join(words)
        return f"cd {join([_shown(self.workdir, self.cwd)])} && {join(words)}"

    def path(self, path: Path | str) -> str:
        return shown_path(path, self.cwd)

    @classmethod
    def here(cls, config_files: Sequence[Path]) -> Invocation:
        """`python -m leanhpo ...` run in the study's working folder with these config files:
        Snakemake commands get them as --configfile, and the project's Snakefile when the
        folder has none (an editable install: the repository beside src/)."""
        cwd = Path.cwd().absolute()
        options: list[str] = []
        snakefile = Path(__file__).resolve().parents[2] / "Snakefile"
        if not (cwd / "Snakefile").exists() and snakefile.is_file():
            options += ["--snakefile", _shown(snakefile, cwd)]
        files = tuple(Path(f).absolute() for f in config_files)
        if files:
            options += ["--configfile", *(_shown(f, cwd) for f in files)]
        return cls(cwd=cwd, workdir=cwd, options=tuple(options), config_files=files)


INVOCATION_ENV = "LEANHPO_INVOCATION"


def announce_invocation(invocation: Invocation) -> None:
    """Hand the Snakemake run's Invocation to its jobs (they inherit this environment), so that
    a job's message names commands for the same study as the user typed it."""
    os.environ[INVOCATION_ENV] = json.dumps(
        {
            "cwd": str(invocation.cwd),
            "workdir": str(invocation.workdir),
            "options": list(invocation.options),
            "config_files": [str(f) for f in invocation.config_files],
        }
    )


def current_invocation() -> Invocation:
    """The Invocation a Snakemake run announced, else this process's folder and config.yaml."""
    try:
        found = json.loads(os.environ.get(INVOCATION_ENV) or "{}")
        return Invocation(
            cwd=Path(found["cwd"]),
            workdir=Path(found["workdir"]),
            options=tuple(found["options"]),
            config_files=tuple(Path(f) for f in found["config_files"]),
        )
    except (ValueError, KeyError, TypeError):
        return Invocation()


def resume_command() -> str:
    """The documented resume command for the study this process works on."""
    return current_invocation().snakemake("--cores", "all", "--rerun-incomplete")


def snakemake_invocation(workflow: object) -> Invocation:
    """The Invocation of a running Snakemake workflow (its `workflow` object), so that a
    follow-up command typed where the user typed theirs reaches the same study."""
    start = Path(getattr(workflow, "workdir_init", os.getcwd())).absolute()
    workdir = Path.cwd().absolute()
    options: list[str] = []
    snakefile = Path(str(getattr(workflow, "main_snakefile", "Snakefile"))).absolute()
    if snakefile != start / "Snakefile":
        options += ["--snakefile", _shown(snakefile, start)]
    if workdir != start:
        options += ["--directory", _shown(workdir, start)]
    settings = getattr(workflow, "config_settings", None)
    overlays = [Path(f).absolute() for f in getattr(settings, "configfiles", ()) or ()]
    if overlays:
        options += ["--configfile", *(_shown(f, start) for f in overlays)]
    # What Snakemake merged: the Snakefile's `configfile: "config.yaml"` (in the working
    # folder; skipped when missing and overlays are given), then the overlays.
    base = workdir / "config.yaml"
    files = ([base] if base.is_file() else []) + overlays if overlays else []
    return Invocation(cwd=start, workdir=workdir, options=tuple(options), config_files=tuple(files))
