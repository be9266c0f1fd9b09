"""The preloaded worker (leanhpo.preload): real server and job processes, real signals.

A "driver" is a sleeping process whose end stands for the Snakemake driver's; jobs are small
python processes calling `run_job` as scripts/run_trial.py does, with targets from
tests/preload_target.py. The server preloads torch only, so it starts in about 2 s.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from leanhpo.preload import PRELOAD_ENV

TESTS = Path(__file__).resolve().parent
PYTHON = sys.executable
JOB = (
    "import json, sys; sys.path.insert(0, {tests!r});"
    "from leanhpo.preload.client import run_job;"
    "run_job({target!r}, **json.loads({kwargs!r}))"
)


class Server:
    def __init__(self, tmp_path: Path) -> None:
        self.socket = str(tmp_path / "preload.sock")
        self.log = tmp_path / "preload.log"
        self.driver = subprocess.Popen(["sleep", "600"])
        command = [PYTHON, "-m", "leanhpo.preload.server", "--socket", self.socket]
        command += ["--driver", str(self.driver.pid), "--module", "torch"]
        with self.log.open("w") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        wait_for(lambda: "serving" in self.log.read_text(), "the server to import torch")

    def job(self, target: str, env: dict[str, str] | None = None, **kwargs) -> subprocess.Popen:
        code = JOB.format(tests=str(TESTS), target=target, kwargs=json.dumps(kwargs))
        environ = {**os.environ, PRELOAD_ENV: self.socket, "OMP_NUM_THREADS": "1", **(env or {})}
        return subprocess.Popen(
            [PYTHON, "-c", code],
            env=environ,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            process_group=0,  # its own group, in this session: the child must join it
        )

    def close(self) -> None:
        for process in (self.driver, self.process):
            if process.poll() is None:
                process.kill()
            process.wait()


def wait_for(condition, what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    running = Server(tmp_path)
    yield running
    running.close()


def test_the_child_takes_the_jobs_place(server: Server, tmp_path: Path) -> None:
    out = tmp_path / "state.json"
    job = server.job(
        "preload_target:report", env={"MARK": "from the job", "OMP_NUM_THREADS": "2"},
        out=str(out), code=3,
    )  # fmt: skip
    stdout, stderr = job.communicate(timeout=60)
    state = json.loads(out.read_text())
    assert job.returncode == 3
    assert "to stdout" in stdout and "to stderr" in stderr  # the job's own fds
    assert state["ppid"] == server.process.pid and state["pid"] != job.pid  # forked, preloaded
    assert state["preloaded"] == "1"
    assert state["pgid"] == job.pid  # joined the job's process group
    assert state["cwd"] == os.getcwd() and state["argv"] == ["-c"]
    assert state["mark"] == "from the job" and state["threads"] == 2
    assert "runs preload_target:report" in server.log.read_text()


def test_errors_end_the_job_as_they_would_end_a_process(server: Server) -> None:
    failed = server.job("preload_target:fail")
    _, stderr = failed.communicate(timeout=60)
    assert failed.returncode == 1 and "ValueError: a failing trial" in stderr
    stopped = server.job("preload_target:stop_with_text")
    _, stderr = stopped.communicate(timeout=60)
    assert stopped.returncode == 1 and "stopped with a message" in stderr
    killed = server.job("preload_target:kill_self")
    killed.communicate(timeout=60)
    assert killed.returncode == -signal.SIGKILL  # the job dies by the child's signal


def _started(server: Server, tmp_path: Path, **kwargs) -> tuple[subprocess.Popen, int]:
    out = tmp_path / "state.json"
    job = server.job("preload_target:report", out=str(out), **kwargs)
    wait_for(out.exists, "the child to start")
    return job, json.loads(out.read_text())["pid"]


def test_sigterm_to_the_job_reaches_the_child(server: Server, tmp_path: Path) -> None:
    job, child = _started(server, tmp_path, sleep=60)
    job.send_signal(signal.SIGTERM)
    job.communicate(timeout=30)
    assert job.returncode == -signal.SIGTERM
    wait_for(lambda: gone(child), "the child to end", 10)


def test_ctrl_c_reaches_the_child_once(server: Server, tmp_path: Path) -> None:
    """Ctrl-C sends SIGINT to the whole foreground group: the child has joined the job's, so
    it gets the signal from the kernel, and the job must not send it a second one."""
    out = tmp_path / "interrupts.json"
    job = server.job("preload_target:count_interrupts", out=str(out))
    wait_for(Path(f"{out}.ready").exists, "the child to start")
    os.killpg(job.pid, signal.SIGINT)
    job.communicate(timeout=60)
    assert job.returncode == 0
    assert json.loads(out.read_text()) == {"interrupts": 1}


def test_kill_9_of_the_job_kills_the_child(server: Server, tmp_path: Path) -> None:
    job, child = _started(server, tmp_path, sleep=60)
    job.kill()
    job.wait()
    wait_for(lambda: gone(child), "the child to die with its job", 5)
    wait_for(lambda: "exit -9" in server.log.read_text(), "the server to reap it", 5)


def test_a_group_kill_reaches_the_child_directly(server: Server, tmp_path: Path) -> None:
    job, child = _started(server, tmp_path, sleep=60)
    os.killpg(job.pid, signal.SIGKILL)  # what the kill-storm tests do to Snakemake's group
    job.wait()
    wait_for(lambda: gone(child), "the child to die with its group", 5)


def test_the_status_survives_the_server(server: Server, tmp_path: Path) -> None:
    job, _child = _started(server, tmp_path, sleep=2, code=5)
    server.process.kill()
    server.process.wait()
    job.communicate(timeout=60)
    assert job.returncode == 5  # the child told the job itself


def test_jobs_run_side_by_side(server: Server, tmp_path: Path) -> None:
    outs = [tmp_path / f"state{i}.json" for i in range(2)]
    jobs = [server.job("preload_target:report", out=str(out), sleep=60) for out in outs]
    wait_for(lambda: all(out.exists() for out in outs), "both children to start")
    assert all(job.poll() is None for job in jobs)  # both running at once
    pids = {json.loads(out.read_text())["pid"] for out in outs}
    assert len(pids) == 2 and not pids & {job.pid for job in jobs}
    for job in jobs:
        job.terminate()
        job.communicate(timeout=30)
        assert job.returncode == -signal.SIGTERM


def test_an_environment_read_at_import_runs_the_job_in_its_own_process(
    server: Server, tmp_path: Path
) -> None:
    out = tmp_path / "state.json"
    job = server.job("preload_target:report", env={"HF_HOME": str(tmp_path)}, out=str(out))
    _, stderr = job.communicate(timeout=60)
    assert job.returncode == 0
    assert "refused this job (the environment differs in HF_HOME)" in stderr
    assert json.loads(out.read_text())["pid"] == job.pid


def test_after_the_driver_ends_the_server_finishes_its_jobs_and_exits(
    server: Server, tmp_path: Path
) -> None:
    job, _child = _started(server, tmp_path, sleep=2, code=4)
    server.driver.kill()
    server.driver.wait()
    wait_for(lambda: not Path(server.socket).exists(), "the socket to go", 10)
    assert server.process.poll() is None  # still there for its child
    late = server.job("preload_target:report", out=str(tmp_path / "late.json"))
    _, stderr = late.communicate(timeout=60)
    assert late.returncode == 0 and "preloaded worker unavailable" in stderr
    assert json.loads((tmp_path / "late.json").read_text())["pid"] == late.pid
    job.communicate(timeout=60)
    assert job.returncode == 4
    server.process.wait(timeout=10)
    assert server.process.returncode == 0


def test_without_a_server_the_job_runs_in_its_own_process(tmp_path: Path) -> None:
    out = tmp_path / "state.json"
    kwargs = json.dumps({"out": str(out)})
    code = JOB.format(tests=str(TESTS), target="preload_target:report", kwargs=kwargs)
    env = {k: v for k, v in os.environ.items() if k != PRELOAD_ENV}
    job = subprocess.run([PYTHON, "-c", code], env=env, capture_output=True, text=True)
    assert job.returncode == 0 and "preload" not in job.stderr
    state = json.loads(out.read_text())
    assert state["pid"] != state["ppid"] and state["preloaded"] is None


def test_a_call_that_is_not_json_runs_in_the_job(server: Server, tmp_path: Path) -> None:
    """A YAML date in the config, say: the job runs the call itself."""
    out = tmp_path / "state.json"
    code = (
        f"import datetime, sys; sys.path.insert(0, {str(TESTS)!r});"
        "from leanhpo.preload.client import run_job;"
        f"run_job('preload_target:report', out={str(out)!r}, when=datetime.date(2026, 1, 1))"
    )
    env = {**os.environ, PRELOAD_ENV: server.socket}
    job = subprocess.run([PYTHON, "-c", code], env=env, capture_output=True, text=True)
    assert job.returncode == 0 and "cannot be sent to the preloaded worker" in job.stderr
    assert json.loads(out.read_text())["ppid"] == os.getpid()  # the job itself ran it
