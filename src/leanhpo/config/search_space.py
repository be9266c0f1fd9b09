"""The search space: which config values Optuna may set, how they are sampled, and checks.

Each searchable name maps to exactly one `section.key` of the config, so a sampled value always
reaches the trainer through the same typed config as a hand-set one; a name that maps to nothing
is rejected at validation, never silently ignored.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any, Protocol

import jsonschema

# name -> (section, key). Extend this table, never special-case a name elsewhere.
SEARCHABLE: dict[str, tuple[str, str]] = {
    "learning_rate": ("train", "learning_rate"),
    "head_learning_rate": ("train", "head_learning_rate"),
    "weight_decay": ("train", "weight_decay"),
    "warmup_ratio": ("train", "warmup_ratio"),
    "batch_size": ("train", "batch_size"),
    "max_grad_norm": ("train", "max_grad_norm"),
    "loss": ("train", "loss"),
    "focal_gamma": ("train", "focal_gamma"),
    "hybrid_alpha": ("train", "hybrid_alpha"),
    "label_smoothing": ("train", "label_smoothing"),
    "augmentation_prob": ("train", "augmentation_prob"),
    "augmentation_methods": ("train", "augmentation_methods"),
    "lambda_criteria": ("train", "lambda_criteria"),
    "lambda_evidence": ("train", "lambda_evidence"),
    "dropout": ("model", "dropout"),
    "pooling": ("model", "pooling"),
    "criteria_head": ("model", "criteria_head"),
    "evidence_head": ("model", "evidence_head"),
    "head_hidden_size": ("model", "head_hidden_size"),
    "dropout_samples": ("model", "dropout_samples"),
    "coupling": ("model", "coupling"),
    "coupling_pooling": ("model", "coupling_pooling"),
    "coupling_method": ("model", "coupling_method"),
    "window_pooling": ("model", "window_pooling"),
    "max_answer_tokens": ("model", "max_answer_tokens"),
    "null_threshold": ("model", "null_threshold"),
    "input_format": ("model", "input_format"),
}
NUMERIC_TYPES = ("float", "int")


class Suggester(Protocol):
    """The part of `optuna.trial.Trial` that sampling needs (kept abstract for tests)."""

    def suggest_float(
        self, name: str, low: float, high: float, *, step: float | None = None, log: bool = False
    ) -> float: ...

    def suggest_int(
        self, name: str, low: int, high: int, *, step: int = 1, log: bool = False
    ) -> int: ...

    def suggest_categorical(self, name: str, choices: Any) -> Any: ...


def active_space(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The search space without entries an overlay removed by setting them to null."""
    return {name: spec for name, spec in config.get("search_space", {}).items() if spec}


def _target_schema(schema: dict[str, Any], name: str) -> dict[str, Any]:
    section, key = SEARCHABLE[name]
    target: dict[str, Any] = schema["properties"][section]["properties"][key]
    return target


def _value_problem(target: dict[str, Any], value: Any) -> str | None:
    try:
        jsonschema.validate(value, target)
    except jsonschema.ValidationError as error:
        return error.message
    return None


def _numeric_problems(name: str, spec: dict[str, Any], target: dict[str, Any]) -> Iterator[str]:
    key = f"config key 'search_space.{name}'"
    if "choices" in spec:
        yield f"{key}: 'choices' belongs to type categorical, not {spec['type']}"
    if "low" not in spec or "high" not in spec:
        yield f"{key}: type {spec['type']} needs both low and high"
        return
    low, high = spec["low"], spec["high"]
    if spec["type"] == "int" and not (float(low).is_integer() and float(high).is_integer()):
        yield f"{key}: type int needs integer low and high, found {low} and {high}"
    if low > high:
        yield f"{key}: low ({low}) is larger than high ({high})"
    if spec.get("log") and low <= 0:
        yield f"{key}: a log scale needs low > 0, found {low}"
    if spec.get("log") and "step" in spec:
        yield f"{key}: Optuna cannot combine log with step; drop one of them"
    for bound in ("low", "high"):
        value = int(spec[bound]) if spec["type"] == "int" else spec[bound]
        problem = _value_problem(target, value)
        if problem:
            section, field = SEARCHABLE[name]
            yield f"{key}: {bound}={spec[bound]} is outside {section}.{field}'s range ({problem})"


def _categorical_problems(name: str, spec: dict[str, Any], target: dict[str, Any]) -> Iterator[str]:
    key = f"config key 'search_space.{name}'"
    if "choices" not in spec:
        yield f"{key}: type categorical needs a list of choices"
        return
    for field in ("low", "high", "log", "step"):
        if field in spec and not (field == "log" and spec[field] is False):
            yield f"{key}: '{field}' does not apply to type categorical"
    for choice in spec["choices"]:
        problem = _value_problem(target, choice)
        if problem:
            section, field = SEARCHABLE[name]
            yield f"{key}: choice {choice!r} is not valid for {section}.{field} ({problem})"


def _condition_problems(
    name: str, spec: dict[str, Any], earlier: dict[str, dict[str, Any]]
) -> Iterator[str]:
    for parent, values in spec.get("condition", {}).items():
        key = f"config key 'search_space.{name}.condition.{parent}'"
        if parent not in earlier:
            yield f"{key}: conditions may only name a categorical parameter listed before {name!r}"
        elif earlier[parent]["type"] != "categorical":
            yield f"{key}: {parent!r} is not categorical, so it cannot be a condition"
        else:
            unknown = [v for v in values if v not in earlier[parent]["choices"]]
            if unknown:
                yield f"{key}: {unknown} are not among the choices of {parent!r}"


def search_space_problems(config: dict[str, Any]) -> Iterator[str]:
    """Every problem of `config['search_space']`, as messages naming the key."""
    from leanhpo.config.validate import load_schema

    schema = load_schema()
    seen: dict[str, dict[str, Any]] = {}
    for name, spec in active_space(config).items():
        if name not in SEARCHABLE:
            yield (
                f"config key 'search_space.{name}': unknown parameter; searchable parameters: "
                + ", ".join(sorted(SEARCHABLE))
            )
            continue
        target = _target_schema(schema, name)
        if spec["type"] in NUMERIC_TYPES:
            yield from _numeric_problems(name, spec, target)
        else:
            yield from _categorical_problems(name, spec, target)
        yield from _condition_problems(name, spec, seen)
        seen[name] = spec


def condition_holds(spec: dict[str, Any], sampled: dict[str, Any]) -> bool:
    return all(
        sampled.get(parent) in values for parent, values in spec.get("condition", {}).items()
    )


def sample_params(trial: Suggester, config: dict[str, Any]) -> dict[str, Any]:
    """Ask `trial` for every active parameter whose condition holds, in config order.

    On a re-attached Optuna trial the same calls return the values stored the first time.
    """
    sampled: dict[str, Any] = {}
    for name, spec in active_space(config).items():
        if not condition_holds(spec, sampled):
            continue
        if spec["type"] == "categorical":
            sampled[name] = trial.suggest_categorical(name, spec["choices"])
        elif spec["type"] == "int":
            sampled[name] = trial.suggest_int(
                name,
                int(spec["low"]),
                int(spec["high"]),
                step=int(spec.get("step", 1)),
                log=bool(spec.get("log", False)),
            )
        else:
            sampled[name] = trial.suggest_float(
                name,
                float(spec["low"]),
                float(spec["high"]),
                step=spec.get("step"),
                log=bool(spec.get("log", False)),
            )
    return sampled


def apply_params(config: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """The trial's resolved config: `config` with each sampled value written to its key."""
    resolved = copy.deepcopy(config)
    for name, value in params.items():
        section, key = SEARCHABLE[name]
        resolved[section][key] = value
    return resolved
