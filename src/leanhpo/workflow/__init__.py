"""Snakemake integration: recover the working-directory lock that a `kill -9` leaves behind.

Snakemake 9 marks a running instance with files in .snakemake/locks/ and deletes them on a
normal exit. After a kill -9 they stay, and the documented resume command stops with a
LockException until the user runs `snakemake --unlock`. We make liveness observable instead:
every instance that parses our Snakefile holds an exclusive flock on .snakemake/leanhpo.lock for
its whole life. If we can take that lock, no instance of this workflow is alive, so any lock
files are stale and we remove them. If we cannot, another instance is alive and we leave its
locks alone, so Snakemake still refuses to start a second live instance.

The kernel drops a flock when its process dies, however it dies; that is what makes this
safe. (flock is not reliable on some network filesystems; on a cluster, run the Snakemake
driver from a local disk.)
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import gc
import json
import logging
import os
import signal
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from leanhpo.exit_codes import exit_code_for
from leanhpo.workflow.stops import record_stop

LOG = logging.getLogger(__name__)
# The planned number of trial slots, for progress lines only. Jobs inherit the environment of
# the Snakemake process; a params value would make growing a study rerun finished trials.
N_TRIALS_ENV = "LEANHPO_N_TRIALS"
# Likewise the study keys that choose how slots not yet started are sampled: changing the sampler
# or the enqueued sets must not rerun finished trials either.
SEARCH_ENV = "LEANHPO_SEARCH"
SEARCH_KEYS = ("sampler", "n_startup_trials", "enqueue", "parallel", "pruner", "pruner_options")
INSTANCE_LOCK = "leanhpo.lock"
_FREEZE_AT_EXIT: list[bool] = []  # registered once per process
SNAKEMAKE_LOCKS = "locks"

# Held for the life of the process: closing it would release the flock.
_held: IO[str] | None = None
# The stderr this process had before `output_to` sent it to the rule's log: where Snakemake
# shows its own lines, so progress lines and known stops written here reach the person.
_terminal: IO[str] | None = None


def recover_stale_locks(workdir: Path | None = None) -> list[Path]:
    """Take the instance lock; if this process is the only live instance, clear stale locks.

    Returns the stale lock files removed (empty when none, or when another instance lives).
    """
    global _held
    meta = (workdir or Path.cwd()) / ".snakemake"
    meta.mkdir(parents=True, exist_ok=True)
    if _held is not None:
        return []
    handle = (meta / INSTANCE_LOCK).open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return []  # a live instance holds it: its locks are real
    _held = handle
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    stale = sorted((meta / SNAKEMAKE_LOCKS).glob("*.lock"))
    for lock in stale:
        lock.unlink(missing_ok=True)
    if stale:
        LOG.warning("removed %d stale Snakemake lock(s) left by a killed run", len(stale))
    return stale


def release() -> None:
    """Drop the instance lock (tests; a real process releases it when it exits)."""
    global _held
    if _held is not None:
        fcntl.flock(_held, fcntl.LOCK_UN)
        _held.close()
        _held = None


@contextlib.contextmanager
def output_to(log_path: str | Path) -> Iterator[None]:
    """Send this process's stdout and stderr (file descriptors too, so C extensions and
    subprocesses follow) to `log_path`, appending, as Snakemake's `log:` expects."""
    path = Path(log_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    global _terminal
    saved = os.dup(1), os.dup(2)
    saved_streams, saved_terminal = (sys.stdout, sys.stderr), _terminal
    _terminal = _terminal or os.fdopen(os.dup(2), "w", buffering=1, closefd=True)
    with path.open("a", buffering=1) as handle:
        os.dup2(handle.fileno(), 1)
        os.dup2(handle.fileno(), 2)
        # The Python streams too, in case something (a test runner) replaced them.
        sys.stdout = sys.stderr = handle
        try:
            yield
        except Exception:
            traceback.print_exc()  # into the log too, not only to the terminal
            raise
        finally:
            handle.flush()
            if saved_terminal is None:
                _terminal.close()
            _terminal = saved_terminal
            sys.stdout, sys.stderr = saved_streams
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def canonical(value: Any, keep_order: tuple[str, ...] = ("search_space",)) -> Any:
    """Sort dict keys recursively so Snakemake's params rerun trigger sees the same value for
    the same config however its YAML was ordered; `search_space` keeps its order, which decides
    the sampling order and what a condition may refer to."""
    if isinstance(value, dict):
        return {
            k: (_ordered(v) if k in keep_order else canonical(v, keep_order))
            for k, v in sorted(value.items())
        }
    if isinstance(value, list):
        return [canonical(v, keep_order) for v in value]
    return value


def _ordered(space: Any) -> Any:
    if not isinstance(space, dict):
        return space
    return {name: canonical(spec) for name, spec in space.items()}


def announce_n_trials(n_trials: int) -> None:
    os.environ[N_TRIALS_ENV] = str(n_trials)


def planned_trials() -> int | None:
    value = os.environ.get(N_TRIALS_ENV, "")
    return int(value) if value.isdigit() else None


def announce_search(study: dict[str, Any]) -> None:
    os.environ[SEARCH_ENV] = json.dumps({key: study[key] for key in SEARCH_KEYS})


def with_planned_study(config: dict[str, Any], slot: int) -> dict[str, Any]:
    """A trial job's config with the study keys the Snakemake driver passes out of band (see
    N_TRIALS_ENV and SEARCH_ENV); without a driver (`python -m leanhpo trial`), its own keys.
    n_trials defaults to the slot's own count, for progress lines."""
    study = dict(config.get("study") or {})
    study.update(json.loads(os.environ.get(SEARCH_ENV) or "{}"))
    study["n_trials"] = planned_trials() or slot + 1
    return {**config, "study": study}


def without_passwords(sections: dict[str, Any]) -> dict[str, Any]:
    """The study and tracking sections with the passwords of their URLs moved into this
    process's environment (jobs inherit it), so that Snakemake's params, which it records in
    .snakemake/metadata, hold `${LEANHPO_..._PASSWORD}` references instead (see leanhpo.urls).
    On a cluster, the job environment must carry those variables (SLURM exports it by default)."""
    from leanhpo.urls import STORAGE_PASSWORD_ENV, TRACKING_PASSWORD_ENV, move_password_to_env

    study, tracking = dict(sections["study"]), dict(sections["tracking"])
    study["storage"] = move_password_to_env(study["storage"], STORAGE_PASSWORD_ENV)
    tracking["uri"] = move_password_to_env(tracking["uri"], TRACKING_PASSWORD_ENV)
    return {**sections, "study": study, "tracking": tracking}


def augmentation_possible(config: dict[str, Any]) -> bool:
    """Whether some trial of this (validated) config may rewrite evidence sentences."""
    if config["train"]["augmentation_prob"] > 0:
        return True
    spec = (config.get("search_space") or {}).get("augmentation_prob")
    if not spec:
        return False
    if spec["type"] == "categorical":
        return any(choice > 0 for choice in spec["choices"])
    return bool(spec["high"] > 0)


def environment_problems(config: dict[str, Any]) -> list[str]:
    """What this machine lacks for the config, found before any job starts (not at the first
    trial that samples it, which would fail that trial)."""
    if not augmentation_possible(config):
        return []
    from leanhpo.data.augment import check_nltk_corpora
    from leanhpo.data.errors import DataError

    try:
        check_nltk_corpora()
    except DataError as error:
        return [str(error)]
    return []


def to_terminal(text: str) -> None:
    """Show `text` to the person running the workflow: on the stderr the job started with,
    even while `output_to` sends everything else to the rule's log (without a redirect, plain
    stderr). Never fails the job: a closed terminal only loses the line."""
    stream = _terminal or sys.stderr
    with contextlib.suppress(OSError, ValueError):
        stream.write(text.rstrip("\n") + "\n")
        stream.flush()


def describe(error: BaseException) -> str:
    render = getattr(error, "render", None)
    return render() if callable(render) else f"leanhpo: {error}"


def _terminated(signum: int, _frame: Any) -> None:
    # Once: a second SIGTERM (one to the process group and one to the job, say) must not cut
    # short the unwinding the first one started (the slot lease's release above all).
    signal.signal(signum, signal.SIG_IGN)
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def job(log_path: str | Path) -> Iterator[None]:
    """What every Snakemake script adapter runs in: output to the rule's log, and a known stop
    (bad input, no space, a held lock) becomes its exit code with a readable message instead
    of a traceback.

    SIGTERM (Snakemake stopping its jobs, scancel, a SLURM time limit) unwinds like an error,
    so the job lets go of what it holds, its slot lease above all: the resubmitted job takes
    the slot at once instead of waiting out study.lease_grace_s. Exit status 143 as before.

    At interpreter exit every live object is frozen first, so the shutdown skips the final
    garbage collection over the torch, transformers and MLflow object graphs: 1.8 s of every
    trial job's exit down to 0.2 s (bench/overhead.py, docs/benchmarks.md). atexit runs it after
    the handlers registered later (MLflow's, the spool's), which still run."""
    if not _FREEZE_AT_EXIT:
        atexit.register(gc.freeze)
        _FREEZE_AT_EXIT.append(True)
    previous = signal.signal(signal.SIGTERM, _terminated)
    with output_to(log_path):
        try:
            yield
        except Exception as error:
            code = exit_code_for(error)
            if code is None:
                raise
            message = describe(error)
            print(message, file=sys.stderr, flush=True)
            # Snakemake itself says only "non-zero exit status"; the reason belongs in view.
            to_terminal(f"{message}\n(exit {code}; full log: {log_path})")
            # For the run's end: Snakemake itself would exit 1 (leanhpo.workflow.stops).
            record_stop(code, message, log_path)
            raise SystemExit(code) from None
        finally:
            signal.signal(signal.SIGTERM, previous)
