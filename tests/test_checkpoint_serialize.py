"""Round-trip tests for the pickle-free state serialisation.

Every round trip goes through the real on-disk encodings: the skeleton through strict
JSON text and the tensors through safetensors bytes.
"""

from __future__ import annotations

import json
import math
import random
from typing import Any

import numpy as np
import pytest
import safetensors.torch
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from leanhpo.checkpoints import flatten_state, unflatten_state

TENSOR_DTYPES = [torch.float32, torch.bfloat16, torch.float64, torch.int64, torch.uint8, torch.bool]
TENSOR_SHAPES: list[tuple[int, ...]] = [(), (0,), (3,), (2, 3)]
NUMPY_DTYPES = [np.uint32, np.float64, np.int8, np.float32]


def round_trip(obj: Any) -> Any:
    tensors, skeleton = flatten_state(obj)
    text = json.dumps(skeleton, allow_nan=False)  # strict JSON: no NaN literals
    blob = safetensors.torch.save(tensors)
    return unflatten_state(safetensors.torch.load(blob), json.loads(text))


def assert_identical(expected: Any, actual: Any) -> None:
    """Exact equality including types, dict key order, NaN and bit patterns."""
    assert type(actual) is type(expected), (expected, actual)
    if isinstance(expected, torch.Tensor):
        assert actual.dtype == expected.dtype and actual.shape == expected.shape
        as_bytes = [t.reshape(-1).contiguous().view(torch.uint8) for t in (expected, actual)]
        assert torch.equal(*as_bytes)
    elif isinstance(expected, np.ndarray | np.generic):
        assert actual.dtype == expected.dtype and actual.shape == expected.shape
        assert np.asarray(actual).tobytes() == np.asarray(expected).tobytes()
    elif isinstance(expected, float):
        both_nan = math.isnan(expected) and math.isnan(actual)
        assert both_nan or (
            actual == expected and math.copysign(1, actual) == math.copysign(1, expected)
        )
    elif isinstance(expected, dict):
        assert list(actual) == list(expected)
        for (key_e, value_e), (key_a, value_a) in zip(
            expected.items(), actual.items(), strict=True
        ):
            assert_identical(key_e, key_a)
            assert_identical(value_e, value_a)
    elif isinstance(expected, list | tuple):
        assert len(actual) == len(expected)
        for item_e, item_a in zip(expected, actual, strict=True):
            assert_identical(item_e, item_a)
    else:
        assert actual == expected


@st.composite
def tensors(draw: st.DrawFn) -> torch.Tensor:
    dtype = draw(st.sampled_from(TENSOR_DTYPES))
    shape = draw(st.sampled_from(TENSOR_SHAPES))
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    values = torch.randn(shape, generator=generator) * 100
    return values > 0 if dtype == torch.bool else values.to(dtype)


numpy_scalars = st.one_of(
    st.floats().map(np.float64), st.integers(-(2**63), 2**63 - 1).map(np.int64)
)
numpy_arrays = hnp.arrays(
    dtype=st.sampled_from(NUMPY_DTYPES), shape=hnp.array_shapes(min_dims=0, max_dims=2, max_side=3)
)
leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=6),
    st.binary(max_size=6),
    tensors(),
    numpy_arrays,
    numpy_scalars,
)
hashable_keys = st.one_of(
    st.integers(-5, 5),
    st.text(max_size=4),
    st.sampled_from(["__tuple__", "__tensor__", "__dict__", "__float__"]),
    st.tuples(st.integers(0, 3), st.integers(0, 3)),
    st.none(),
)
states = st.recursive(
    leaves,
    lambda children: st.one_of(
        st.lists(children, max_size=3),
        st.lists(children, max_size=3).map(tuple),
        st.dictionaries(st.text(max_size=4), children, max_size=3),
        st.dictionaries(hashable_keys, children, max_size=3),
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(states)
def test_round_trip_is_exact(state: Any) -> None:
    assert_identical(state, round_trip(state))


def test_tag_lookalike_dict_is_not_mistaken_for_a_tag() -> None:
    state = {"__tuple__": [1, 2], "other": {"__float__": "nan"}}
    assert_identical(state, round_trip(state))


def test_tensor_keys_are_readable_paths_and_unique() -> None:
    state = {"state": {0: {"exp_avg": torch.ones(2)}}, "a": {1: torch.ones(1), "1": torch.zeros(1)}}
    tensors, _ = flatten_state(state)
    assert "state.0.exp_avg" in tensors
    assert len(tensors) == 3
    assert flatten_state(torch.ones(1))[0].keys() == {"<root>"}


def test_tensors_are_detached_snapshots() -> None:
    original = torch.ones(3, requires_grad=True)
    view = torch.arange(6.0).reshape(2, 3).t()  # non-contiguous
    tensors, skeleton = flatten_state({"p": original, "v": view})
    with torch.no_grad():
        original.add_(1)
    restored = unflatten_state(tensors, skeleton)
    assert torch.equal(restored["p"], torch.ones(3)) and not restored["p"].requires_grad
    assert restored["v"].is_contiguous() and torch.equal(restored["v"], view)


def test_unsupported_values_name_their_path() -> None:
    with pytest.raises(TypeError, match=r"a\.1"):
        flatten_state({"a": [1, object()]})
    with pytest.raises(TypeError, match="numpy dtype object"):
        flatten_state(np.array([None, 1], dtype=object))
    with pytest.raises(TypeError, match="dict key"):
        flatten_state({(1, torch.ones(1)): 2})


def test_dangling_tensor_reference_is_an_error() -> None:
    with pytest.raises(ValueError, match="missing"):
        unflatten_state({}, {"__tensor__": "state.0.exp_avg"})


def _make_model_and_optimizer() -> tuple[torch.nn.Module, torch.optim.AdamW]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    return model, torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)


def _train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, seed: int) -> None:
    inputs = torch.randn(5, 4, generator=torch.Generator().manual_seed(seed))
    optimizer.zero_grad()
    model(inputs).pow(2).mean().backward()
    optimizer.step()


def test_adamw_state_round_trips_and_resumes_bit_identically() -> None:
    model, optimizer = _make_model_and_optimizer()
    for seed in (1, 2):
        _train_step(model, optimizer, seed)
    saved = optimizer.state_dict()
    restored = round_trip(saved)
    assert_identical(saved, restored)

    resumed_model, resumed_optimizer = _make_model_and_optimizer()
    resumed_model.load_state_dict(model.state_dict())
    resumed_optimizer.load_state_dict(restored)
    for seed in (3, 4):
        _train_step(model, optimizer, seed)
        _train_step(resumed_model, resumed_optimizer, seed)
    for expected, actual in zip(model.parameters(), resumed_model.parameters(), strict=True):
        assert torch.equal(expected, actual)


def test_lambda_lr_state_round_trips() -> None:
    _, optimizer = _make_model_and_optimizer()
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: 0.5**epoch)
    for _ in range(3):
        optimizer.step()
        scheduler.step()
    restored = round_trip(scheduler.state_dict())
    assert_identical(scheduler.state_dict(), restored)

    _, other_optimizer = _make_model_and_optimizer()
    other = torch.optim.lr_scheduler.LambdaLR(other_optimizer, lambda epoch: 0.5**epoch)
    other.load_state_dict(restored)
    optimizer.step()
    scheduler.step()
    other_optimizer.step()
    other.step()
    assert other.get_last_lr() == scheduler.get_last_lr()


def test_rng_states_round_trip() -> None:
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    generator = np.random.default_rng(4)
    states = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "numpy_generator": generator.bit_generator.state,
        "torch": torch.get_rng_state(),
    }
    expected = (random.random(), np.random.rand(), generator.random(), torch.rand(1))

    restored = round_trip(states)
    assert_identical(states, restored)
    random.setstate(restored["python"])
    np.random.set_state(restored["numpy"])
    generator.bit_generator.state = restored["numpy_generator"]
    torch.set_rng_state(restored["torch"])
    actual = (random.random(), np.random.rand(), generator.random(), torch.rand(1))
    assert actual[:3] == expected[:3] and torch.equal(actual[3], expected[3])
