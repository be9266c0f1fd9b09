"""Safetensors files streamed from and into tensor memory, hashed on the way.

The format is plain safetensors: an 8-byte little-endian header length N, N bytes of JSON
(``dtype``, ``shape`` and ``data_offsets`` per tensor, optional ``__metadata__``) padded
with spaces to a multiple of 8, then the raw little-endian bytes of every tensor.

Hand-written on purpose (STYLE.md asks for libraries first): ``safetensors.torch.save``
returns the whole file as one bytes object, ``save_file`` cannot hash what it writes, and
``load(bytes)`` copies every tensor out of a bytes object that is itself a copy of the
file. For 1-10 GB models each copy costs gigabytes of RAM. Here instead:

* writing sends each tensor's own memory to the file with ``os.writev`` in 16 MiB pieces,
  bf16 included (a uint8 view), while a helper thread hashes that same memory;
* reading parses the header, allocates every tensor once and reads the rest of the file
  straight into the tensors (``os.readv``), hashing each piece after it lands.

The file is read once, so the digest covers exactly the bytes that the header was parsed
from and that the tensors hold; the caller compares it before it hands out any tensor.
Sizes come from the header only after it is checked against the file size, so a bad
header cannot make us allocate more than the file holds. Each tensor owns its storage:
views into one buffer of the whole file would save no memory (the file has to be in
memory anyway) but break APIs that ignore a storage offset, such as
``torch.set_rng_state``. Files are byte-identical to ``safetensors.torch.save``; only the
``__metadata__`` keys are sorted, where the library writes them in random order.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from types import TracebackType
from typing import Any

import torch

HEADER_LENGTH_BYTES = 8
HEADER_ALIGNMENT = 8
MAX_HEADER_BYTES = 100_000_000  # the limit safetensors itself enforces when reading
# Large pieces keep the disk and the hash at full speed; writev/readv batch small tensors.
IO_CHUNK_BYTES = 16 * 1024 * 1024
MAX_IOVECS = 512  # below Linux's IOV_MAX of 1024
METADATA_KEY = "__metadata__"
TENSOR_FIELDS = frozenset({"dtype", "shape", "data_offsets"})
# In the order of safetensors' Dtype enum: its writer sorts tensors by dtype, descending,
# then by name, and we keep that order so the files are byte-identical.
SAFETENSORS_DTYPES: tuple[tuple[torch.dtype, str], ...] = (
    (torch.bool, "BOOL"),
    (torch.uint8, "U8"),
    (torch.int8, "I8"),
    (torch.float8_e5m2, "F8_E5M2"),
    (torch.float8_e4m3fn, "F8_E4M3"),
    (torch.int16, "I16"),
    (torch.uint16, "U16"),
    (torch.float16, "F16"),
    (torch.bfloat16, "BF16"),
    (torch.int32, "I32"),
    (torch.uint32, "U32"),
    (torch.float32, "F32"),
    (torch.complex64, "C64"),
    (torch.float64, "F64"),
    (torch.int64, "I64"),
    (torch.uint64, "U64"),
)
CODE_OF_DTYPE = dict(SAFETENSORS_DTYPES)
DTYPE_OF_CODE = {code: dtype for dtype, code in SAFETENSORS_DTYPES}
DTYPE_RANK = {dtype: rank for rank, (dtype, _) in enumerate(SAFETENSORS_DTYPES)}


class SafetensorsFormatError(ValueError):
    """Bytes that are not a safetensors file this module can load."""


@dataclass(frozen=True)
class StreamedFile:
    sha256: str
    bytes: int


@dataclass(frozen=True)
class ReadResult:
    """What one read produced; ``error`` says why the header is invalid (tensors empty)."""

    sha256: str
    tensors: dict[str, torch.Tensor]
    metadata: dict[str, str] | None
    error: str | None = None


@dataclass(frozen=True)
class HeaderEntry:
    name: str
    dtype: torch.dtype
    shape: list[int]


# -- writing -----------------------------------------------------------------------------


def write_file(
    path: Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None
) -> StreamedFile:
    """Create ``path`` (it must not exist), stream the file into it and fsync it.

    The tensors must not change until this returns: the hash and the write both read
    their memory. Raises RuntimeError for tensors that share memory, as safetensors does.
    """
    _require_little_endian()
    ordered = _ordered(tensors)
    _refuse_shared_memory(ordered)
    header = encode_header(ordered, metadata)
    size = 0
    with open(path, "xb", buffering=0) as handle, _BackgroundSha256() as sha:
        # Lazily: a GPU or non-contiguous tensor is copied only when its turn comes.
        pieces = chain([memoryview(header)], (_memory_of(tensor) for _, tensor in ordered))
        for batch in _batches(pieces):
            sha.submit(batch)
            _writev_all(handle.fileno(), batch)
            size += sum(len(view) for view in batch)
        os.fsync(handle.fileno())  # the helper thread is still hashing meanwhile
        digest = sha.hexdigest()
    return StreamedFile(digest, size)


def encode_header(
    ordered: list[tuple[str, torch.Tensor]], metadata: Mapping[str, str] | None = None
) -> bytes:
    """Length prefix plus JSON exactly as safetensors writes it (compact, space padded)."""
    fields: dict[str, Any] = {}
    if metadata is not None:
        fields[METADATA_KEY] = _checked_metadata(metadata)
    offset = 0
    for name, tensor in ordered:
        end = offset + tensor.numel() * tensor.element_size()
        fields[name] = {
            "dtype": CODE_OF_DTYPE[tensor.dtype],
            "shape": list(tensor.shape),
            "data_offsets": [offset, end],
        }
        offset = end
    text = json.dumps(fields, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % HEADER_ALIGNMENT)
    if len(text) > MAX_HEADER_BYTES:
        raise ValueError(f"safetensors header of {len(text)} bytes exceeds {MAX_HEADER_BYTES}")
    return len(text).to_bytes(HEADER_LENGTH_BYTES, "little") + text


def _ordered(tensors: Mapping[str, torch.Tensor]) -> list[tuple[str, torch.Tensor]]:
    if not isinstance(tensors, Mapping):
        raise TypeError(f"expected a dict of tensors, got {type(tensors).__name__}")
    for name, tensor in tensors.items():
        if not isinstance(name, str) or name == METADATA_KEY:
            raise ValueError(f"invalid tensor name {name!r}")
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(tensor).__name__}")
        if tensor.layout != torch.strided:
            raise ValueError(f"{name}: cannot store a {tensor.layout} tensor; call .to_dense()")
        if tensor.dtype not in CODE_OF_DTYPE:
            raise TypeError(f"{name}: safetensors cannot store dtype {tensor.dtype}")
    return sorted(tensors.items(), key=lambda item: (-DTYPE_RANK[item[1].dtype], item[0]))


def _checked_metadata(metadata: Mapping[str, str]) -> dict[str, str]:
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise TypeError("safetensors metadata must map str to str")
    return dict(sorted(metadata.items()))


def _refuse_shared_memory(ordered: list[tuple[str, torch.Tensor]]) -> None:
    """Overlapping tensors would be stored twice and come back untied; refuse them.

    Non-contiguous tensors are copied by ``_memory_of``, so only contiguous ones can
    overlap in what is written.
    """
    spans = sorted(
        (str(t.device), t.data_ptr(), t.data_ptr() + t.numel() * t.element_size(), name)
        for name, t in ordered
        if t.is_contiguous() and t.numel() > 0 and t.device.type != "meta"
    )
    clusters: list[list[str]] = []
    device, cluster_end = "", -1
    for span_device, start, stop, name in spans:
        if span_device == device and start < cluster_end:
            clusters[-1].append(name)
            cluster_end = max(cluster_end, stop)
        else:
            clusters.append([name])
            device, cluster_end = span_device, stop
    shared = [sorted(names) for names in clusters if len(names) > 1]
    if shared:
        raise RuntimeError(
            f"tensors {shared} share memory; safetensors would store them twice and load "
            "them untied. Save one of them, or a .clone() of each."
        )


# -- reading -----------------------------------------------------------------------------


def read_tensors(fd: int, size: int) -> ReadResult:
    """Read the ``size``-byte file open at ``fd`` once, straight into new tensors.

    Compare ``sha256`` with the expected digest before using the tensors. When the
    header is invalid, ``error`` says why and the digest still covers the whole file, so
    a corrupt file (wrong digest) is told apart from a well-hashed file that is not
    safetensors. Raises EOFError when the file does not hold ``size`` bytes.
    """
    _require_little_endian()
    with _BackgroundSha256() as sha:
        try:
            entries, metadata = _read_header(fd, size, sha)
        except SafetensorsFormatError as exc:
            _hash_rest(fd, sha)
            return ReadResult(sha.hexdigest(), {}, None, str(exc))
        tensors = {e.name: torch.empty(e.shape, dtype=e.dtype) for e in entries}
        for batch in _batches(_memory_of(tensor) for tensor in tensors.values()):
            _readv_all(fd, batch)
            sha.submit(batch)
        if os.read(fd, 1):
            raise EOFError(f"the file has more than {size} bytes")
        return ReadResult(sha.hexdigest(), tensors, metadata)


def sha256_of_file(fd: int) -> tuple[str, int]:
    """(SHA-256, bytes) of the rest of the file open at ``fd``; reading overlaps hashing."""
    with _BackgroundSha256(max_pending=2) as sha:
        size = 0
        while chunk := os.read(fd, IO_CHUNK_BYTES):
            sha.submit([memoryview(chunk)])
            size += len(chunk)
        return sha.hexdigest(), size


def _read_header(
    fd: int, size: int, sha: _BackgroundSha256
) -> tuple[list[HeaderEntry], dict[str, str] | None]:
    if size < HEADER_LENGTH_BYTES:
        raise SafetensorsFormatError(f"{size} bytes is too short for a header")
    prefix = _read_exact(fd, HEADER_LENGTH_BYTES)
    sha.submit([memoryview(prefix)])
    header_length = int.from_bytes(prefix, "little")
    if header_length > min(MAX_HEADER_BYTES, size - HEADER_LENGTH_BYTES):
        raise SafetensorsFormatError(f"header length {header_length} exceeds the file")
    raw = _read_exact(fd, header_length)
    sha.submit([memoryview(raw)])
    return parse_header(raw, size - HEADER_LENGTH_BYTES - header_length)


def parse_header(raw: bytes, data_size: int) -> tuple[list[HeaderEntry], dict[str, str] | None]:
    """Checked header entries in file order, as strict as safetensors' own parser."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SafetensorsFormatError(f"header is not UTF-8: {exc}") from exc
    if not text.startswith("{"):
        raise SafetensorsFormatError("header does not start with '{'")
    try:
        fields = json.loads(text, object_pairs_hook=_unique_keys)
    except SafetensorsFormatError:
        raise
    except (ValueError, RecursionError) as exc:
        raise SafetensorsFormatError(f"header is not valid JSON: {exc}") from exc
    if not isinstance(fields, dict):
        raise SafetensorsFormatError("header is not a JSON object")
    metadata = fields.pop(METADATA_KEY, None)
    if metadata is not None and not (
        isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())
    ):
        raise SafetensorsFormatError("__metadata__ must map str to str")
    located = sorted(
        (_parse_entry(name, info) for name, info in fields.items()),
        key=lambda item: (item[0], item[1]),
    )
    expected_begin = 0
    for begin, end, entry in located:
        if begin != expected_begin:
            raise SafetensorsFormatError(
                f"{entry.name}: data starts at {begin}, not {expected_begin}"
            )
        expected_begin = end
    if expected_begin != data_size:
        raise SafetensorsFormatError(f"tensors cover {expected_begin} of {data_size} data bytes")
    return [entry for _, _, entry in located], metadata


def _parse_entry(name: str, info: Any) -> tuple[int, int, HeaderEntry]:
    if not isinstance(info, dict) or set(info) != TENSOR_FIELDS:
        raise SafetensorsFormatError(f"{name}: expected exactly the fields {sorted(TENSOR_FIELDS)}")
    dtype = DTYPE_OF_CODE.get(info["dtype"]) if isinstance(info["dtype"], str) else None
    shape, offsets = info["shape"], info["data_offsets"]
    if dtype is None:
        raise SafetensorsFormatError(f"{name}: unsupported dtype {info['dtype']!r}")
    if not (isinstance(shape, list) and all(_is_count(d) for d in shape)):
        raise SafetensorsFormatError(f"{name}: invalid shape {shape!r}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(_is_count, offsets))):
        raise SafetensorsFormatError(f"{name}: invalid data_offsets {offsets!r}")
    begin, end = offsets
    expected = math.prod(shape) * dtype.itemsize
    if end - begin != expected:
        raise SafetensorsFormatError(
            f"{name}: {end - begin} data bytes, the shape needs {expected}"
        )
    return begin, end, HeaderEntry(name, dtype, shape)


def _is_count(value: Any) -> bool:
    return type(value) is int and value >= 0


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise SafetensorsFormatError("header repeats a key")
    return result


def _hash_rest(fd: int, sha: _BackgroundSha256) -> None:
    while chunk := os.read(fd, IO_CHUNK_BYTES):
        sha.submit([memoryview(chunk)])
        sha.wait()  # rare path: never queue up copies of the file


# -- shared helpers ----------------------------------------------------------------------


def _require_little_endian() -> None:
    if sys.byteorder != "little":  # pragma: no cover - no big-endian CI machine
        raise RuntimeError("checkpoint files are little-endian; this host is big-endian")


def _memory_of(tensor: torch.Tensor) -> memoryview:
    """The tensor's bytes as a writable view, without a copy for a dense CPU tensor."""
    flat = tensor.detach().to("cpu").resolve_conj().resolve_neg().contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().data


def _batches(views: Iterable[memoryview]) -> Iterator[list[memoryview]]:
    """Group views into pieces of about IO_CHUNK_BYTES: big views split, small ones merged."""
    batch: list[memoryview] = []
    batch_bytes = 0
    for view in views:
        for start in range(0, len(view), IO_CHUNK_BYTES):
            piece = view[start : start + IO_CHUNK_BYTES]
            batch.append(piece)
            batch_bytes += len(piece)
            if batch_bytes >= IO_CHUNK_BYTES or len(batch) >= MAX_IOVECS:
                yield batch
                batch, batch_bytes = [], 0
    if batch:
        yield batch


def _writev_all(fd: int, views: list[memoryview]) -> None:
    while views:
        views = _advance(views, os.writev(fd, views))


def _readv_all(fd: int, views: list[memoryview]) -> None:
    while views:
        count = os.readv(fd, views)
        if count == 0:
            raise EOFError("the file ended early")
        views = _advance(views, count)


def _read_exact(fd: int, count: int) -> bytes:
    buffer = bytearray(count)
    _readv_all(fd, [memoryview(buffer)] if count else [])
    return bytes(buffer)


def _advance(views: list[memoryview], count: int) -> list[memoryview]:
    """The views still to transfer after a partial writev/readv of ``count`` bytes."""
    index = 0
    while index < len(views) and count >= len(views[index]):
        count -= len(views[index])
        index += 1
    rest = views[index:]
    if rest and count:
        rest[0] = rest[0][count:]
    return rest


class _BackgroundSha256:
    """SHA-256 of the submitted pieces, in order, on one helper thread.

    hashlib and os.writev/readv release the GIL, so with two cores the hash (about
    1.7 GB/s on one core) runs beside the I/O instead of after it. ``max_pending`` bounds
    the queue when the pieces are copies that would otherwise pile up in memory.
    """

    def __init__(self, max_pending: int | None = None) -> None:
        self._digest = hashlib.sha256()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="leanhpo-sha256")
        self._jobs: deque[Future[None]] = deque()
        self._max_pending = max_pending

    def __enter__(self) -> _BackgroundSha256:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def submit(self, views: list[memoryview]) -> None:
        self._jobs.append(self._pool.submit(_update_all, self._digest, views))
        while self._max_pending is not None and len(self._jobs) > self._max_pending:
            self._jobs.popleft().result()

    def wait(self) -> None:
        while self._jobs:
            self._jobs.popleft().result()

    def hexdigest(self) -> str:
        self.wait()
        return self._digest.hexdigest()


def _update_all(digest: Any, views: list[memoryview]) -> None:
    for view in views:
        digest.update(view)
