"""leanhpo's exit codes and messages at the end of a Snakemake run.

A job that stops for a known reason (bad input 2, a service down 69, no space 73, a slot held
75) exits with that code, but Snakemake reports every failed job the same way: exit 1, its own
RuleException, and its log hints after our message. Exit 1 means "a crash: rerun the resume
command" in docs/operations.md, which is the wrong advice for bad input. So:

- the Snakemake process names its run in the environment (RUN_ENV) when the Snakefile is parsed;
- a job that stops for a known reason records the stop (code, message, log) in a file of that
  run under .snakemake/leanhpo-stops/ (see leanhpo.workflow.job);
- the Snakefile's `onerror:` handler (`finish_failed_run`) prints the recorded messages last
  and ends the Snakemake process with the code, instead of Snakemake's exit 1.

A refusal while the Snakefile is parsed (`refuse`) ends the process at once with its code; it
also deletes the log file Snakemake opened for this run, so that a refused command leaves
.snakemake/ as it found it.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

from leanhpo.exit_codes import EXIT_BAD_INPUT
from leanhpo.fsutil import atomic_write_json

RUN_ENV = "LEANHPO_RUN"
STOPS = Path(".snakemake") / "leanhpo-stops"


def announce_run(workflow: Any) -> str:
    """Name this Snakemake run for its jobs, and tell them how the user started it, for the
    commands their messages print (both kept if a parent Snakemake process set them: a cluster
    job's own Snakemake parses the Snakefile again)."""
    from leanhpo.commands import INVOCATION_ENV, announce_invocation, snakemake_invocation

    run = os.environ.get(RUN_ENV) or f"{os.getpid()}-{time.time_ns()}"
    os.environ[RUN_ENV] = run
    if INVOCATION_ENV not in os.environ:
        announce_invocation(snakemake_invocation(workflow))
    return run


def record_stop(code: int, message: str, log_path: str | Path) -> None:
    """Called by a job that stops with a known code: keep its message for the end of the run.
    Does nothing outside a Snakemake run (`python -m leanhpo ...` prints and exits itself)."""
    run = os.environ.get(RUN_ENV)
    if not run:
        return
    folder = STOPS / run
    try:
        folder.mkdir(parents=True, exist_ok=True)
        stop = {"code": code, "message": message, "log": str(log_path), "at": time.time()}
        atomic_write_json(folder / f"{os.getpid()}.json", stop)
    except OSError:
        pass  # a full disk (exit 73) may refuse even this: the job's exit code still says it


def recorded_stops(run: str | None = None) -> list[dict[str, Any]]:
    """This run's stops, earliest first."""
    run = run or os.environ.get(RUN_ENV)
    folder = STOPS / run if run else None
    if folder is None or not folder.is_dir():
        return []
    stops = []
    for path in folder.glob("*.json"):
        try:
            stops.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return sorted(stops, key=lambda stop: stop.get("at", 0))


def finish_failed_run(workflow: Any = None) -> None:
    """The `onerror:` handler: when a job of this run stopped for a known reason, show its
    message as the last thing on the terminal and exit with its code (else Snakemake's 1)."""
    stops = recorded_stops()
    run = os.environ.get(RUN_ENV)
    if run:
        _remove_tree(STOPS / run)
    if not stops:
        return
    logs = list(getattr(getattr(workflow, "logger_manager", None), "logfile_handlers", {}).values())
    lines = [f"Snakemake's log of this run: {', '.join(logs)}"] if logs else []
    for stop in stops:
        lines += ["", stop["message"].rstrip(), f"(exit {stop['code']}; full log: {stop['log']})"]
    print("\n".join(lines), file=sys.stderr, flush=True)
    raise SystemExit(int(stops[0]["code"]))


def dry_run(argv: list[str] | None = None) -> bool:
    """Whether this Snakemake process only plans (-n, --dry-run, or -n among short flags such
    as -np): the Snakefile is parsed before Snakemake's own settings say so."""
    for arg in sys.argv if argv is None else argv:
        if arg in ("--dry-run", "--dryrun", "--dry_run"):
            return True
        if arg.startswith("-") and not arg.startswith("--") and arg[1:].isalpha() and "n" in arg:
            return True
    return False


def refuse(message: str, workflow: Any = None, code: int = EXIT_BAD_INPUT) -> NoReturn:
    """Stop while the Snakefile is parsed: print `message`, drop this run's (still empty)
    Snakemake log file, exit with `code`."""
    manager: Any = getattr(workflow, "logger_manager", None)
    for handler, path in list(getattr(manager, "logfile_handlers", {}).items()):
        # Detached first: a closed FileHandler that is still attached reopens its file.
        manager.logger.removeHandler(handler)
        handler.close()
        Path(path).unlink(missing_ok=True)
        manager.logfile_handlers.pop(handler, None)
    print(f"{message.rstrip()}\n(exit {code}: nothing was run)", file=sys.stderr, flush=True)
    raise SystemExit(code)


def _remove_tree(folder: Path) -> None:
    for path in folder.glob("*"):
        path.unlink(missing_ok=True)
    try:
        folder.rmdir()
        folder.parent.rmdir()  # only when no other run's stops remain
    except OSError:
        pass


def finish_successful_run(workflow: Any, study_dir: str, config: dict[str, Any]) -> None:
    """The `onsuccess:` handler: the last try to get an MLflow outage's writes into MLflow
    (for at most tracking.final_drain_s), then the closing summary, with follow-up commands
    that reach the same study from where the user typed theirs (nothing when no study report
    was reached); the summary names what the drain left."""
    from leanhpo.commands import snakemake_invocation
    from leanhpo.summary import SPOOL_FILES, closing_summary
    from leanhpo.urls import shareable

    if any(Path(study_dir).glob(SPOOL_FILES)):  # MLflow failed at some point of the study
        _final_drain(Path(study_dir), config["tracking"])

    # A URL's `${VAR}` password reference runs in the user's shell; a literal one is masked.
    services = {
        "storage": shareable(config["study"]["storage"]),
        "tracking_uri": shareable(config["tracking"]["uri"]),
    }
    summary = closing_summary(study_dir, snakemake_invocation(workflow), services)
    if summary:
        print(summary, file=sys.stderr, flush=True)


def _final_drain(study_dir: Path, tracking: dict[str, Any]) -> None:
    from leanhpo.logs import mask_secrets
    from leanhpo.study.sync import final_drain

    try:
        drained = final_drain(study_dir, tracking)
    except Exception as error:  # the study is done: a failed replay only leaves entries
        message = mask_secrets(repr(error))
        print(f"leanhpo: MLflow replay at the end failed: {message}", file=sys.stderr, flush=True)
        return
    if drained is not None:
        left = drained["backlog"]
        print(
            f"leanhpo: replayed {drained['replayed']} buffered MLflow writes in "
            f"{drained['seconds']:.2f} s (tracking.final_drain_s "
            f"{tracking.get('final_drain_s')}); {left['entries']} remain",
            file=sys.stderr,
            flush=True,
        )
