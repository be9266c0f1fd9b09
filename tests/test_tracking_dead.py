"""What a long outage leaves behind, against a real MLflow server: an entry MLflow refuses for
good (its run deleted meanwhile) becomes a dead letter and never stops the entries behind it or
training; placeholder ids in study.json and state.json become real ids, also after the spool
was deleted; the spool files of several hosts are merged; a busy drain lock is not an outage."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import pytest
import yaml
from test_tracking_spool import TIMEOUT_S, answering, outage

from leanhpo import cli
from leanhpo.exit_codes import EXIT_LOCKED, EXIT_UNAVAILABLE
from leanhpo.fsutil import atomic_write_json, read_json
from leanhpo.study.runids import settle_trial_run
from leanhpo.tracking import (
    LEGACY_SPOOL_FILE,
    SPOOL_FILE,
    Tracker,
    is_placeholder,
    open_tracker,
    replay,
)
from leanhpo.tracking.spool import PendingRun, now_ms, placeholder_id, spool_file_name

REPO = Path(__file__).resolve().parents[1]


def _study(tmp_path: Path, uri: str, name: str, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """`--config` options for a study `name` in tmp_path (the working folder from now on)."""
    monkeypatch.chdir(tmp_path)
    overlay = tmp_path / f"{name}.yaml"
    tracking = {"uri": uri, "experiment": name, "write_timeout_s": TIMEOUT_S}
    study = {"name": name, "storage": f"sqlite:///{tmp_path / 'optuna.db'}"}
    overlay.write_text(yaml.safe_dump({"study": study, "tracking": tracking}))
    return ["--config", str(REPO / "config.yaml"), "--config", str(overlay)]


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _tracker(uri: str, folder: Path, experiment: str, spool: str = SPOOL_FILE) -> Tracker:
    return Tracker(uri, experiment, spool_path=folder / spool, write_timeout_s=TIMEOUT_S)


def _steps(tracker: Tracker, run_id: str, key: str) -> list[int]:
    return sorted(int(m.step) for m in tracker.client.get_metric_history(run_id, key))


@pytest.mark.slow
def test_an_entry_mlflow_refuses_for_good_is_set_aside_and_the_rest_goes_up(
    mlflow_server, tmp_path, monkeypatch, capsys, caplog
):
    config = _study(tmp_path, mlflow_server.uri, "dead", monkeypatch)
    monkeypatch.setattr(replay, "_warned_dead", False)  # the warning comes once per process
    tracker = open_tracker(
        {"uri": mlflow_server.uri, "experiment": "dead"}, Path("experiments/dead")
    )
    doomed = tracker.find_or_create_run({"k": "doomed"}, "doomed")
    kept = tracker.find_or_create_run({"k": "kept"}, "kept")
    with outage(mlflow_server):
        for step in (1, 2, 3):
            tracker.log_metrics_once(doomed, {"loss": 1 / step}, step)
        tracker.set_status(doomed, "FINISHED")
        tracker.log_metrics_once(kept, {"loss": 1.0}, step=1)
    tracker.client.delete_run(doomed)  # in the UI, while its entries waited in the spool
    time.sleep(TIMEOUT_S)  # the probe interval: the next write tries the server again
    with caplog.at_level(logging.WARNING, logger="leanhpo.tracking"):
        assert tracker.log_metrics_once(kept, {"loss": 0.5}, step=2) == 1  # training goes on
        tracker.drain()
    assert tracker.backlog() == {"entries": 0, "runs": 0, "dead": 4}
    assert tracker.spool_stats()["dead"] == 4 and tracker.spool_stats()["pending"] == 0
    assert _steps(tracker, kept, "loss") == [1, 2]
    assert "4 MLflow spool entries were refused" in caplog.text
    assert "sync-tracking --show-dead" in caplog.text

    code, out, _ = _cli(capsys, "sync-tracking", *config)
    assert code == 0 and "4 MLflow entries were refused for good" in out
    code, out, _ = _cli(capsys, "sync-tracking", "--show-dead", *config)
    assert code == 0 and out.count(f"  {doomed}  ") == 4 and "4 dead MLflow entries" in out
    assert "step 1: loss" in out and "status" in out and "FINISHED" in out
    assert "error: " in out and "deleted" in out.lower()

    tracker.client.restore_run(doomed)
    code, out, _ = _cli(capsys, "sync-tracking", "--retry-dead", *config)
    assert code == 0, out
    assert "put 4 dead MLflow entries back" in out and "replayed 4 MLflow entries; 0 remain" in out
    assert _steps(tracker, doomed, "loss") == [1, 2, 3]
    assert tracker.client.get_run(doomed).info.status == "FINISHED"

    tracker.client.delete_run(doomed)  # a live write to a deleted run: set aside at once
    assert tracker.log_metrics_once(doomed, {"loss": 0.1}, step=4) == 1
    assert tracker.backlog() == {"entries": 0, "runs": 0, "dead": 1}
    code, out, _ = _cli(capsys, "sync-tracking", "--drop-dead", *config)
    assert code == 0 and "dropped 1 dead MLflow entries" in out
    assert tracker.backlog()["dead"] == 0


def _finished_trial(study_dir: Path, run_id: str) -> Path:
    """A trial folder as a trial job leaves it (only what names its run)."""
    state_path = study_dir / "trial_0000" / "state.json"
    state_path.parent.mkdir(parents=True)
    atomic_write_json(state_path, {"slot": 0, "status": "completed", "mlflow": {"run_id": run_id}})
    return state_path


@pytest.mark.slow
@pytest.mark.parametrize("spool_deleted", [False, True])
def test_a_study_created_while_mlflow_is_down_ends_with_real_run_ids(
    mlflow_server, tmp_path, monkeypatch, capsys, spool_deleted
):
    name = f"down{int(spool_deleted)}"
    config = _study(tmp_path, mlflow_server.uri, name, monkeypatch)
    study_dir = tmp_path / "experiments" / name
    with outage(mlflow_server):
        assert cli.main(["create-study", *config]) == 0
        info = read_json(study_dir / "study.json")
        parent = info["mlflow"]["parent_run_id"]
        tracker = open_tracker({"uri": mlflow_server.uri, "experiment": name}, study_dir)
        uuid_tag = {"leanhpo.study_uuid": info["study_id"]}
        trial = tracker.find_or_create_run({**uuid_tag, "leanhpo.slot": "0"}, "trial 1", parent)
        state_path = _finished_trial(study_dir, trial)
        if spool_deleted:  # docs/operations.md: an empty spool may be deleted (this one is not)
            for spool in study_dir.glob("tracking_spool*"):
                spool.unlink()
    assert is_placeholder(parent) and is_placeholder(trial)
    study_mtime = (study_dir / "study.json").stat().st_mtime_ns

    code, out, err = _cli(capsys, "sync-tracking", *config)
    assert code == 0, out + err
    tracker = open_tracker({"uri": mlflow_server.uri, "experiment": name}, study_dir)
    real_parent = tracker.find_run({**uuid_tag, "leanhpo.role": "study"})
    real_trial = tracker.find_run({**uuid_tag, "leanhpo.slot": "0"})
    assert real_parent is not None and real_trial is not None
    assert read_json(study_dir / "study.json")["mlflow"]["parent_run_id"] == real_parent
    assert read_json(study_dir / "study.json")["mlflow"]["experiment_id"] is not None
    assert (study_dir / "study.json").stat().st_mtime_ns == study_mtime  # no Snakemake rerun
    assert read_json(state_path)["mlflow"]["run_id"] == real_trial
    run = tracker.client.get_run(real_trial)
    assert run.data.tags["mlflow.parentRunId"] == real_parent
    # A rerun, the spool emptied and deleted: the same parent run, nothing to replay.
    for spool in study_dir.glob("tracking_spool*"):
        spool.unlink()
    assert cli.main(["create-study", *config]) == 0
    assert read_json(study_dir / "study.json")["mlflow"]["parent_run_id"] == real_parent
    code, out, err = _cli(capsys, "sync-tracking", *config)
    assert code == 0 and "0 remain" in out, out + err
    assert tracker.backlog() == {"entries": 0, "runs": 0, "dead": 0}


@pytest.mark.slow
def test_each_host_writes_its_own_spool_file_and_reads_them_all(mlflow_server, tmp_path):
    host_a = _tracker(mlflow_server.uri, tmp_path, "hosts", spool_file_name("a"))
    with outage(mlflow_server):
        parent = host_a.find_or_create_run({"study": "s", "role": "study"}, "study")
        host_b = _tracker(mlflow_server.uri, tmp_path, "hosts", spool_file_name("b"))
        old = _tracker(mlflow_server.uri, tmp_path, "hosts", LEGACY_SPOOL_FILE)  # before 26
        # A trial on host B under the parent run that host A made while MLflow was down.
        child = host_b.find_or_create_run({"study": "s", "slot": "0"}, "trial 1", parent)
        host_b.log_metrics_once(child, {"loss": 1.0}, step=1)
        old.log_metrics_once(child, {"loss": 0.5}, step=2)
        assert host_b.spool_stats()["pending"] == 4  # two entries, two runs still to make
        assert host_a.backlog() == {"entries": 2, "runs": 2, "dead": 0}
    files = sorted(p.name for p in tmp_path.glob("tracking_spool*.sqlite"))
    assert files == sorted([LEGACY_SPOOL_FILE, spool_file_name("a"), spool_file_name("b")])

    a_file = tmp_path / spool_file_name("a")
    a_written = a_file.stat().st_mtime_ns
    assert host_b.drain() == 4  # its own file and the legacy one; A's file is only read
    assert a_file.stat().st_mtime_ns == a_written
    assert host_a.backlog() == {"entries": 0, "runs": 1, "dead": 0}  # A's row, not yet mapped
    assert host_a.drain() == 0
    assert host_a.backlog() == {"entries": 0, "runs": 0, "dead": 0}
    parents = host_a.client.search_runs(
        [host_a.experiment_id], "tags.`study` = 's' and tags.`role` = 'study'"
    )
    assert len(parents) == 1  # made once, by tags, though two hosts resolved the placeholder
    real_parent, real_child = host_a.real_run_id(parent), host_b.real_run_id(child)
    assert not is_placeholder(real_parent) and not is_placeholder(real_child)
    assert host_a.client.get_run(real_child).data.tags["mlflow.parentRunId"] == real_parent
    assert _steps(host_a, real_child, "loss") == [1, 2]
    assert spool_file_name() == SPOOL_FILE and SPOOL_FILE != LEGACY_SPOOL_FILE
    assert spool_file_name("node-1.cluster/x y") == "tracking_spool.node-1_cluster_x_y.sqlite"


def test_sync_tracking_waits_for_a_busy_drain_lock_and_then_says_busy(
    tmp_path, monkeypatch, capsys
):
    with answering(503) as port:  # MLflow answering "unavailable": every entry stays
        uri = f"http://127.0.0.1:{port}"
        config = _study(tmp_path, uri, "busy", monkeypatch)
        tracker = open_tracker({"uri": uri, "experiment": "busy"}, Path("experiments/busy"))
        tracker.find_or_create_run({"k": "v"}, "run")
        assert tracker.spool is not None and tracker.spool_stats()["pending"] == 1
        monkeypatch.setattr(replay, "DRAIN_LOCK_WAIT_S", 0.5)
        with tracker.spool.drain_lock(0) as held:  # another process's drain, as it were
            assert held
            code, out, err = _cli(capsys, "sync-tracking", *config)
        assert (
            code == EXIT_LOCKED and f"busy: another process is draining {tracker.spool.path}" in err
        )
        assert "1 remain" in out

        monkeypatch.setattr(replay, "DRAIN_LOCK_WAIT_S", 30.0)
        lock = tracker.spool.drain_lock(0)
        assert lock.__enter__()
        threading.Timer(0.5, lock.__exit__, (None, None, None)).start()
        started = time.monotonic()
        code, _, err = _cli(capsys, "sync-tracking", *config)
        waited = time.monotonic() - started
    assert code == EXIT_UNAVAILABLE and "busy:" not in err  # waited, then found MLflow down
    assert 0.4 < waited < 30.0


@pytest.mark.slow
def test_a_run_mlflow_will_not_create_is_set_aside_with_its_entries(mlflow_server, tmp_path):
    """A placeholder run spooled for an experiment MLflow refuses to make (an empty name: a
    spool written by a bug, say), and a metric point of it behind it in the spool."""
    tracker = _tracker(mlflow_server.uri, tmp_path, "refused")
    assert tracker.spool is not None
    tags = {"k": "v"}
    run = placeholder_id("", tags)
    tracker.spool.add_run(PendingRun(run, "", "run", tags, None, now_ms()))
    tracker.spool.append(run, "metrics", {"step": 0, "ts": now_ms(), "values": {"a": 1.0}})
    assert tracker.backlog() == {"entries": 1, "runs": 1, "dead": 0}
    tracker.drain()  # no exception: set aside
    assert tracker.backlog() == {"entries": 0, "runs": 0, "dead": 2}
    [(path, dead)] = tracker.dead_letters()
    assert path == tmp_path / SPOOL_FILE
    assert [(d.run_ref, d.kind) for d in dead] == [(run, "run"), (run, "metrics")]
    assert "400" in dead[0].error or "INVALID_PARAMETER_VALUE" in dead[0].error, dead[0].error
    assert dead[1].error.startswith("its run could not be created")
    assert dead[0].summary() == 'run {"k": "v"}' and dead[1].summary() == "step 0: a"
    assert tracker.retry_dead() == 2
    assert tracker.backlog() == {"entries": 1, "runs": 1, "dead": 0}


@pytest.mark.slow
def test_a_trial_placeholder_no_spool_holds_is_found_again_by_its_tags(mlflow_server, tmp_path):
    """What close_tracking does with state.json's run id (the spool deleted since)."""
    tracker = _tracker(mlflow_server.uri, tmp_path, "lost")
    study_tags = {"leanhpo.study_uuid": "u1", "leanhpo.role": "study"}
    parent = tracker.find_or_create_run(study_tags, "study-lost")
    info = {"study_id": "u1", "name": "lost", "mlflow": {"parent_run_id": parent}}
    tags = {"leanhpo.study_uuid": "u1", "leanhpo.slot": "2"}
    lost = placeholder_id("lost", tags)
    # Issue 26: a write under it was "MLflow run pending-... is not in the spool" for good.
    tracker.set_tags(lost, {"leanhpo.status": "completed"})
    tracker.drain()
    [(_, [dead])] = tracker.dead_letters()
    assert dead.run_ref == lost and "in no spool file" in dead.error
    real = settle_trial_run(tracker, info, {"slot": 2}, lost)
    assert not is_placeholder(real) and tracker.find_run(tags) == real
    assert tracker.client.get_run(real).data.tags["mlflow.parentRunId"] == parent
    assert tracker.real_run_id(lost) == real  # kept in the spool for other processes
    assert _tracker(mlflow_server.uri, tmp_path, "lost").real_run_id(lost) == real
    assert tracker.retry_dead() == 1 and tracker.drain() == 1
    assert tracker.client.get_run(real).data.tags["leanhpo.status"] == "completed"
    # A confirm run is keyed by its seed too; one with no id in state.json is found by tags.
    confirm = {"confirm": {"source_slot": 2, "seed_index": 1}}
    seed_run = settle_trial_run(tracker, info, confirm, None)
    assert seed_run != real
    assert tracker.find_run({**tags, "leanhpo.confirm_seed": "1"}) == seed_run
    # An id that is not this study's placeholder is left as it is, with a warning.
    stranger = placeholder_id("lost", {"made": "elsewhere"})
    assert settle_trial_run(tracker, info, {"slot": 3}, stranger) == stranger
