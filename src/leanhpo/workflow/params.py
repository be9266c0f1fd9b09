"""The config as Snakemake params: one param per config key, plus the keys that are not params.

Snakemake reruns a finished job when one of its params changes, and its `reason:` line prints
the params that changed, before and now. With a whole config section as one param, that line
is the whole section twice (7,578 characters for one changed key, seen); with one param per key,
each a pair `('train.epochs', 3)`, it names the key and its two values. (A pair, not a string
such as "train.epochs=3": Snakemake formats string params with the job's wildcards, and a
`${PASSWORD}` reference in a URL would read as one.)

Some keys say how a job reaches its services or fits in memory, not what it computes (the retry
budgets, the MLflow write timeout, the rows per forward pass). Changing them must never rerun
finished work, so they are not params at all: the Snakemake process hands them to its jobs in
the environment (RUNTIME_ENV), as it already does for study.n_trials, and `from_params` puts
them back where the job's code expects them.
"""

from __future__ import annotations

import ast
import copy
import json
import os
from collections.abc import Iterable
from typing import Any

# Kept whole: the order of the search space decides the sampling order.
WHOLE = frozenset({"search_space"})
# (section, key) pairs that never rerun a finished job (see the module docstring).
# train.deterministic picks kernels, as the thread count does: it changes the last bits of a
# CUDA trial's numbers, not what the finished trials measured, so rerunning them would only
# recompute valid results. It is fingerprinted instead (trial/fingerprint.py): a trial that
# starts or resumes under the other value stops with a message naming the key. Being no param
# also lets studies started before the key existed continue: a new param would count as a
# change of every finished trial (workflow/guard.py).
RUNTIME_KEYS = (
    ("study", "storage_timeout_s"),
    ("study", "lease_grace_s"),
    ("tracking", "write_timeout_s"),
    ("tracking", "final_drain_s"),
    ("train", "max_batch_rows"),
    ("train", "deterministic"),
)
RUNTIME_ENV = "LEANHPO_RUNTIME"


def as_params(sections: dict[str, Any]) -> dict[str, tuple[str, Any]]:
    """`{"train": {"epochs": 3}}` -> `{"train__epochs": ("train.epochs", 3)}`: one Snakemake
    param per key, in a form that names itself in Snakemake's rerun reasons. RUNTIME_KEYS are
    left out."""
    flat: dict[str, Any] = {}
    _flatten(sections, (), flat)
    runtime = {".".join(pair) for pair in RUNTIME_KEYS}
    return {
        key.replace(".", "__"): (key, value) for key, value in flat.items() if key not in runtime
    }


def from_params(params: Iterable[Any]) -> dict[str, Any]:
    """The nested config that `as_params` flattened (a job's `snakemake.params`), with the
    RUNTIME_KEYS of its sections from the environment the Snakemake process set."""
    config: dict[str, Any] = {}
    for item in params:
        pair = parse_param(item)
        if pair is None:
            raise ValueError(f"not a leanhpo param (a (key, value) pair): {item!r}")
        _set(config, pair[0].split("."), copy.deepcopy(pair[1]))
    runtime = json.loads(os.environ.get(RUNTIME_ENV) or "{}")
    for section, key in RUNTIME_KEYS:
        if section in config and key in runtime.get(section, {}):
            config[section][key] = runtime[section][key]
    return config


def parse_param(item: Any) -> tuple[str, Any] | None:
    """(`train.epochs`, 3) from the pair or from its repr, as Snakemake records params; None for
    a param in another form (a record written by an older leanhpo, whose params were whole
    sections)."""
    if isinstance(item, str):
        try:
            item = ast.literal_eval(item)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            return None
    if isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], str):
        return item[0], item[1]
    return None


def announce_runtime(config: dict[str, Any]) -> None:
    """Hand the RUNTIME_KEYS to every job this process starts (they inherit its environment)."""
    runtime: dict[str, dict[str, Any]] = {}
    for section, key in RUNTIME_KEYS:
        runtime.setdefault(section, {})[key] = config[section][key]
    os.environ[RUNTIME_ENV] = json.dumps(runtime, sort_keys=True)


def _flatten(value: Any, path: tuple[str, ...], out: dict[str, Any]) -> None:
    if isinstance(value, dict) and value and not (path and path[-1] in WHOLE):
        for key, inner in value.items():
            _flatten(inner, (*path, str(key)), out)
    else:
        out[".".join(path)] = value


def _set(config: dict[str, Any], path: list[str], value: Any) -> None:
    node = config
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value
