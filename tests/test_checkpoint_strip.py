"""Weights-only checkpoints: `CheckpointStore.strip`, the manifest's kind, and what reads them.

The kill -9 tests of stripping are in test_checkpoint_kill.py (mode "strip").
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from leanhpo.checkpoints import (
    FULL,
    WEIGHTS_ONLY,
    CheckpointStore,
    CorruptCheckpointError,
    checkpoint_info,
)


def groups(seed: int = 0) -> dict[str, dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return {
        "model": {"weight": torch.randn(64, 32, generator=generator)},
        "optimizer": {
            "exp_avg": torch.randn(64, 32, generator=generator),
            "exp_avg_sq": torch.rand(64, 32, generator=generator),
        },
        "rng": {"torch": torch.arange(16, dtype=torch.uint8)},
    }


@pytest.fixture
def store(tmp_path: Path) -> CheckpointStore:
    return CheckpointStore(tmp_path / "trial_0000" / "checkpoints")


def manifest(store: CheckpointStore, epoch: int) -> dict:
    return json.loads((store.root / f"epoch_{epoch:04d}" / "MANIFEST.json").read_text())


def test_strip_keeps_the_weights_and_meta_and_frees_the_rest(store: CheckpointStore) -> None:
    meta = {"epoch": 2, "metrics": {"val_f1": 0.4}}
    saved = store.save(2, groups(), meta)
    folder = saved.path
    optimizer_bytes = sum(
        (folder / f"{g}.safetensors").stat().st_size for g in ("optimizer", "rng")
    )
    assert saved.kind == FULL and manifest(store, 2)["kind"] == FULL

    freed = store.strip(2)

    assert freed == optimizer_bytes
    assert sorted(p.name for p in folder.iterdir()) == [
        "MANIFEST.json",
        "meta.json",
        "model.safetensors",
    ]
    stripped = manifest(store, 2)
    assert stripped["kind"] == WEIGHTS_ONLY and stripped["stripped_from"] == saved.sha256
    store.verify(2)
    loaded = store.load(2)
    assert loaded.meta == meta and set(loaded.groups) == {"model"}
    assert torch.equal(loaded.groups["model"]["weight"], groups()["model"]["weight"])
    # Reports and ledgers name the checkpoint by the manifest it was saved with.
    assert loaded.info.kind == WEIGHTS_ONLY and not loaded.info.resumable
    assert loaded.info.saved_sha256 == saved.sha256 != loaded.info.sha256
    (listed,) = store.list()
    assert listed.saved_sha256 == saved.sha256
    assert (
        listed.bytes == sum(p.stat().st_size for p in folder.iterdir()) < saved.bytes - freed + 512
    )
    assert checkpoint_info(folder) == listed


def test_strip_is_idempotent(store: CheckpointStore) -> None:
    saved = store.save(1, groups(), {})
    assert store.strip(1) > 0
    first = manifest(store, 1)
    assert store.strip(1) == 0
    assert manifest(store, 1) == first and first["stripped_from"] == saved.sha256


def test_resume_never_loads_a_weights_only_checkpoint(store: CheckpointStore) -> None:
    for epoch in (1, 2, 3):
        store.save(epoch, groups(epoch), {"epoch": epoch})
    store.strip(3)
    store.strip(1)
    assert store.load_latest_valid().info.epoch == 3  # evaluation may read any kind
    assert store.load_latest_valid(resumable_only=True).info.epoch == 2
    store.strip(2)
    assert store.load_latest_valid(resumable_only=True) is None
    assert store.quarantined == []  # passed over, not quarantined


def test_a_corrupt_full_checkpoint_falls_back_past_weights_only_ones(
    store: CheckpointStore,
) -> None:
    for epoch in (1, 2, 3):
        store.save(epoch, groups(epoch), {"epoch": epoch})
    store.strip(2)
    with (store.root / "epoch_0003" / "optimizer.safetensors").open("r+b") as handle:
        handle.seek(200)
        handle.write(b"\xff\xff")
    loaded = store.load_latest_valid(resumable_only=True)
    assert loaded is not None and loaded.info.epoch == 1
    assert [q["id"] for q in store.quarantined] == ["epoch_0003"]


def test_a_new_save_replaces_a_weights_only_copy_without_quarantine(
    store: CheckpointStore,
) -> None:
    store.save(1, groups(1), {"run": "first"})
    store.strip(1)
    store.save(1, groups(1), {"run": "recomputed"})
    assert store.quarantined == [] and not (store.root.parent / "quarantine").exists()
    assert store.list()[0].kind == FULL and store.load(1).meta == {"run": "recomputed"}
    store.save(1, groups(1), {"run": "again"})  # a full one is still set aside, as before
    assert [q["reason"] for q in store.quarantined] == ["superseded"]


def test_an_old_manifest_without_kind_is_full(store: CheckpointStore) -> None:
    store.save(1, groups(), {})
    path = store.root / "epoch_0001" / "MANIFEST.json"
    old = manifest(store, 1)
    del old["kind"]
    path.write_text(json.dumps(old))
    old_sha = hashlib.sha256(path.read_bytes()).hexdigest()
    (info,) = store.list()
    assert info.kind == FULL and info.resumable and info.saved_sha256 == old_sha
    assert store.load_latest_valid(resumable_only=True) is not None
    assert store.strip(1) > 0 and store.list()[0].kind == WEIGHTS_ONLY
    assert store.list()[0].saved_sha256 == old_sha


def test_strip_refuses_a_checkpoint_that_does_not_verify(store: CheckpointStore) -> None:
    store.save(1, groups(), {})
    path = store.root / "epoch_0001" / "MANIFEST.json"
    path.write_text("{not json")
    with pytest.raises(CorruptCheckpointError):
        store.strip(1)
    assert (store.root / "epoch_0001" / "optimizer.safetensors").exists()  # nothing dropped


@pytest.mark.parametrize("bad", [{"kind": "partial"}, {"stripped_from": "xyz"}])
def test_a_manifest_with_a_bad_kind_is_corrupt(store: CheckpointStore, bad: dict) -> None:
    store.save(1, groups(), {})
    path = store.root / "epoch_0001" / "MANIFEST.json"
    path.write_text(json.dumps({**manifest(store, 1), **bad}))
    with pytest.raises(CorruptCheckpointError, match=r"kind|stripped_from"):
        store.load(1)


def test_a_strip_killed_after_its_commit_is_finished_by_the_next_store(tmp_path: Path) -> None:
    """The state a kill between the manifest's rename and the unlinks leaves."""
    root = tmp_path / "checkpoints"
    store = CheckpointStore(root)
    saved = store.save(1, groups(), {})
    folder = saved.path
    backup = {name: (folder / name).read_bytes() for name in ("optimizer.safetensors",)}
    store.strip(1)
    for name, data in backup.items():  # the unlink did not happen yet
        (folder / name).write_bytes(data)
    (folder / ".tmp-MANIFEST.json-dead").write_bytes(b"{}")  # and a strip killed earlier
    reopened = CheckpointStore(root)
    assert sorted(p.name for p in folder.iterdir()) == [
        "MANIFEST.json",
        "meta.json",
        "model.safetensors",
    ]
    reopened.verify(1)
    assert reopened.list()[0].kind == WEIGHTS_ONLY
