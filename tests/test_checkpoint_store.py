"""CheckpointStore: round trips, manifests, and real corrupted bytes on disk."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import shutil
import uuid
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest
import torch

from leanhpo.checkpoints import (
    CHECKPOINT_FORMAT,
    CheckpointStore,
    CorruptCheckpointError,
    flatten_state,
    unflatten_state,
)
from leanhpo.checkpoints import store as store_module


def sample_groups(seed: int = 0) -> dict[str, dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return {
        "model": {
            "weight": torch.randn(4, 3, generator=generator),
            "half": torch.randn(5, generator=generator).to(torch.bfloat16),
            "index": torch.arange(6),
            "scalar": torch.tensor(3.5),
        },
        "optimizer": {"step": torch.tensor(7.0)},
    }


def assert_groups_equal(expected: dict, actual: dict) -> None:
    assert expected.keys() == actual.keys()
    for group, tensors in expected.items():
        assert tensors.keys() == actual[group].keys()
        for key, tensor in tensors.items():
            assert actual[group][key].dtype == tensor.dtype
            assert torch.equal(actual[group][key], tensor)


@pytest.fixture
def store(tmp_path: Path) -> CheckpointStore:
    return CheckpointStore(tmp_path / "trial_0001" / "checkpoints")


def test_save_load_round_trip(store: CheckpointStore) -> None:
    meta = {"epoch": 3, "metrics": {"val_f1": 0.5, "val_loss": float("nan")}, "step": 120}
    info = store.save(3, sample_groups(), meta)
    assert info.id == "epoch_0003" and info.path == store.root / "epoch_0003"
    loaded = store.load(3)
    assert_groups_equal(sample_groups(), loaded.groups)
    assert loaded.meta["metrics"]["val_f1"] == 0.5 and loaded.meta["step"] == 120
    assert loaded.info == info
    assert info.to_dict()["path"] == str(info.path)


def test_manifest_matches_the_bytes_on_disk(store: CheckpointStore) -> None:
    info = store.save(1, sample_groups(), {"epoch": 1})
    manifest_raw = (info.path / "MANIFEST.json").read_bytes()
    manifest = json.loads(manifest_raw)
    assert manifest["format"] == CHECKPOINT_FORMAT and manifest["epoch"] == 1
    datetime.fromisoformat(manifest["created_at"])
    assert set(manifest["files"]) == {"model.safetensors", "optimizer.safetensors", "meta.json"}
    for name, entry in manifest["files"].items():
        data = (info.path / name).read_bytes()
        assert entry == {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    assert info.sha256 == hashlib.sha256(manifest_raw).hexdigest()
    assert info.bytes == sum(p.stat().st_size for p in info.path.iterdir())
    assert store.list() == [info] and store.total_bytes() == info.bytes


def test_folder_appears_only_at_the_commit_rename(
    store: CheckpointStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[str, list[str]]] = []
    real_rename = os.rename

    def spying_rename(source: Path, dest: Path) -> None:
        seen.append((Path(source).name, sorted(p.name for p in Path(source).iterdir())))
        assert not Path(dest).exists()
        real_rename(source, dest)

    monkeypatch.setattr(store_module.os, "rename", spying_rename)
    store.save(2, sample_groups(), {})
    ((source_name, contents),) = seen
    assert source_name.startswith(".tmp-epoch_0002-")
    assert "MANIFEST.json" in contents and "meta.json" in contents


def test_failed_save_leaves_nothing(store: CheckpointStore) -> None:
    shared = torch.zeros(4)
    bad_groups = {"model": {"a": torch.ones(2)}, "tied": {"x": shared, "y": shared}}
    with pytest.raises(RuntimeError, match="share memory"):
        store.save(1, bad_groups, {})
    assert list(store.root.iterdir()) == []


@pytest.mark.parametrize(
    ("epoch", "groups", "meta", "error"),
    [
        (-1, {}, {}, ValueError),
        (10_000, {}, {}, ValueError),
        (1, {"../evil": {}}, {}, ValueError),
        (1, {}, [], TypeError),
        (1, {}, {"x": object()}, TypeError),
    ],
)
def test_bad_arguments_write_nothing(
    store: CheckpointStore, epoch: int, groups: dict, meta: object, error: type
) -> None:
    with pytest.raises(error):
        store.save(epoch, groups, meta)  # type: ignore[arg-type]
    assert not store.root.exists() or list(store.root.iterdir()) == []


def test_list_sorts_and_flags_missing_manifest(store: CheckpointStore) -> None:
    for epoch in (5, 1, 3):
        store.save(epoch, sample_groups(epoch), {"epoch": epoch})
    (store.root / "epoch_0003" / "MANIFEST.json").unlink()
    (store.root / "epoch_12").mkdir()  # not a checkpoint name: ignored
    infos = store.list()
    assert [info.epoch for info in infos] == [1, 3, 5]
    assert [info.has_manifest for info in infos] == [True, False, True]


def test_resave_quarantines_the_previous_folder(store: CheckpointStore) -> None:
    store.save(1, sample_groups(0), {"version": "old"})
    store.save(1, sample_groups(1), {"version": "new"})
    assert store.load(1).meta == {"version": "new"}
    ((record),) = store.quarantined
    assert record["reason"] == "superseded"
    old = Path(record["destination"])
    assert json.loads((old / "meta.json").read_text()) == {"version": "old"}
    assert "superseded" in (old / "REASON.txt").read_text()


def test_leftover_tmp_and_trash_are_cleaned(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "checkpoints"
    CheckpointStore(root).save(1, sample_groups(), {})
    (root / f".tmp-epoch_0002-{uuid.uuid4().hex}").mkdir()
    (root / f".tmp-epoch_0002-{uuid.uuid4().hex}").mkdir()
    shutil.copytree(root / "epoch_0001", root / f".trash-epoch_0000-{uuid.uuid4().hex}")
    (root / ".tmp-stray-file").write_bytes(b"x")
    with caplog.at_level(logging.WARNING):
        store = CheckpointStore(root)
    assert store.cleaned_tmp == 4 and "4 uncommitted" in caplog.text
    assert [p.name for p in root.iterdir()] == ["epoch_0001"]
    assert CheckpointStore(root).cleaned_tmp == 0


def test_delete_is_complete_and_idempotent(store: CheckpointStore) -> None:
    store.save(1, sample_groups(), {})
    store.save(2, sample_groups(), {})
    assert store.delete(1) is True
    assert [p.name for p in store.root.iterdir()] == ["epoch_0002"]
    assert store.delete(1) is False


def test_missing_epoch_is_not_corruption(store: CheckpointStore) -> None:
    with pytest.raises(FileNotFoundError):
        store.load(7)
    with pytest.raises(FileNotFoundError):
        store.quarantine(7, "nothing there")
    assert store.load_latest_valid() is None


def _flip_byte(folder: Path) -> None:
    path = folder / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(folder: Path) -> None:
    path = folder / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-10])


def _rewrite_listed_file(folder: Path, name: str, data: bytes) -> None:
    """Replace a file AND fix its manifest entry, so only the parser can notice."""
    (folder / name).write_bytes(data)
    manifest = json.loads((folder / "MANIFEST.json").read_text())
    manifest["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    (folder / "MANIFEST.json").write_text(json.dumps(manifest))


def _edit_manifest(folder: Path, edit: Callable[[dict], None]) -> None:
    manifest = json.loads((folder / "MANIFEST.json").read_text())
    edit(manifest)
    (folder / "MANIFEST.json").write_text(json.dumps(manifest))


def _wrong_sha(manifest: dict) -> None:
    manifest["files"]["model.safetensors"]["sha256"] = "0" * 64


CORRUPTIONS: dict[str, tuple[Callable[[Path], object], str]] = {
    "flipped_byte": (_flip_byte, "SHA-256"),
    "truncated": (_truncate, "bytes"),
    "missing_file": (lambda f: (f / "optimizer.safetensors").unlink(), "missing"),
    "missing_manifest": (lambda f: (f / "MANIFEST.json").unlink(), "MANIFEST.json is missing"),
    "manifest_garbage": (lambda f: (f / "MANIFEST.json").write_text("{oops"), "not valid JSON"),
    "manifest_wrong_sha": (lambda f: _edit_manifest(f, _wrong_sha), "SHA-256"),
    "manifest_other_epoch": (lambda f: _edit_manifest(f, lambda m: m.update(epoch=9)), "epoch"),
    "manifest_other_format": (
        lambda f: _edit_manifest(f, lambda m: m.update(format="other/9")),
        "is not in format",
    ),
    "manifest_lists_nothing": (
        lambda f: _edit_manifest(f, lambda m: m.update(files={})),
        "lists no files",
    ),
    "manifest_bad_sha_field": (
        lambda f: _edit_manifest(f, lambda m: m["files"]["meta.json"].update(sha256="xyz")),
        "no valid sha256",
    ),
    "manifest_bad_size_field": (
        lambda f: _edit_manifest(f, lambda m: m["files"]["meta.json"].update(bytes=-1)),
        "no valid size",
    ),
    "manifest_escapes": (
        lambda f: _edit_manifest(f, lambda m: m["files"].update({"../x": m["files"]["meta.json"]})),
        "invalid file name",
    ),
    "manifest_drops_meta": (
        lambda f: _edit_manifest(f, lambda m: m["files"].pop("meta.json")),
        "meta.json is not listed",
    ),
    "garbage_meta": (lambda f: (f / "meta.json").write_text("not json"), "meta.json"),
    "consistent_garbage_meta": (
        lambda f: _rewrite_listed_file(f, "meta.json", b"\xff\xfe garbage"),
        "meta.json is not valid JSON",
    ),
    "meta_not_object": (lambda f: _rewrite_listed_file(f, "meta.json", b"[1]"), "JSON object"),
    "consistent_garbage_tensors": (
        lambda f: _rewrite_listed_file(f, "model.safetensors", b"\x10\x00" + os.urandom(40)),
        "not a valid safetensors file",
    ),
}

# verify() checks bytes against the manifest only; these need load()'s parsing.
ONLY_PARSING_NOTICES = {
    "manifest_drops_meta",
    "consistent_garbage_meta",
    "meta_not_object",
    "consistent_garbage_tensors",
}


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_corruption_is_detected_and_quarantined(store: CheckpointStore, corruption: str) -> None:
    corrupt, expected_reason = CORRUPTIONS[corruption]
    store.save(1, sample_groups(1), {"epoch": 1})
    store.save(2, sample_groups(2), {"epoch": 2})
    corrupt(store.root / "epoch_0002")

    with pytest.raises(CorruptCheckpointError, match=expected_reason) as caught:
        store.load(2)
    assert caught.value.epoch == 2
    if corruption not in ONLY_PARSING_NOTICES:
        with pytest.raises(CorruptCheckpointError):
            store.verify(2)

    loaded = store.load_latest_valid()
    assert loaded is not None and loaded.info.epoch == 1 and loaded.meta == {"epoch": 1}
    assert_groups_equal(sample_groups(1), loaded.groups)
    ((record),) = store.quarantined
    assert record["id"] == "epoch_0002" and expected_reason in record["reason"]
    reason_text = (Path(record["destination"]) / "REASON.txt").read_text()
    assert expected_reason in reason_text
    assert Path(record["destination"]).parent == store.root.parent / "quarantine"
    assert [info.epoch for info in store.list()] == [1]


def test_all_corrupt_gives_none_and_keeps_the_bytes(store: CheckpointStore) -> None:
    for epoch in (1, 2):
        store.save(epoch, sample_groups(), {})
        _flip_byte(store.root / f"epoch_{epoch:04d}")
    assert store.load_latest_valid() is None
    assert [r["epoch"] for r in store.quarantined] == [2, 1]
    assert all((Path(r["destination"]) / "model.safetensors").exists() for r in store.quarantined)


def test_verify_passes_and_logs_extra_files(
    store: CheckpointStore, caplog: pytest.LogCaptureFixture
) -> None:
    store.save(1, sample_groups(), {})
    store.verify(1)
    (store.root / "epoch_0001" / "notes.txt").write_text("hand-made")
    with caplog.at_level(logging.WARNING):
        store.verify(1)
        assert store.load(1).meta == {}
    assert "notes.txt" in caplog.text


def test_load_never_unpickles(store: CheckpointStore, monkeypatch: pytest.MonkeyPatch) -> None:
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    optimizer_tensors, skeleton = flatten_state(optimizer.state_dict())
    groups = {"model": model.state_dict(), "optimizer": optimizer_tensors}
    store.save(1, groups, {"optimizer_skeleton": skeleton})

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("pickle must not be used to load a checkpoint")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    loaded = store.load_latest_valid()
    assert loaded is not None
    restored = unflatten_state(loaded.groups["optimizer"], loaded.meta["optimizer_skeleton"])
    torch.optim.AdamW(model.parameters()).load_state_dict(restored)
    assert torch.equal(loaded.groups["model"]["weight"], model.weight.detach())


def test_map_location_moves_tensors(store: CheckpointStore) -> None:
    store.save(1, sample_groups(), {})
    loaded = store.load(1, map_location="meta")
    assert loaded.groups["model"]["weight"].device.type == "meta"


def test_quarantine_across_filesystems(tmp_path: Path) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("needs /dev/shm on another filesystem than the test folder")
    quarantine_dir = shm / f"leanhpo-test-{uuid.uuid4().hex}"
    try:
        store = CheckpointStore(tmp_path / "checkpoints", quarantine_dir=quarantine_dir)
        store.save(1, sample_groups(), {})
        dest = store.quarantine(1, "test")
        assert (dest / "model.safetensors").exists() and (dest / "REASON.txt").exists()
        assert list(store.root.iterdir()) == []
    finally:
        shutil.rmtree(quarantine_dir, ignore_errors=True)
