"""Pickle-free (de)serialisation of nested training state.

Optimizer, scheduler and RNG states are nested Python structures that mix tensors with
tuples, int-keyed dicts, numpy arrays and non-finite floats. ``torch.save`` would store
them with pickle, and loading a pickle can run arbitrary code (SPEC section 5). Instead,
``flatten_state`` splits such a structure into

* a flat ``dict[str, Tensor]`` that ``safetensors`` can store, and
* a JSON-able *skeleton* in which every tensor is replaced by a tagged reference.

Python types that JSON cannot express exactly are written as single-key tagged objects,
so ``unflatten_state`` restores them exactly: a tuple stays a tuple, an int key stays an
int, ``nan`` stays ``nan``. Dict subclasses (``OrderedDict``) come back as ``dict`` and
named tuples as plain tuples; neither matters for ``load_state_dict`` or ``setstate``.
"""

from __future__ import annotations

import base64
import math
from typing import Any

import numpy as np
import torch

TENSOR_TAG = "__tensor__"
TUPLE_TAG = "__tuple__"
DICT_TAG = "__dict__"
FLOAT_TAG = "__float__"
NDARRAY_TAG = "__ndarray__"
NPSCALAR_TAG = "__npscalar__"
BYTES_TAG = "__bytes__"
TAGS = frozenset({TENSOR_TAG, TUPLE_TAG, DICT_TAG, FLOAT_TAG, NDARRAY_TAG, NPSCALAR_TAG, BYTES_TAG})
# Key used for a tensor that is the whole state, which has no path of its own.
ROOT_KEY = "<root>"
PATH_SEPARATOR = "."


def flatten_state(obj: Any) -> tuple[dict[str, torch.Tensor], Any]:
    """Split ``obj`` into ``(tensors, skeleton)``; see the module docstring.

    Tensors are detached, contiguous CPU clones, so the result is a snapshot that later
    optimizer steps cannot change and that ``safetensors`` accepts (no shared storage).
    Raises ``TypeError`` naming the path of any value it cannot represent exactly.
    """
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _encode(obj, [], tensors)
    return tensors, skeleton


def unflatten_state(tensors: dict[str, torch.Tensor], skeleton: Any) -> Any:
    """Exact inverse of ``flatten_state``; raises ``ValueError`` on a dangling reference."""
    return _decode(skeleton, tensors)


def _path_key(path: list[str], tensors: dict[str, torch.Tensor]) -> str:
    """A unique safetensors key for ``path``; readable, e.g. ``state.0.exp_avg``."""
    base = PATH_SEPARATOR.join(path) or ROOT_KEY
    key, suffix = base, 1
    # Distinct keys such as 1 and "1" give the same path string.
    while key in tensors:
        key, suffix = f"{base}#{suffix}", suffix + 1
    return key


def _encode(obj: Any, path: list[str], tensors: dict[str, torch.Tensor]) -> Any:
    """Encode one value; the order of checks matters (bool is an int, np.float64 a float)."""
    if obj is None or isinstance(obj, bool | str):
        return obj
    if isinstance(obj, np.generic):
        return {NPSCALAR_TAG: _encode_ndarray(np.asarray(obj), path)}
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return _encode_float(float(obj))
    if isinstance(obj, torch.Tensor):
        key = _path_key(path, tensors)
        tensors[key] = obj.detach().to("cpu").contiguous().clone()
        return {TENSOR_TAG: key}
    if isinstance(obj, np.ndarray):
        return {NDARRAY_TAG: _encode_ndarray(obj, path)}
    if isinstance(obj, bytes):
        return {BYTES_TAG: base64.b64encode(obj).decode("ascii")}
    if isinstance(obj, dict):
        return _encode_dict(obj, path, tensors)
    if isinstance(obj, list):
        return [_encode(v, [*path, str(i)], tensors) for i, v in enumerate(obj)]
    if isinstance(obj, tuple):
        return {TUPLE_TAG: [_encode(v, [*path, str(i)], tensors) for i, v in enumerate(obj)]}
    raise TypeError(f"cannot serialise {type(obj).__name__} at {_where(path)}")


def _encode_float(value: float) -> Any:
    """JSON has no inf/nan; ``repr`` round-trips every finite float exactly."""
    if math.isfinite(value):
        return value
    return {FLOAT_TAG: repr(value)}


def _encode_dict(obj: dict[Any, Any], path: list[str], tensors: dict[str, torch.Tensor]) -> Any:
    """Plain JSON object when keys are strings that cannot be mistaken for a tag."""
    plain = all(isinstance(k, str) for k in obj) and not (len(obj) == 1 and next(iter(obj)) in TAGS)
    if plain:
        return {k: _encode(v, [*path, k], tensors) for k, v in obj.items()}
    pairs = []
    for k, v in obj.items():
        key_tensors: dict[str, torch.Tensor] = {}
        encoded_key = _encode(k, path, key_tensors)
        if key_tensors or isinstance(k, np.ndarray):
            raise TypeError(f"cannot serialise a dict key holding arrays at {_where(path)}")
        pairs.append([encoded_key, _encode(v, [*path, str(k)], tensors)])
    return {DICT_TAG: pairs}


def _encode_ndarray(arr: np.ndarray, path: list[str]) -> dict[str, Any]:
    """Raw bytes plus dtype string; numpy RNG state is a uint32 array that must stay one."""
    if arr.dtype.hasobject or arr.dtype.fields is not None:
        raise TypeError(f"cannot serialise numpy dtype {arr.dtype} at {_where(path)}")
    data = np.ascontiguousarray(arr).tobytes()
    return {
        "dtype": arr.dtype.str,
        "shape": list(arr.shape),
        "data": base64.b64encode(data).decode("ascii"),
    }


def _where(path: list[str]) -> str:
    return PATH_SEPARATOR.join(path) or ROOT_KEY


def _decode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if len(obj) == 1:
        ((tag, payload),) = obj.items()
        if tag in TAGS:
            return _decode_tagged(tag, payload, tensors)
    return {k: _decode(v, tensors) for k, v in obj.items()}


def _decode_tagged(tag: str, payload: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if tag == TENSOR_TAG:
        if payload not in tensors:
            raise ValueError(f"skeleton references tensor {payload!r}, which is missing")
        return tensors[payload]
    if tag == TUPLE_TAG:
        return tuple(_decode(v, tensors) for v in payload)
    if tag == DICT_TAG:
        return {_decode(k, tensors): _decode(v, tensors) for k, v in payload}
    if tag == FLOAT_TAG:
        return float(payload)
    if tag == NDARRAY_TAG:
        return _decode_ndarray(payload)
    if tag == NPSCALAR_TAG:
        return _decode_ndarray(payload)[()]
    return base64.b64decode(payload)


def _decode_ndarray(payload: dict[str, Any]) -> np.ndarray:
    data = base64.b64decode(payload["data"])
    flat = np.frombuffer(data, dtype=np.dtype(payload["dtype"]))
    # frombuffer is read-only and shares the bytes; copy so callers may write to it.
    return flat.reshape(payload["shape"]).copy()
