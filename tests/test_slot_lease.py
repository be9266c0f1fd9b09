"""Slot ownership across processes and hosts (issue 9, part 3): the lease row in the Optuna
database. Real processes and real databases (SQLite and a temporary PostgreSQL). A second host
cannot run here, so "another host" is a process whose LEANHPO_HOST_ID names another host (the
same override a container with a non-unique hostname uses)."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from leanhpo.study.lease import HOST_ENV, SlotBusyError, SlotLostError, lease_holders
from leanhpo.study.setup import create_or_load_study, open_study, slot_lease

GRACE_S = 1.6  # beats every 0.2 s


@pytest.fixture(params=["sqlite", "postgresql"])
def storage_url(request, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/optuna.db"
    return request.getfixturevalue("postgres").url


def _study(url: str):
    create_or_load_study("leases", url)
    return open_study("leases", url, 0)


def _as_host(monkeypatch, host: str) -> None:
    monkeypatch.setenv(HOST_ENV, host)


def test_a_live_owner_elsewhere_keeps_its_slot_and_the_refusal_names_it(
    storage_url, monkeypatch
) -> None:
    study = _study(storage_url)
    _as_host(monkeypatch, "host-a")
    with slot_lease(study, 3, GRACE_S) as owner:
        time.sleep(3 * GRACE_S / 8)  # the owner has renewed meanwhile
        _as_host(monkeypatch, "host-b")
        with pytest.raises(SlotBusyError) as refused:
            slot_lease(study, 3, GRACE_S).acquire()
        assert refused.value.exit_code == 75
        assert f"pid {os.getpid()} on host-a" in str(refused.value)
        assert "does not train it" in str(refused.value) and "slot 0003 is held by" in str(
            refused.value
        )
        owner.fence()  # still the owner
        with slot_lease(study, 4, GRACE_S):  # other slots are free
            pass
    with slot_lease(study, 3, GRACE_S) as second:  # released: free at once
        assert second.takeover_reason is None


def test_same_host_dead_owner_is_taken_over_at_once(storage_url, tmp_path) -> None:
    """A kill -9 and a rerun on the same host: no waiting for the grace period."""
    script = (
        "import os, sys; from leanhpo.study.setup import open_study, slot_lease;"
        f"study = open_study('leases', {storage_url!r}, 0);"
        "lease = slot_lease(study, 0, 3600).acquire(); os._exit(0)"  # dies holding it
    )
    _study(storage_url)
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
    study = open_study("leases", storage_url, 0)
    started = time.monotonic()
    with slot_lease(study, 0, 3600) as lease:
        assert "is gone from this host" in (lease.takeover_reason or "")
    assert time.monotonic() - started < 60  # not the 3600 s grace


def test_stale_owner_elsewhere_is_waited_for_then_taken_over(storage_url, monkeypatch, caplog):
    study = _study(storage_url)
    _as_host(monkeypatch, "host-a")
    stale = slot_lease(study, 1, GRACE_S).acquire()
    stale._stop.set()  # host-a stops renewing (its process or its network died)
    stale._thread.join()
    time.sleep(3 * GRACE_S / 8)  # it has missed beats: looks dead, but is not past grace yet
    _as_host(monkeypatch, "host-b")
    started = time.monotonic()
    with caplog.at_level(logging.INFO, logger="leanhpo"), slot_lease(study, 1, GRACE_S) as taker:
        waited = time.monotonic() - started
        assert "no heartbeat for" in (taker.takeover_reason or "")
        assert taker.previous is not None and taker.previous.host == "host-a"
    assert waited >= GRACE_S / 2
    assert any("waiting up to" in r.getMessage() for r in caplog.records)
    # The old owner comes back: it must not write anything more.
    with pytest.raises(SlotLostError, match="taken over by"):
        stale.fence()
    stale.release()  # a lost lease is not released on the new owner's behalf
    assert lease_holders(stale.engine, study._study_id)[1]["host"] == "host-b"


def _contend(url: str, host: str, results) -> None:
    os.environ[HOST_ENV] = host
    study = open_study("leases", url, 0)
    try:
        lease = slot_lease(study, 7, GRACE_S).acquire()
    except SlotBusyError:
        results.put("busy")
        return
    results.put("owner")
    time.sleep(3)  # hold it (renewing) while the others try
    lease.release()


@pytest.mark.slow
def test_exactly_one_of_many_simultaneous_drivers_wins(storage_url) -> None:
    _study(storage_url)
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    processes = [
        context.Process(target=_contend, args=(storage_url, f"host-{i}", results)) for i in range(4)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)
    outcomes = sorted(results.get(timeout=5) for _ in processes)
    assert outcomes == ["busy", "busy", "busy", "owner"]


def _dies_on_host_a_at_epoch_2(study, monkeypatch) -> None:
    """Slot 0 trained on "host-a", which dies (kill -9: nothing released) in epoch 2."""
    from leanhpo.study.lease import SlotLease
    from leanhpo.trial import runner

    original = runner.train_and_validate

    def dies(network, optimisation, config, seed, epoch, *splits):
        if epoch == 2:
            raise KeyboardInterrupt("host-a dies in epoch 2")
        return original(network, optimisation, config, seed, epoch, *splits)

    def killed(lease):  # the heartbeat stops with the process; the row stays as it was
        lease._stop.set()

    with monkeypatch.context() as patch:
        patch.setenv(HOST_ENV, "host-a")
        patch.setattr(runner, "train_and_validate", dies)
        patch.setattr(SlotLease, "release", killed)
        with pytest.raises(KeyboardInterrupt):
            study.run(0)


@pytest.mark.slow
@pytest.mark.parametrize("shared_filesystem", [True, False])
def test_a_dead_owner_elsewhere_is_taken_over_after_the_grace_period(
    tmp_path, monkeypatch, shared_filesystem
) -> None:
    """Another host takes a dead host's slot over: from its checkpoint when the trial folder is
    shared, from scratch with the same params when it is not. Either way the slot is COMPLETE
    once and no metric point is doubled."""
    import shutil

    from studyhelper import Study

    study = Study(tmp_path, study={"lease_grace_s": 5})
    _dies_on_host_a_at_epoch_2(study, monkeypatch)
    drawn = study.optuna().trials[0].params
    if not shared_filesystem:
        shutil.rmtree(study.report_path(0).parent)  # host-b cannot see host-a's folder
    monkeypatch.setenv(HOST_ENV, "host-b")
    started = time.monotonic()
    report = study.run(0)
    assert time.monotonic() - started >= 3  # it waited for the grace period
    log = (study.report_path(0).parent / "logs" / "trial.jsonl").read_text().splitlines()
    takeover = [json.loads(line) for line in log if '"lease_takeover"' in line]
    assert len(takeover) == 1 and "on host-a" in takeover[0]["message"]
    assert report["params"] == drawn
    assert report["timings"]["resumed_from_epoch"] == (1 if shared_filesystem else 0)
    assert [t.state.name for t in study.optuna().get_trials()] == ["COMPLETE"]
    for key, points in study.tracker().metric_history(report["mlflow"]["run_id"]).items():
        steps = [step for step, _ in points]
        assert len(steps) == len(set(steps)), key


def test_a_terminated_job_releases_its_lease(tmp_path) -> None:
    """SIGTERM (Snakemake stopping a job, scancel, a SLURM time limit) must not leave the slot
    to wait out the grace period: the job unwinds and releases its lease, exit status 143."""
    import signal

    url = f"sqlite:///{tmp_path}/optuna.db"
    study = _study(url)
    ready = tmp_path / "ready"
    script = (
        "import time; from pathlib import Path; from leanhpo.workflow import job;"
        "from leanhpo.study.setup import open_study, slot_lease\n"
        f"with job({str(tmp_path / 'job.log')!r}):\n"
        f"    with slot_lease(open_study('leases', {url!r}, 0), 2, 3600):\n"
        f"        Path({str(ready)!r}).touch(); time.sleep(600)\n"
    )
    process = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.monotonic() + 120
    while not ready.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 143
    assert lease_holders(study._storage.inner._backend.engine, study._study_id)[2]["released"]
