"""Process exit codes that tell a user (or a cluster scheduler) what kind of stop this was.

Errors that carry one have an `exit_code` class attribute; anything else is a crash (1), which
a rerun resumes.
"""

EXIT_BAD_INPUT = 2  # bad config or data: nothing ran, nothing on disk was touched
EXIT_ELSEWHERE = (
    66  # EX_NOINPUT: the slot was trained in another driver's folder; its files are there
)
EXIT_UNAVAILABLE = 69  # EX_UNAVAILABLE: a service (the Optuna database) stayed down; rerun later
EXIT_NO_SPACE = 73  # EX_CANTCREAT: the next checkpoint cannot fit; free space and rerun
EXIT_LOCKED = 75  # EX_TEMPFAIL: another process runs this trial right now


def exit_code_for(error: BaseException) -> int | None:
    code = getattr(error, "exit_code", None)
    return code if isinstance(code, int) else None
