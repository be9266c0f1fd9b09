"""Streamed safetensors files: byte-identical to the library, strict reads, lean memory."""

from __future__ import annotations

import gc
import hashlib
import json
import os
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import safetensors.torch
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors import safe_open

from leanhpo.checkpoints import CheckpointStore, CorruptCheckpointError, flatten_state
from leanhpo.checkpoints import safetensors_stream as stream
from leanhpo.checkpoints.safetensors_stream import (
    SAFETENSORS_DTYPES,
    read_tensors,
    sha256_of_file,
    write_file,
)

BIG_TENSOR_BYTES = 200 * 1024 * 1024
RSS_SAMPLE_S = 0.001


def mixed_tensors() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {
        "weight": torch.randn(4, 3, generator=generator),
        "half": torch.randn(5, generator=generator).to(torch.bfloat16),
        "fp16": torch.randn(2, 2, generator=generator).half(),
        "index": torch.arange(6),
        "mask": torch.tensor([True, False, True]),
        "scalar": torch.tensor(3.5),
        "empty": torch.zeros(0, 3),
        "bytes": torch.arange(7, dtype=torch.uint8),
        "double": torch.randn(3, generator=generator, dtype=torch.float64),
        "complex": torch.randn(2, generator=generator, dtype=torch.complex64),
        "fp8": torch.randn(3, generator=generator).to(torch.float8_e4m3fn),
        "unsigned": torch.arange(3).to(torch.uint32),
        "a.b#1": torch.ones(1, dtype=torch.int16),
        "zählt": torch.ones(2, dtype=torch.int8),
    }


def read_file(path: Path) -> stream.ReadResult:
    fd = os.open(path, os.O_RDONLY)
    try:
        return read_tensors(fd, os.fstat(fd).st_size)
    finally:
        os.close(fd)


def assert_same_tensors(expected: dict[str, torch.Tensor], actual: dict[str, torch.Tensor]) -> None:
    assert expected.keys() == actual.keys()
    for key, tensor in expected.items():
        assert actual[key].dtype == tensor.dtype and actual[key].shape == tensor.shape, key
        assert torch.equal(_raw(actual[key]), _raw(tensor)), key


def _raw(tensor: torch.Tensor) -> torch.Tensor:
    """Bytes, so that NaN and float8 compare exactly."""
    return tensor.contiguous().reshape(-1).view(torch.uint8)


# -- the file format ------------------------------------------------------------------


def test_streamed_file_is_byte_identical_to_safetensors(tmp_path: Path) -> None:
    tensors = mixed_tensors()
    streamed = write_file(tmp_path / "x.safetensors", tensors)
    reference = safetensors.torch.save(tensors)
    data = (tmp_path / "x.safetensors").read_bytes()
    assert data == reference
    assert streamed.bytes == len(data) and streamed.sha256 == hashlib.sha256(data).hexdigest()


def test_official_loaders_read_streamed_files(tmp_path: Path) -> None:
    tensors = mixed_tensors()
    write_file(tmp_path / "x.safetensors", tensors)
    assert_same_tensors(tensors, safetensors.torch.load_file(tmp_path / "x.safetensors"))
    with safe_open(tmp_path / "x.safetensors", framework="pt") as handle:
        assert_same_tensors(tensors, {key: handle.get_tensor(key) for key in handle.keys()})  # noqa: SIM118


def test_reader_reads_official_files_into_own_storage(tmp_path: Path) -> None:
    tensors = mixed_tensors()
    (tmp_path / "x.safetensors").write_bytes(safetensors.torch.save(tensors))
    result = read_file(tmp_path / "x.safetensors")
    assert result.error is None and result.metadata is None
    assert_same_tensors(tensors, result.tensors)
    # Own storage at offset 0, writable: APIs that ignore storage offsets work.
    pointers = {t.untyped_storage().data_ptr() for t in result.tensors.values() if t.numel()}
    assert len(pointers) == sum(1 for t in result.tensors.values() if t.numel())
    assert all(t.storage_offset() == 0 for t in result.tensors.values())


def test_loaded_rng_state_can_be_restored(tmp_path: Path) -> None:
    """torch.set_rng_state ignores storage offsets, so views into one buffer would fail."""
    tensors, _ = flatten_state({"torch": torch.get_rng_state(), "pad": torch.ones(3)})
    write_file(tmp_path / "rng.safetensors", tensors)
    restored = read_file(tmp_path / "rng.safetensors").tensors
    expected = torch.rand(4, generator=torch.Generator().set_state(torch.get_rng_state()))
    torch.set_rng_state(restored["torch"])
    assert torch.equal(torch.rand(4), expected)


dtypes = st.sampled_from([dtype for dtype, _ in SAFETENSORS_DTYPES])
shapes = st.lists(st.integers(0, 3), max_size=3)
names = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=6)


@settings(max_examples=40, deadline=None)
@given(st.dictionaries(names.filter(lambda n: n != "__metadata__"), st.tuples(dtypes, shapes)))
def test_any_tensor_mix_is_byte_identical(spec: dict[str, tuple[torch.dtype, list[int]]]) -> None:
    tensors = {name: _filled(dtype, shape) for name, (dtype, shape) in spec.items()}
    ordered = stream._ordered(tensors)
    header = stream.encode_header(ordered)
    reference = safetensors.torch.save(tensors)
    assert reference == header + b"".join(_raw(t).numpy().tobytes() for _, t in ordered)
    entries, _ = stream.parse_header(header[8:], len(reference) - len(header))
    assert [entry.name for entry in entries] == list(json.loads(header[8:]))


def _filled(dtype: torch.dtype, shape: list[int]) -> torch.Tensor:
    count = 1
    for size in shape:
        count *= size
    raw = torch.arange(count * dtype.itemsize, dtype=torch.int64).remainder(251).to(torch.uint8)
    return raw.view(dtype).reshape(shape)


def test_metadata_round_trip(tmp_path: Path) -> None:
    tensors = {"w": torch.ones(2)}
    metadata = {"format": "pt", "note": 'ünïcode\n\x01 "quoted" \\'}
    write_file(tmp_path / "m.safetensors", tensors, metadata)
    with safe_open(tmp_path / "m.safetensors", framework="pt") as handle:
        assert handle.metadata() == metadata
    result = read_file(tmp_path / "m.safetensors")
    assert result.metadata == metadata and torch.equal(result.tensors["w"], tensors["w"])
    # One key: the library's random key order cannot differ, so the bytes must not.
    write_file(tmp_path / "one.safetensors", tensors, {"note": metadata["note"]})
    expected = safetensors.torch.save(tensors, metadata={"note": metadata["note"]})
    assert (tmp_path / "one.safetensors").read_bytes() == expected
    with pytest.raises(TypeError, match="str to str"):
        write_file(tmp_path / "bad.safetensors", tensors, {"n": 1})  # type: ignore[dict-item]


def test_views_write_only_their_own_bytes(tmp_path: Path) -> None:
    base = torch.arange(12, dtype=torch.float32)
    param = torch.nn.Parameter(torch.ones(2, 2))
    complex_values = torch.tensor([1 + 2j, 3 - 4j], dtype=torch.complex64)
    tensors = {
        "left": base[:4],
        "right": base[6:],
        "transposed": base.reshape(3, 4).t(),
        "param": param,
        "conj": complex_values.conj(),
    }
    write_file(tmp_path / "v.safetensors", tensors)
    loaded = safetensors.torch.load_file(tmp_path / "v.safetensors")
    assert torch.equal(loaded["left"], base[:4]) and torch.equal(loaded["right"], base[6:])
    assert torch.equal(loaded["transposed"], base.reshape(3, 4).t())
    assert torch.equal(loaded["param"], param.detach())
    assert torch.equal(loaded["conj"], torch.tensor([1 - 2j, 3 + 4j], dtype=torch.complex64))


@pytest.mark.parametrize(
    "make",
    [
        lambda shared: {"a": shared, "b": shared},
        lambda shared: {"a": shared[0:4], "b": shared[2:6]},
        lambda shared: {"a": shared, "b": shared.view(2, 4), "c": torch.ones(1)},
    ],
    ids=["tied", "overlapping_slices", "reshaped_view"],
)
def test_shared_memory_is_refused(tmp_path: Path, make: object) -> None:
    tensors = make(torch.zeros(8))  # type: ignore[operator]
    with pytest.raises(RuntimeError, match="share memory"):
        write_file(tmp_path / "s.safetensors", tensors)
    assert not (tmp_path / "s.safetensors").exists()


@pytest.mark.parametrize(
    ("tensors", "error", "match"),
    [
        ({"x": [1.0]}, TypeError, "torch.Tensor"),
        ({"x": torch.ones(2, dtype=torch.complex128)}, TypeError, "dtype"),
        ({"x": torch.eye(2).to_sparse()}, ValueError, "to_dense"),
        ({"__metadata__": torch.ones(1)}, ValueError, "invalid tensor name"),
        ({1: torch.ones(1)}, ValueError, "invalid tensor name"),
    ],
)
def test_unstorable_values_are_refused(
    tmp_path: Path, tensors: dict, error: type, match: str
) -> None:
    with pytest.raises(error, match=match):
        write_file(tmp_path / "x.safetensors", tensors)


# -- strict reading -------------------------------------------------------------------


def _header_file(path: Path, header: object, data: bytes = b"", raw: bytes | None = None) -> Path:
    text = raw if raw is not None else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)
    return path


F32_X = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
BAD_HEADERS = {
    "not_json": (None, b"", b"{nope"),
    "too_deep": (None, b"", b'{"x":' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
    "not_object": ([1], b"", None),
    "not_brace": (None, b"", b' {"a": 1}'),
    "not_utf8": (None, b"", b"{\xff}"),
    "duplicate_key": (None, bytes(8), b'{"x":' + json.dumps(F32_X).encode() + b',"x":{}}'),
    "unknown_dtype": ({"x": {**F32_X, "dtype": "F128"}}, bytes(8), None),
    "extra_field": ({"x": {**F32_X, "extra": 1}}, bytes(8), None),
    "bad_shape": ({"x": {**F32_X, "shape": [-2]}}, bytes(8), None),
    "bool_shape": ({"x": {**F32_X, "shape": [True, True]}}, bytes(8), None),
    "bad_offsets": ({"x": {**F32_X, "data_offsets": [0]}}, bytes(8), None),
    "size_mismatch": ({"x": {**F32_X, "shape": [3]}}, bytes(8), None),
    "gap": ({"x": {**F32_X, "data_offsets": [4, 12]}}, bytes(12), None),
    "short_cover": ({"x": F32_X}, bytes(12), None),
    "bad_metadata": ({"__metadata__": {"k": 1}, "x": F32_X}, bytes(8), None),
}


@pytest.mark.parametrize("case", sorted(BAD_HEADERS))
def test_invalid_headers_are_reported_with_a_full_digest(tmp_path: Path, case: str) -> None:
    header, data, raw = BAD_HEADERS[case]
    path = _header_file(tmp_path / "bad.safetensors", header, data, raw)
    result = read_file(path)
    assert result.error is not None and result.tensors == {}
    assert result.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("content", [b"", b"\x01\x02", struct.pack("<Q", 1 << 40) + b"{}"])
def test_truncated_or_oversized_header_lengths(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "short").write_bytes(content)
    result = read_file(tmp_path / "short")
    assert result.error is not None and result.sha256 == hashlib.sha256(content).hexdigest()


def test_file_that_changes_size_while_read(tmp_path: Path) -> None:
    """The caller checked the size first; a file that shrinks or grows after that fails."""
    path = tmp_path / "x.safetensors"
    write_file(path, {"x": torch.ones(4)})
    size = path.stat().st_size
    with path.open("r+b") as handle:
        handle.truncate(size - 4)
    fd = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(EOFError, match="ended early"):
            read_tensors(fd, size)
    finally:
        os.close(fd)
    write_file(tmp_path / "y.safetensors", {"x": torch.ones(4)})
    with (tmp_path / "y.safetensors").open("ab") as handle:
        handle.write(b"tail")
    fd = os.open(tmp_path / "y.safetensors", os.O_RDONLY)
    try:
        with pytest.raises(EOFError, match="more than"):
            read_tensors(fd, size)
    finally:
        os.close(fd)


def test_partial_writes_and_reads_are_completed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """writev/readv may move fewer bytes than asked; every byte must still arrive."""
    real_writev, real_readv = os.writev, os.readv

    def short_writev(fd: int, views: list[memoryview]) -> int:
        return real_writev(fd, [views[0][:1000]])

    def short_readv(fd: int, views: list[memoryview]) -> int:
        return real_readv(fd, [views[0][:777]])

    monkeypatch.setattr(stream.os, "writev", short_writev)
    monkeypatch.setattr(stream.os, "readv", short_readv)
    tensors = {**mixed_tensors(), "big": torch.randn(5000)}
    write_file(tmp_path / "x.safetensors", tensors)
    assert (tmp_path / "x.safetensors").read_bytes() == safetensors.torch.save(tensors)
    assert_same_tensors(tensors, read_file(tmp_path / "x.safetensors").tensors)


def test_sha256_of_file_matches_hashlib(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stream, "IO_CHUNK_BYTES", 1000)
    data = os.urandom(10_500)
    (tmp_path / "f").write_bytes(data)
    fd = os.open(tmp_path / "f", os.O_RDONLY)
    try:
        assert sha256_of_file(fd) == (hashlib.sha256(data).hexdigest(), len(data))
    finally:
        os.close(fd)


def test_many_small_tensors_span_several_batches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stream, "IO_CHUNK_BYTES", 4096)
    monkeypatch.setattr(stream, "MAX_IOVECS", 7)
    tensors = {f"t{i:03d}": torch.full((i,), float(i)) for i in range(200)}
    streamed = write_file(tmp_path / "x.safetensors", tensors)
    data = (tmp_path / "x.safetensors").read_bytes()
    assert data == safetensors.torch.save(tensors)
    result = read_file(tmp_path / "x.safetensors")
    assert result.sha256 == streamed.sha256
    assert_same_tensors(tensors, result.tensors)
    assert not [t for t in threading.enumerate() if t.name.startswith("leanhpo-sha256")]


# -- through the store ----------------------------------------------------------------


def test_store_reports_a_bad_header_only_when_the_hash_matches(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "checkpoints")
    store.save(1, {"model": mixed_tensors()}, {})
    path = store.root / "epoch_0001" / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[8] = ord("[")  # header JSON no longer starts with '{'
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptCheckpointError, match="SHA-256"):
        store.load(1)
    manifest_path = store.root / "epoch_0001" / "MANIFEST.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["files"]["model.safetensors"]["sha256"] = hashlib.sha256(data).hexdigest()
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(
        CorruptCheckpointError, match="not a valid safetensors file: header does not start"
    ):
        store.load(1)


def test_store_files_stay_plain_safetensors(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "checkpoints")
    info = store.save(1, {"model": mixed_tensors(), "rng": {"s": torch.ones(2)}}, {"k": 1})
    assert (info.path / "model.safetensors").read_bytes() == safetensors.torch.save(mixed_tensors())
    assert_same_tensors(mixed_tensors(), store.load(1).groups["model"])


# -- memory ---------------------------------------------------------------------------


@contextmanager
def peak_rss_growth() -> Iterator[list[int]]:
    """Yield a list that receives the peak RSS growth (bytes) of the block, sampled."""
    psutil = pytest.importorskip("psutil")
    process = psutil.Process()
    gc.collect()
    baseline = process.memory_info().rss
    peak = [baseline]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(RSS_SAMPLE_S):
            peak[0] = max(peak[0], process.memory_info().rss)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    growth: list[int] = []
    try:
        yield growth
    finally:
        done.set()
        sampler.join()
        peak[0] = max(peak[0], process.memory_info().rss)
        growth.append(peak[0] - baseline)


@pytest.mark.slow
def test_large_round_trip_needs_no_second_copy(tmp_path: Path) -> None:
    pytest.importorskip("psutil")
    big = torch.randn(BIG_TENSOR_BYTES // 4)
    store = CheckpointStore(tmp_path / "checkpoints")
    with peak_rss_growth() as save_growth:
        info = store.save(1, {"model": {"w": big}}, {})
    file_bytes = (info.path / "model.safetensors").stat().st_size
    assert save_growth[0] < 0.5 * file_bytes, save_growth
    with peak_rss_growth() as load_growth:
        loaded = store.load(1)
    # The loaded tensor itself is one file size; the old path needed two or more.
    assert load_growth[0] < 1.5 * file_bytes, load_growth
    assert torch.equal(loaded.groups["model"]["w"], big)
