"""The search strategy against the search space: `study.sampler: grid` needs a finite space, and
every `study.enqueue` set must name searched parameters with values the space allows.

Checked at config validation, before any job runs; every message names the key to fix.
"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Any

from leanhpo.config.search_space import active_space, condition_holds

MAX_GRID_POINTS = 100_000  # beyond this a grid cannot be run to the end; another sampler fits
# The options each study.pruner takes (Optuna's names); patience and min_delta wrap any of them.
PRUNER_OPTIONS: dict[str, tuple[str, ...]] = {
    "none": (),
    "median": ("n_startup_trials", "n_warmup_steps", "interval_steps", "n_min_trials"),
    "percentile": (
        "percentile",
        "n_startup_trials",
        "n_warmup_steps",
        "interval_steps",
        "n_min_trials",
    ),
    "successive_halving": (
        "min_resource",
        "reduction_factor",
        "min_early_stopping_rate",
        "bootstrap_count",
    ),
    "hyperband": ("min_resource", "max_resource", "reduction_factor", "bootstrap_count"),
    "threshold": ("lower", "upper", "n_warmup_steps", "interval_steps"),
}
WRAPPER_OPTIONS = ("patience", "min_delta")


def grid_values(spec: dict[str, Any]) -> list[Any] | None:
    """Every value of one search-space entry, or None for a float without a step (infinite)."""
    if spec["type"] == "categorical":
        return list(spec["choices"])
    if spec["type"] == "int":
        return list(range(int(spec["low"]), int(spec["high"]) + 1, int(spec.get("step", 1))))
    if spec.get("step") is None:
        return None
    # Decimal, so that 0.1 steps give 0.3 and not 0.30000000000000004.
    low, high, step = (Decimal(str(spec[key])) for key in ("low", "high", "step"))
    count = int((high - low) / step) + 1
    return [float(low + k * step) for k in range(count)]


def grid_points(config: dict[str, Any], limit: int = MAX_GRID_POINTS) -> list[dict[str, Any]]:
    """Every distinct configuration of the active parameters, in config order: a conditional
    parameter is varied only where its condition holds, so no point differs from another only
    in a parameter that trial would never use. Raises ValueError past `limit` points or for an
    infinite parameter (config validation reports both first)."""
    points: list[dict[str, Any]] = [{}]
    for name, spec in active_space(config).items():
        values = grid_values(spec)
        if values is None:
            raise ValueError(f"search_space.{name} is a float without a step")
        grown: list[dict[str, Any]] = []
        for point in points:
            if condition_holds(spec, point):
                grown.extend({**point, name: value} for value in values)
            else:
                grown.append(point)
            if len(grown) > limit:
                raise ValueError(f"the grid has more than {limit} points")
        points = grown
    return points


def strategy_problems(config: dict[str, Any]) -> Iterator[str]:
    """Every problem of study.sampler, study.n_trials (grid) and study.enqueue."""
    study = config["study"]
    yield from _enqueue_problems(study["enqueue"], active_space(config))
    if study["sampler"] == "grid":
        yield from _grid_problems(config)


def pruner_problems(config: dict[str, Any]) -> Iterator[str]:
    """Every problem of study.pruner and study.pruner_options against train.epochs."""
    name, options = config["study"]["pruner"], config["study"]["pruner_options"]
    takes = PRUNER_OPTIONS[name] + WRAPPER_OPTIONS
    for key in options:
        if key not in takes:
            yield (
                f"config key 'study.pruner_options.{key}': not an option of pruner {name!r}, "
                f"which takes: {', '.join(takes)}"
            )
    if "min_delta" in options and "patience" not in options:
        yield (
            "config key 'study.pruner_options.min_delta': only patience uses it; set "
            "study.pruner_options.patience too, or remove min_delta"
        )
    if name == "none" and "patience" not in options:
        return
    epochs = config["train"]["epochs"]
    if epochs < 2:
        yield (
            f"config key 'study.pruner': {name!r} can never stop a trial of train.epochs="
            f"{epochs}: decisions are taken after each epoch but the last; set study.pruner "
            "to none or train more epochs"
        )
    if name == "threshold" and options.get("lower") is None and options.get("upper") is None:
        yield (
            "config key 'study.pruner_options': the threshold pruner needs lower (stop a trial "
            "whose metric falls below it), upper, or both"
        )
    first = options.get("min_resource", 1)
    if name in ("successive_halving", "hyperband") and first >= epochs:
        yield (
            f"config key 'study.pruner_options.min_resource': {first} epochs, but a trial has "
            f"train.epochs={epochs} and is never stopped at its last epoch, so {name} could "
            f"never stop one; use at most {epochs - 1}"
        )
    if name == "hyperband" and options.get("max_resource", epochs) < first:
        yield (
            f"config key 'study.pruner_options.max_resource': {options['max_resource']} is "
            f"smaller than min_resource ({first}); leave it unset for train.epochs"
        )


def _grid_problems(config: dict[str, Any]) -> Iterator[str]:
    space = active_space(config)
    infinite = [name for name, spec in space.items() if grid_values(spec) is None]
    for name in infinite:
        spec = space[name]
        yield (
            f"config key 'study.sampler': grid needs a finite search space, but "
            f"search_space.{name} is a float without a step ({spec['low']} to {spec['high']}); "
            f"give it a step, make it categorical, or choose another sampler (tpe, qmc, ...)"
        )
    if infinite:
        return
    try:
        points = grid_points(config)
    except ValueError:
        yield (
            f"config key 'study.sampler': the grid over search_space has more than "
            f"{MAX_GRID_POINTS} points; search fewer values, or choose another sampler"
        )
        return
    study = config["study"]
    most = len(points) + len(study["enqueue"])
    if study["n_trials"] > most:
        yield (
            f"config key 'study.n_trials': {study['n_trials']} trials, but the grid over "
            f"search_space has {len(points)} points (and study.enqueue {len(study['enqueue'])} "
            f"sets); set study.n_trials to at most {most}, which tries every point once"
        )


def _enqueue_problems(
    enqueue: list[dict[str, Any]], space: dict[str, dict[str, Any]]
) -> Iterator[str]:
    for index, params in enumerate(enqueue):
        for name, value in params.items():
            key = f"config key 'study.enqueue[{index}].{name}'"
            if name not in space:
                yield (
                    f"{key}: not a search_space parameter; enqueue sets may name: "
                    + ", ".join(space)
                    + " (an overlay that changes the search space may also need its own "
                    "study.enqueue, or `study: {enqueue: []}` to drop config.yaml's warm start)"
                )
                continue
            problem = value_problem(space[name], value) or _unused(name, space[name], params)
            if problem:
                yield f"{key}: {problem}"


def _unused(name: str, spec: dict[str, Any], params: dict[str, Any]) -> str | None:
    for parent, values in spec.get("condition", {}).items():
        if parent in params and params[parent] not in values:
            return (
                f"never used: search_space.{name} is sampled only when {parent} is one of "
                f"{values}, and this set has {parent}={params[parent]!r}"
            )
    return None


def value_problem(spec: dict[str, Any], value: Any) -> str | None:
    """Why `value` cannot be a value of the search-space entry `spec`, or None if it can."""
    if spec["type"] == "categorical":
        if _choice(spec["choices"], value) is None:
            return f"{value!r} is not one of the choices {spec['choices']}"
        return None
    if isinstance(value, str):
        return (
            f"{value!r} is text, not a number (YAML reads 1e-4 as text; write 1.0e-4)"
            if spec["type"] == "float"
            else f"{value!r} is text, not an integer"
        )
    wanted = (int,) if spec["type"] == "int" else (int, float)
    if isinstance(value, bool) or not isinstance(value, wanted):
        kind = "an integer" if spec["type"] == "int" else "a number"
        return f"{value!r} ({type(value).__name__}) is not {kind}"
    if not spec["low"] <= value <= spec["high"]:
        return f"{value!r} is outside the searched range {spec['low']} to {spec['high']}"
    step = spec.get("step")
    if step is not None:
        offset = (Decimal(str(value)) - Decimal(str(spec["low"]))) / Decimal(str(step))
        if offset != offset.to_integral_value():
            return f"{value!r} is not on the grid low={spec['low']} + k * step={step}"
    return None


def _choice(choices: list[Any], value: Any) -> Any:
    """The choice equal to `value` (True is not 1 here), or None."""
    for choice in choices:
        if choice == value and isinstance(choice, bool) == isinstance(value, bool):
            return choice
    return None


def enqueued_params(config: dict[str, Any], slot: int) -> dict[str, Any] | None:
    """The parameters study.enqueue fixes for `slot` (validated), as the values Optuna would
    return for them: the matching choice, an int, or a float. None past the enqueued sets."""
    enqueue = config["study"]["enqueue"]
    if slot >= len(enqueue):
        return None
    space = active_space(config)
    fixed: dict[str, Any] = {}
    for name, value in enqueue[slot].items():
        spec = space[name]
        if spec["type"] == "categorical":
            fixed[name] = _choice(spec["choices"], value)
        else:
            fixed[name] = int(value) if spec["type"] == "int" else float(value)
    return fixed
