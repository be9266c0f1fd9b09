"""MLflow outages against a real server that is stopped and started: writes are spooled within
the write timeout, replayed once it answers, exactly once per (key, step), with their original
timestamps, through a kill -9 in the middle of a drain. Wrong credentials are not an outage."""

from __future__ import annotations

import http.server
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException

from leanhpo.exit_codes import EXIT_BAD_INPUT, EXIT_UNAVAILABLE
from leanhpo.tracking import (
    SPOOL_FILE,
    Tracker,
    TrackingAuthError,
    is_placeholder,
    study_backlog,
)

REPO = Path(__file__).resolve().parents[1]
TIMEOUT_S = 2.0
SLACK_S = 1.5  # process scheduling on a loaded machine; an outage wait is ~0 or ~TIMEOUT_S


def _tracker(uri: str, folder: Path, experiment: str) -> Tracker:
    return Tracker(uri, experiment, spool_path=folder / SPOOL_FILE, write_timeout_s=TIMEOUT_S)


@contextmanager
def outage(server: Any) -> Iterator[None]:
    server.stop()
    try:
        yield
    finally:
        server.start()  # the module's other tests need it


def _timed(call: Any, *args: Any, **kwargs: Any) -> tuple[Any, float, int, int]:
    before_ms = int(time.time() * 1000)
    started = time.monotonic()
    result = call(*args, **kwargs)
    return result, time.monotonic() - started, before_ms, int(time.time() * 1000)


def _history(tracker: Tracker, run_id: str, key: str) -> list[tuple[int, int]]:
    """(step, timestamp) of every point, duplicates included."""
    points = tracker.client.get_metric_history(run_id, key)
    return sorted((int(m.step), int(m.timestamp)) for m in points)


@pytest.mark.slow
def test_outage_is_spooled_quickly_and_replayed_by_the_next_write(mlflow_server, tmp_path):
    tracker = _tracker(mlflow_server.uri, tmp_path, "outage")
    parent = tracker.find_or_create_run({"study": "s1", "role": "study"}, "study")
    run = tracker.find_or_create_run({"study": "s1", "slot": "0"}, "trial_0000", parent)
    tracker.log_metrics_once(run, {"loss": 1.0}, step=0)
    tracker.set_status(run, "RUNNING")
    windows: dict[int, tuple[int, int]] = {}
    waits: list[float] = []
    with outage(mlflow_server):
        for epoch in range(1, 6):
            logged, wait, start_ms, end_ms = _timed(
                tracker.log_metrics_once, run, {"loss": 1 / epoch, "f1": epoch / 10}, epoch
            )
            assert logged == 2
            waits.append(wait)
            windows[epoch] = (start_ms, end_ms)
        assert tracker.log_metrics_once(run, {"loss": 1.0}, step=1) == 0  # held in the spool
        tracker.set_tags(run, {"leanhpo.status": "completed", "token": "hf_abcdefghijklmnop"})
        tracker.log_params_once(run, {"lr": 0.1})
        tracker.set_status(run, "FINISHED")
        child = tracker.find_or_create_run({"study": "s1", "slot": "1"}, "trial_0001", parent)
        tracker.log_metrics_once(child, {"loss": 2.0}, step=1)
        # A process started during the outage: its tracker opens, its study run is a
        # placeholder, and so is a child of it.
        late, wait, _, _ = _timed(_tracker, mlflow_server.uri, tmp_path, "outage")
        waits.append(wait)
        assert late.experiment_id is None
        study2 = late.find_or_create_run({"study": "s2", "role": "study"}, "study")
        trial2 = late.find_or_create_run({"study": "s2", "slot": "0"}, "trial_0000", study2)
        late.log_metrics_once(trial2, {"loss": 3.0}, step=1)
        late.set_status(trial2, "FAILED")
        assert is_placeholder(child) and is_placeholder(study2) and is_placeholder(trial2)
        assert trial2 == late.find_or_create_run({"study": "s2", "slot": "0"}, "x", study2)
        spooled = tracker.spool_stats()
    waits.append(tracker.spool_stats()["max_wait_s"])
    print(f"\nlongest wait of one write while MLflow was down: {max(waits):.3f} s")
    assert max(waits) < TIMEOUT_S + SLACK_S
    assert spooled["pending"] >= 10 and spooled["bytes"] > 0 and not spooled["online"]

    time.sleep(TIMEOUT_S)  # the probe interval: the next write tries the server again
    assert tracker.log_metrics_once(run, {"loss": 0.1}, step=6) == 1
    for _ in range(20):  # each write replays for at most its own budget, in order
        if tracker.spool_stats()["pending"] == 0:
            break
        tracker.set_tags(run, {"leanhpo.progress": "after the outage"})
    assert tracker.spool_stats()["pending"] == 0

    loss = _history(tracker, run, "loss")
    assert [step for step, _ in loss] == [0, 1, 2, 3, 4, 5, 6]
    for step, timestamp in loss[1:6]:
        assert windows[step][0] <= timestamp <= windows[step][1]  # the original time
    assert [step for step, _ in _history(tracker, run, "f1")] == [1, 2, 3, 4, 5]
    data = tracker.client.get_run(run)
    assert data.info.status == "FINISHED" and data.data.params["lr"] == "0.1"
    assert "hf_abcdefghijklmnop" not in data.data.tags["token"]

    real_child = tracker.find_run({"study": "s1", "slot": "1"})
    assert real_child is not None and not is_placeholder(real_child)
    assert tracker.client.get_run(real_child).data.tags["mlflow.parentRunId"] == parent
    real_study2 = tracker.find_run({"study": "s2", "role": "study"})
    real_trial2 = tracker.find_run({"study": "s2", "slot": "0"})
    assert real_study2 is not None and real_trial2 is not None
    run2 = tracker.client.get_run(real_trial2)
    assert run2.data.tags["mlflow.parentRunId"] == real_study2
    assert run2.info.status == "FAILED"
    # Another process handed the placeholder (from state.json) finds the real run.
    again = _tracker(mlflow_server.uri, tmp_path, "outage")
    assert again.metric_history(trial2) == {"loss": [(1, 3.0)]}
    assert again.log_metrics_once(trial2, {"loss": 3.0}, step=1) == 0
    assert again.find_or_create_run({"study": "s2", "slot": "0"}, "x", study2) == real_trial2
    # The tracker opened during the outage learns its experiment and the real ids.
    assert late.drain() == 0 and late.experiment_id == tracker.experiment_id
    assert late.real_run_id(trial2) == real_trial2 and late.real_run_id(run) == run


def _sync_tracking(overlay: Path) -> list[str]:
    config = ("--config", str(REPO / "config.yaml"), "--config", str(overlay))
    return [sys.executable, "-m", "leanhpo", "sync-tracking", *config]


@pytest.mark.slow
def test_sync_tracking_exits_69_while_down_and_a_killed_drain_is_finished_exactly_once(
    mlflow_server, tmp_path
):
    overlay = tmp_path / "overlay.yaml"
    tracking = {"uri": mlflow_server.uri, "experiment": "cli", "write_timeout_s": TIMEOUT_S}
    overlay.write_text(yaml.safe_dump({"study": {"name": "cli"}, "tracking": tracking}))
    tracker = _tracker(mlflow_server.uri, tmp_path / "experiments" / "cli", "cli")
    runs = [tracker.find_or_create_run({"run": str(i)}, f"run{i}") for i in range(2)]
    steps, keys = 50, 10
    with outage(mlflow_server):
        for step in range(steps):
            for run in runs:  # alternating runs: every entry is a group of its own
                values = {f"m{k}": step + k / 100 for k in range(keys)}
                tracker.log_metrics_once(run, values, step)
        tracker.set_status(runs[0], "FINISHED")
        size, pending = tracker.spool_stats()["bytes"], tracker.spool_stats()["pending"]
        down = subprocess.run(_sync_tracking(overlay), cwd=tmp_path, capture_output=True, text=True)
        assert down.returncode == EXIT_UNAVAILABLE, down.stderr
        assert f"replayed 0 MLflow entries; {pending} remain" in down.stdout
    points = steps * keys * len(runs)
    print(f"\nspool size: {size * 1000 / points:.0f} bytes per 1,000 metric points ({keys}/entry)")
    # As if an earlier drain had uploaded this point and died before deleting its entry.
    tracker.client.log_batch(runs[0], metrics=[Metric("m0", 0.0, int(time.time() * 1000), 0)])

    drainer = subprocess.Popen(_sync_tracking(overlay), cwd=tmp_path)
    while tracker.spool_stats()["pending"] > pending - 10 and drainer.poll() is None:
        time.sleep(0.01)
    os.kill(drainer.pid, signal.SIGKILL)
    drainer.wait()
    left = tracker.spool_stats()["pending"]
    print(f"killed sync-tracking with {left} of {pending} entries left")
    assert drainer.returncode == -signal.SIGKILL and 0 < left < pending

    rerun = subprocess.run(_sync_tracking(overlay), cwd=tmp_path, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert f"replayed {left} MLflow entries; 0 remain" in rerun.stdout
    for run in runs:
        for k in range(keys):
            assert [step for step, _ in _history(tracker, run, f"m{k}")] == list(range(steps))
    assert tracker.client.get_run(runs[0]).info.status == "FINISHED"


class _FixedAnswer(http.server.BaseHTTPRequestHandler):
    status = 401

    def _answer(self) -> None:
        self.send_response(self.status)
        self.send_header("Content-Type", "text/plain")
        self.end_headers()
        self.wfile.write(b"no")

    do_GET = do_POST = do_PATCH = _answer

    def log_message(self, *args: Any) -> None:
        pass


@contextmanager
def answering(status: int) -> Iterator[int]:
    """A real HTTP server on 127.0.0.1 that gives one status to every request (any status, in
    milliseconds; the real basic-auth app is tested in test_mlflow_auth.py)."""
    handler = type("Handler", (_FixedAnswer,), {"status": status})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("status", [401, 403])
def test_refused_credentials_stop_with_a_clear_message_and_spool_nothing(tmp_path, status):
    with answering(status) as port, pytest.raises(TrackingAuthError) as raised:
        _tracker(f"http://bob:hunter2@127.0.0.1:{port}", tmp_path, "auth")
    message = str(raised.value)
    assert "hunter2" not in message and f"127.0.0.1:{port}" in message
    assert "MLFLOW_TRACKING_USERNAME" in message and "MLFLOW_TRACKING_PASSWORD" in message
    assert raised.value.exit_code == EXIT_BAD_INPUT
    assert not (tmp_path / SPOOL_FILE).exists()


def test_server_errors_are_an_outage_and_bad_requests_a_bug(tmp_path):
    with answering(503) as port:
        tracker = _tracker(f"http://127.0.0.1:{port}", tmp_path, "busy")
        run = tracker.find_or_create_run({"k": "v"}, "run")
        assert is_placeholder(run) and tracker.log_metrics_once(run, {"a": 1.0}, step=0) == 1
        assert tracker.spool_stats()["pending"] == 2  # the run and its point
    with answering(400) as port, pytest.raises(MlflowException):
        _tracker(f"http://127.0.0.1:{port}", tmp_path, "bug")


def test_a_server_that_never_answers_costs_one_timeout_then_nothing(tmp_path):
    """Connections are accepted (by the kernel's backlog) but never answered."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        uri = f"http://127.0.0.1:{silent.getsockname()[1]}"
        tracker, wait, _, _ = _timed(_tracker, uri, tmp_path, "hung")
        assert wait < TIMEOUT_S + SLACK_S
        started = time.monotonic()
        run = tracker.find_or_create_run({"k": "v"}, "run")
        for step in range(20):  # an epoch's writes: spooled without asking the server
            tracker.log_metrics_once(run, {"a": 1.0}, step=step)
        assert time.monotonic() - started < 1.0
        assert tracker.spool_stats()["max_wait_s"] < TIMEOUT_S + SLACK_S


def test_an_unreachable_database_uri_is_an_outage_too(tmp_path, caplog):
    """MLflow's own client would retry a dead database for about 100 s before raising."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # nothing listens here once the socket is closed
    uri = f"postgresql+psycopg://hpo:hunter2@127.0.0.1:{port}/mlflow"
    tracker, wait, _, _ = _timed(_tracker, uri, tmp_path, "db")
    assert wait < TIMEOUT_S + SLACK_S and tracker.experiment_id is None
    run = tracker.find_or_create_run({"k": "v"}, "run")
    assert is_placeholder(run) and tracker.log_metrics_once(run, {"a": 1.0}, step=0) == 1
    assert "buffering" in caplog.text and "hunter2" not in caplog.text


def test_backlog_counts_the_pending_entries_and_their_runs(tmp_path):
    """Tracker.backlog: entries still spooled, and the runs they belong to, a run not made yet
    included (the closing summary names both); nothing for a study that never spooled."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        uri = f"http://127.0.0.1:{closed.getsockname()[1]}"  # nothing listens once closed
    tracker = _tracker(uri, tmp_path, "backlog")
    assert tracker.backlog() == {"entries": 0, "runs": 0, "dead": 0}
    assert not (tmp_path / SPOOL_FILE).exists()
    parent = tracker.find_or_create_run({"study": "s", "role": "study"}, "study")
    child = tracker.find_or_create_run({"study": "s", "slot": "0"}, "trial_0000", parent)
    for step in range(3):
        tracker.log_metrics_once(child, {"loss": 1.0 / (step + 1)}, step)
    tracker.set_status(child, "FINISHED")
    # the parent has no entry of its own, but it is not in MLflow yet either
    assert tracker.backlog() == {"entries": 4, "runs": 2, "dead": 0}
    assert study_backlog(tmp_path) == tracker.backlog()


@pytest.mark.slow
def test_a_bounded_drain_stops_at_its_deadline_and_counts_entries_per_run(mlflow_server, tmp_path):
    """drain(within_s), as the end of a workflow run uses it (tracking.final_drain_s): a deadline
    already past replays nothing, even with MLflow up; the rest of the spool waits for the next
    drain, which counts what it replayed per run (sync-tracking prints those counts)."""
    tracker = _tracker(mlflow_server.uri, tmp_path, "bounded")
    runs = [tracker.find_or_create_run({"run": str(i)}, f"run{i}") for i in range(2)]
    with outage(mlflow_server):
        for step in range(3):
            for run in runs:
                tracker.log_metrics_once(run, {"m": float(step)}, step)
        late = tracker.find_or_create_run({"run": "late"}, "late")
        tracker.set_status(late, "FINISHED")
    pending = {"entries": 7, "runs": 3, "dead": 0}
    assert tracker.backlog() == pending
    assert tracker.drain(within_s=0) == 0 and tracker.backlog() == pending
    assert tracker.drain(within_s=60) == 8  # the 7 entries and the late run itself
    assert tracker.backlog() == {"entries": 0, "runs": 0, "dead": 0}
    real_late = tracker.real_run_id(late)
    assert dict(tracker.replayed_runs) == {runs[0]: 3, runs[1]: 3, real_late: 1}
    assert tracker.run_name(real_late) == "late"
    assert tracker.client.get_run(real_late).info.status == "FINISHED"


def test_the_summary_counts_every_hosts_spool_and_names_the_dead_letters(tmp_path):
    """The closing summary reads the study's spool files alone (no MLflow): entries of two
    hosts summed, a placeholder that host a made real and host b still writes under counted as
    one run, and dead letters with the commands that show, retry and drop them."""
    from leanhpo.commands import Invocation
    from leanhpo.summary import _tracking_lines
    from leanhpo.tracking.spool import PendingRun, Spool, placeholder_id, spool_file_name

    host_a = Spool(tmp_path / spool_file_name("node-a"))
    host_b = Spool(tmp_path / spool_file_name("node-b"))
    parent = placeholder_id("exp", {"role": "study"})
    host_a.add_run(PendingRun(parent, "exp", "study", {"role": "study"}, None, 1))
    host_a.map_run(parent, "run-parent")
    host_a.append("run-parent", "tags", {"tags": {"a": "1"}})
    host_b.append(parent, "metrics", {"step": 0, "ts": 1, "values": {"x": 1.0}})
    refused = host_b.append("run-deleted", "metrics", {"step": 0, "ts": 1, "values": {"x": 2.0}})
    host_b.bury([refused], "RESOURCE_DOES_NOT_EXIST: run-deleted")
    assert study_backlog(tmp_path) == {"entries": 2, "runs": 1, "dead": 1}

    lines = "\n".join(_tracking_lines(tmp_path, Invocation()))
    assert "2 MLflow writes of 1 runs not in MLflow yet" in lines
    assert "1 MLflow writes refused by MLflow for good" in lines
    for flag in ("--show-dead", "--retry-dead", "--drop-dead"):
        assert f"sync-tracking {flag}" in lines
    host_a.delete([e.seq for e in host_a.next_entries(10)])
    host_b.delete([e.seq for e in host_b.next_entries(10)])
    host_b.drop_dead()
    assert _tracking_lines(tmp_path, Invocation()) == ["  tracking: all writes in MLflow"]
