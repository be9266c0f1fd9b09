"""Calls that tests/test_preload.py makes through the preloaded worker."""

import json
import os
import signal
import sys
import time


def report(out: str, code: int = 0, sleep: float = 0.0, when: object = None) -> None:
    """Write down what process this is and what it took from the job, then end with `code`."""
    import torch

    print("to stdout", flush=True)
    print("to stderr", file=sys.stderr, flush=True)
    state = {
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "pgid": os.getpgid(0),
        "cwd": os.getcwd(),
        "argv": sys.argv,
        "mark": os.environ.get("MARK"),
        "preloaded": os.environ.get("LEANHPO_PRELOADED"),
        "threads": torch.get_num_threads(),
        "umask": os.umask(0o022),
    }
    with open(out + ".tmp", "w") as handle:
        json.dump(state, handle)
    os.replace(out + ".tmp", out)
    time.sleep(sleep)
    if code:
        raise SystemExit(code)


def fail() -> None:
    raise ValueError("a failing trial")


def stop_with_text() -> None:
    raise SystemExit("stopped with a message")


def kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def count_interrupts(out: str) -> None:
    """Count the SIGINTs that arrive within a second of the first one."""
    seen: list[float] = []
    signal.signal(signal.SIGINT, lambda *_: seen.append(time.monotonic()))
    with open(out + ".ready", "w"):
        pass
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (not seen or time.monotonic() - seen[0] < 1.0):
        time.sleep(0.05)
    with open(out, "w") as handle:
        json.dump({"interrupts": len(seen)}, handle)
