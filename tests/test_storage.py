"""Storage: disk facts, size estimates, the pressure steps and the preflight abort, cleanup.

The disk-full tests use a real, size-limited tmpfs (root only) and real trials on the tiny model.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import uuid
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from studyhelper import Study

from leanhpo.checkpoints import CheckpointStore
from leanhpo.config import Config
from leanhpo.exit_codes import EXIT_NO_SPACE
from leanhpo.storage.disk import DiskMonitor, disk_usage, largest_artifacts
from leanhpo.storage.estimate import checkpoint_bytes, estimate_from_model_files
from leanhpo.storage.preflight import NoSpaceError
from leanhpo.study.cleanup import cleanup
from leanhpo.study.pressure import POLICY_FILE, StorageGuard, effective_retention
from leanhpo.training.setup import build_network

MiB = 1 << 20


def test_disk_usage_and_largest_artifacts(tmp_path):
    usage = disk_usage(tmp_path / "not" / "yet" / "there")
    assert usage.total > 0 and 0 <= usage.free <= usage.total
    checkpoint = tmp_path / "trial_0000" / "checkpoints" / "epoch_0001"
    checkpoint.mkdir(parents=True)
    (checkpoint / "model.safetensors").write_bytes(b"x" * 3000)
    (checkpoint / "optimizer.safetensors").write_bytes(b"x" * 2000)
    (tmp_path / "big.log").write_bytes(b"y" * 4000)
    top = largest_artifacts(tmp_path, 2)
    assert top == [
        {"path": str(checkpoint), "bytes": 5000},
        {"path": str(tmp_path / "big.log"), "bytes": 4000},
    ]


def test_monitor_samples_and_warns_once_below_the_floor(tmp_path, caplog):
    with DiskMonitor(tmp_path, min_free_percent=100.0, interval=0.05) as monitor:
        import time

        time.sleep(0.3)
    assert monitor.samples >= 3
    assert monitor.lowest is not None and monitor.lowest.free > 0
    warnings = [
        r for r in caplog.records if "below retention.min_free_disk_percent" in r.getMessage()
    ]
    assert len(warnings) == 1


def test_checkpoint_size_estimates_match_a_real_checkpoint(tmp_path):
    """SPEC 5: state-dict bytes + optimizer bytes + 1 MB, before training and before a save."""
    config = Config.from_dict({"model": {"id": "tiny"}, "train": {"device": "cpu"}})
    network = build_network(config, seed=0)
    optimizer = torch.optim.AdamW(network.model.parameters())
    before = checkpoint_bytes(network.model, optimizer)
    network.model(
        **{
            "input_ids": torch.ones(1, 4, dtype=torch.long),
            "attention_mask": torch.ones(1, 4, dtype=torch.long),
            "span_mask": torch.ones(1, 4, dtype=torch.bool),
        }
    )["criteria_logits"].sum().backward()
    optimizer.step()
    after = checkpoint_bytes(network.model, optimizer)
    from leanhpo.checkpoints import flatten_state

    store = CheckpointStore(tmp_path)
    tensors, skeleton = flatten_state(optimizer.state_dict())
    info = store.save(
        1,
        {
            "model": {k: v.contiguous() for k, v in network.model.state_dict().items()},
            "optimizer": tensors,
        },
        {"s": skeleton},
    )
    assert abs(after - before) < 0.01 * after
    assert info.bytes <= after <= info.bytes + 2 * MiB


def test_minilm_estimate_from_its_files_matches_the_measured_checkpoint():
    # measured: a MiniLM trial checkpoint is 271.6 MB (docs/benchmarks.md)
    estimate = estimate_from_model_files("minilm")
    assert estimate is not None and abs(estimate - 271_620_308) < 0.02 * estimate
    assert estimate_from_model_files("tiny") is None  # random: checked before the first save


@contextlib.contextmanager
def tmpfs(size_bytes: int):
    """A real size-limited filesystem; skips where mounting is not permitted."""
    mount = Path("/tmp") / f"leanhpo-tmpfs-{uuid.uuid4().hex[:8]}"
    mount.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        mount.rmdir()
        pytest.skip(
            f"cannot mount a tmpfs here ({result.stderr.strip()}); run as root to test disk-full"
        )
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
        mount.rmdir()


def _tiny_checkpoint_bytes() -> int:
    config = Config.from_dict({"model": {"id": "tiny"}, "train": {"device": "cpu"}})
    network = build_network(config, seed=0)
    return checkpoint_bytes(network.model, torch.optim.AdamW(network.model.parameters()))


def _assert_nothing_corrupt_or_half_written(study: Study):
    for root in study.dir.glob("trial_*/checkpoints"):
        store = CheckpointStore(root)
        assert store.cleaned_tmp == 0, f"half-written checkpoint folder left in {root}"
        for info in store.list():
            store.verify(info.epoch)
    assert not list(study.dir.glob("trial_*/quarantine/*"))


def _assert_metrics_complete(study: Study, slots, epochs):
    tracker = study.tracker()
    for slot in slots:
        run_id = json.loads(study.report_path(slot).read_text())["mlflow"]["run_id"]
        history = tracker.metric_history(run_id)
        assert [s for s, _ in history["val_loss"]] == list(range(1, epochs + 1)), slot
        for key, points in history.items():
            steps = [s for s, _ in points]
            assert len(steps) == len(set(steps)), (slot, key)


@pytest.mark.parametrize("weights_only", [True, False])
def test_disk_pressure_on_a_real_tmpfs_prunes_and_the_study_goes_on(weights_only):
    size = _tiny_checkpoint_bytes()
    # Plain retention would hold up to 5 checkpoints here (2 finished trials' best + the running
    # trial's best, newest and the one being written): more than the disk minus its 10% floor.
    # Weights only, 3 of them are a third of the size (2.6 to 3 full ones in all): a smaller
    # disk and a 20% floor.
    disk, floor = (2.5 * size + 2 * MiB, 20) if weights_only else (4.6 * size, 10)
    with tmpfs(int(disk) + 6 * MiB) as mount:
        study = Study(
            mount,
            train={"epochs": 3},
            retention={
                "keep_best_trials": 3,
                "min_free_disk_percent": floor,
                "weights_only": weights_only,
            },
        )
        reports = [study.run(slot) for slot in range(3)]
        assert all(r["status"] == "completed" for r in reports)
        steps = [step for r in reports for step in r["storage"]["pressure_steps"]]
        assert steps, "the disk was sized so that the pressure steps must run"
        _assert_nothing_corrupt_or_half_written(study)
        _assert_metrics_complete(study, range(3), 3)


def test_preflight_aborts_with_the_full_payload_and_the_study_resumes_after_freeing_space():
    size = _tiny_checkpoint_bytes()
    with tmpfs(3 * size + 8 * MiB) as mount:
        # One epoch per trial, so trial 0 holds one checkpoint: with two, the tiny model's
        # epochs often tie, pressure step 3 frees the co-best and the preflight passes.
        study = Study(
            mount,
            train={"epochs": 1},
            retention={"min_free_disk_percent": 1},
            data={"sample_profile": "short"},
        )
        study.run(0)
        ballast = study.dir.parent / "another-study" / "ballast.bin"  # what a user would find
        ballast.parent.mkdir()
        free = disk_usage(mount).free
        with ballast.open("wb") as handle:
            handle.truncate(0)
            handle.write(b"\0" * max(0, free - size // 2))
        with pytest.raises(NoSpaceError) as info:
            study.run(1)
        payload = info.value.payload
        assert payload["needed_bytes"] >= size
        assert {"total", "used", "free"} <= set(payload["disk"])
        assert 1 <= len(payload["largest_artifacts"]) <= 10
        assert payload["largest_artifacts"][0]["path"] == str(ballast)
        assert any("retention.max_total_size" in fix for fix in payload["fixes"])
        assert any("leanhpo cleanup" in fix for fix in payload["fixes"])
        assert info.value.exit_code == EXIT_NO_SPACE
        log = (study.report_path(1).parent / "logs" / "trial.jsonl").read_text().splitlines()
        record = json.loads(next(line for line in log if '"no_space"' in line))
        assert (
            record["level"] == "ERROR"
            and record["context"]["needed_bytes"] == payload["needed_bytes"]
        )
        assert not list((study.report_path(1).parent / "checkpoints").glob("*"))  # nothing written
        _assert_metrics_complete(study, [0], 1)
        ballast.unlink()  # the user frees space and reruns
        assert study.run(1)["status"] == "completed"
        _assert_nothing_corrupt_or_half_written(study)
        _assert_metrics_complete(study, [0, 1], 1)


@pytest.mark.parametrize(("weights_only", "cap_checkpoints"), [(False, 2.5), (True, 2.2)])
def test_max_total_size_is_enforced_before_a_save(tmp_path, weights_only, cap_checkpoints):
    size = _tiny_checkpoint_bytes()
    cap = int(cap_checkpoints * size)  # a trial needs 2 (a resume point while it writes the next)
    study = Study(
        tmp_path,
        train={"epochs": 2},
        retention={
            "max_total_size": f"{cap}B",
            "keep_best_trials": 3,
            "weights_only": weights_only,
        },
    )
    assert study.run(0)["status"] == "completed"
    with pytest.raises(NoSpaceError, match="max_total_size") as info:
        # trial 0 keeps one checkpoint (a third of the size, weights only); trial 1 keeps its
        # epoch 1 while writing epoch 2, and step 3 cannot drop trial 0's, the study's best
        study.run(1)
    assert info.value.payload["study_checkpoint_bytes"] <= cap
    assert len(list(study.dir.glob("trial_*/checkpoints/epoch_*"))) == 2
    kinds = {i.kind for i in CheckpointStore(study.report_path(0).parent / "checkpoints").list()}
    assert kinds == {"weights" if weights_only else "full"}


def test_weights_only_retention_fits_the_cap_that_full_checkpoints_exceed(tmp_path):
    """The same cap that stops the full-checkpoint study (above) holds the weights-only one."""
    size = _tiny_checkpoint_bytes()
    study = Study(
        tmp_path,
        train={"epochs": 2},
        retention={"max_total_size": f"{int(2.5 * size)}B", "keep_best_trials": 3},
    )
    assert [study.run(slot)["status"] for slot in range(3)] == ["completed"] * 3
    _assert_nothing_corrupt_or_half_written(study)
    _assert_metrics_complete(study, range(3), 2)


@pytest.mark.parametrize("weights_only", [True, False])
def test_guard_steps_keep_the_running_trials_best(tmp_path, monkeypatch, weights_only):
    from leanhpo.storage import disk as disk_module
    from leanhpo.study import pressure

    store = CheckpointStore(tmp_path / "experiments" / "s" / "trial_0000" / "checkpoints")
    for epoch in (1, 2, 3):
        store.save(
            epoch, {"model": {"x": torch.zeros(1000)}, "optimizer": {"m": torch.zeros(2000)}}, {}
        )
    guard = StorageGuard(
        store.root.parent.parent,
        store.root.parent,
        {
            "keep_last_n": 3,
            "keep_best_k": 1,
            "keep_best_k_max": 1,
            "max_total_size": "10GB",
            "min_free_disk_percent": 10,
            "keep_best_trials": 3,
            "weights_only": weights_only,
        },
        "m",
        __import__("logging").getLogger("t"),
    )
    low = disk_module.DiskUsage("/", 100 * MiB, 95 * MiB, 5 * MiB)  # below the 10% floor
    monkeypatch.setattr(pressure, "disk_usage", lambda path: low)
    taken = guard.ensure_room(1 * MiB, store, {1: 0.9, 2: 0.5, 3: 0.4})
    # every step ran; the save still fits physically, so it goes on
    assert len(taken) == (4 if weights_only else 3)
    kinds = {i.epoch: i.kind for i in store.list()}
    if weights_only:
        # step 0 stripped all but the newest; step 1 kept the best and, since a stripped best
        # cannot resume, the newest full checkpoint, the trial's resume point
        assert taken[0].startswith("0: strip")
        assert kinds == {1: "weights", 3: "full"}
    else:
        # step 1 keeps what the aggressive policy protects: the best, a full resume point
        assert kinds == {1: "full"}
    # step 2 persists: later trials and restarts of the study read the aggressive policy
    assert (store.root.parent.parent / POLICY_FILE).exists()
    assert (
        effective_retention(store.root.parent.parent, guard.retention | {"keep_last_n": 3})[
            "keep_last_n"
        ]
        == 0
    )
    full = disk_module.DiskUsage("/", 100 * MiB, 99.5 * MiB, MiB // 2)
    monkeypatch.setattr(pressure, "disk_usage", lambda path: full)
    with pytest.raises(NoSpaceError):
        guard.ensure_room(1 * MiB, store, {1: 0.9, 2: 0.5, 3: 0.4})
    assert {i.epoch: i.kind for i in store.list()} == kinds


def test_cleanup_lists_then_removes_only_orphans(tmp_path):
    study = Study(tmp_path, retention={"keep_best_trials": 1})
    study.run(0)
    study.run(1)
    trial = study.report_path(0).parent / "checkpoints"
    (trial / ".tmp-epoch_0009-dead").mkdir()
    (trial / ".tmp-epoch_0009-dead" / "model.safetensors").write_bytes(b"x" * 100)
    confirm = study.dir / "confirm_trial_0000_seed_1" / "checkpoints"  # a study.confirm run's
    (confirm / ".tmp-epoch_0001-dead").mkdir(parents=True)
    stray = study.dir / "trial_0007"
    (stray / "logs").mkdir(parents=True)
    (stray / "logs" / "trial.jsonl").write_text("{}\n")
    kept = sorted(str(p) for p in study.dir.glob("trial_*/checkpoints/epoch_*"))
    dry = cleanup(study.dir, study.config["retention"], "val_criteria_f1_macro", 3, apply=False)
    paths = {o["path"] for o in dry["orphans"]}
    assert str(trial / ".tmp-epoch_0009-dead") in paths and str(stray) in paths
    assert str(confirm / ".tmp-epoch_0001-dead") in paths
    assert not paths & set(kept), "a retained checkpoint was listed as an orphan"
    assert (trial / ".tmp-epoch_0009-dead").exists() and stray.exists()  # dry run deletes nothing
    assert "would remove" in dry["summary"] and dry["bytes"] >= 100
    done = cleanup(study.dir, study.config["retention"], "val_criteria_f1_macro", 3, apply=True)
    assert done["bytes_removed"] == dry["bytes"]
    assert not (trial / ".tmp-epoch_0009-dead").exists() and not stray.exists()
    assert not (confirm / ".tmp-epoch_0001-dead").exists()
    assert sorted(str(p) for p in study.dir.glob("trial_*/checkpoints/epoch_*")) == kept
    assert (
        cleanup(study.dir, study.config["retention"], "val_criteria_f1_macro", 3, apply=False)[
            "orphans"
        ]
        == []
    )


def test_cli_cleanup_and_no_space_exit_code(tmp_path, monkeypatch, capsys):
    import yaml

    from leanhpo.cli import main

    config = {"study": {"name": "s", "storage": f"sqlite:///{tmp_path}/o.db"}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    monkeypatch.chdir(tmp_path)
    assert main(["cleanup", "--config", str(tmp_path / "c.yaml")]) == 0
    assert "would remove 0 orphan(s)" in capsys.readouterr().out
    assert os.environ.get("LEANHPO_FAKE") is None


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    values=st.lists(st.sampled_from([0.1, 0.2, 0.3, None]), min_size=1, max_size=8),
    cap_checkpoints=st.integers(min_value=2, max_value=6),
    keep_last_n=st.integers(min_value=0, max_value=3),
    free_mib=st.lists(st.integers(min_value=0, max_value=200), min_size=8, max_size=8),
)
def test_the_cap_and_the_protected_checkpoints_hold_after_every_save(
    tmp_path_factory, monkeypatch, values, cap_checkpoints, keep_last_n, free_mib
):
    """Random metrics (with ties), policies and disk states: after every save the study stays
    under max_total_size, the running trial's co-best and newest survive, and a save that cannot
    fit raises before anything is written."""
    from leanhpo.checkpoints import plan_retention
    from leanhpo.storage import disk as disk_module
    from leanhpo.study import pressure

    root = tmp_path_factory.mktemp("prop") / "s"
    store = CheckpointStore(root / "trial_0000" / "checkpoints")
    tensor = {"w": {"x": torch.zeros(4096)}}  # one checkpoint: ~16 KiB + meta
    store.save(99, tensor, {})
    size = store.list()[0].bytes
    store.delete(99)
    retention = {
        "keep_last_n": keep_last_n,
        "keep_best_k": 1,
        "keep_best_k_max": 2,
        "max_total_size": f"{cap_checkpoints * size}B",
        "min_free_disk_percent": 10,
        "keep_best_trials": 3,
    }
    guard = StorageGuard(
        root, store.root.parent, retention, "m", __import__("logging").getLogger("p")
    )
    history: dict[int, float | None] = {}
    for epoch, (value, free) in enumerate(zip(values, free_mib, strict=False), start=1):
        usage = disk_module.DiskUsage(
            "/", 100 * MiB, (100 - free // 2) * MiB, free // 2 * MiB + 10 * MiB
        )
        monkeypatch.setattr(pressure, "disk_usage", lambda path, usage=usage: usage)
        history[epoch] = value
        before = {i.epoch for i in store.list()}
        try:
            guard.ensure_room(size, store, history)
        except NoSpaceError:
            assert {i.epoch for i in store.list()} <= before  # nothing written
            del history[epoch]
            break
        store.save(epoch, tensor, {})
        plan = plan_retention([(i.epoch, history.get(i.epoch)) for i in store.list()], guard.policy)
        for doomed in plan.delete:
            store.delete(doomed)
        on_disk = {i.epoch for i in store.list()}
        assert sum(i.bytes for i in store.list()) <= cap_checkpoints * size
        assert on_disk  # a resume-capable checkpoint always remains
        scores = [history[e] for e in before | {epoch} if history.get(e) is not None]
        if guard.policy.keep_last_n or not scores or value == max(scores):
            assert epoch in on_disk  # the newest survives unless the policy lets it go
        ranked = [v for e, v in history.items() if e in before | {epoch} and v is not None]
        best = max(ranked) if ranked else None
        assert {
            e for e in before | {epoch} if best is not None and history.get(e) == best
        } <= on_disk
