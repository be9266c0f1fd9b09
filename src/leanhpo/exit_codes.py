"""Process exit codes that tell a user (or a cluster scheduler) what kind of stop this was.

Errors that carry one have an `exit_code` class attribute; anything else is a crash (1), which
a rerun resumes.
"""

from __future__ import annotations

import json
from typing import Any

EXIT_BAD_INPUT = 2  # bad config or data: nothing ran, nothing on disk was touched
EXIT_ELSEWHERE = (
    66  # EX_NOINPUT: the slot was trained in another driver's folder; its files are there
)
EXIT_UNAVAILABLE = 69  # EX_UNAVAILABLE: a service (the Optuna database) stayed down; rerun later
EXIT_NO_SPACE = 73  # EX_CANTCREAT: the next checkpoint cannot fit; free space and rerun
EXIT_LOCKED = 75  # EX_TEMPFAIL: another process runs this trial right now


class ResourceStop(RuntimeError):
    """A stop for a resource the next step cannot have (disk space, memory), whatever a rerun
    does until something changes. Its facts are a JSON payload (for the stop record and the
    trial report) with at least a `reason`; subclasses render the message with the fixes."""

    exit_code = EXIT_NO_SPACE
    kind = "resource"  # the `kind` of its event in the job's JSONL log

    def __init__(self, payload: dict[str, Any]) -> None:
        super().__init__(payload["reason"])
        self.payload = payload

    def render(self) -> str:
        return f"leanhpo: {self}"

    def to_json(self) -> str:
        return json.dumps(self.payload, sort_keys=True)


def exit_code_for(error: BaseException) -> int | None:
    code = getattr(error, "exit_code", None)
    return code if isinstance(code, int) else None
