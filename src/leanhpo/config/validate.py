"""Config validation: JSON Schema with defaults, then the checks a schema cannot express.

Every error names the config key and says how to fix it, because the user meets these errors
before anything has run and the key path is the only pointer they get.
"""

from __future__ import annotations

import copy
import functools
import re
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from leanhpo.exit_codes import EXIT_BAD_INPUT
from leanhpo.logs import register_url_secrets
from leanhpo.metric_names import MAXIMISABLE_METRICS

SCHEMA_PATH = Path(str(resources.files("leanhpo.config").joinpath("schema.yaml")))
SIZE_UNITS = {
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
    "TIB": 2**40,
}
SIZE_PATTERN = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGT]i?B|B)\s*$", re.IGNORECASE)
SPLIT_TOLERANCE = 1e-6
# YAML 1.1, which PyYAML implements, reads a number in exponent form only with a dot in it and a
# sign on the exponent: 5e-5 and 1e4 stay text, 5.0e-5 and 1.0e+4 are numbers. Every YAML 1.2
# tool says otherwise, so users meet this as "not a number" and need the spelling that works.
YAML11_EXPONENT_TEXT = re.compile(r"^[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)[eE][-+]?[0-9]+$")
NUMBER_TYPES = ("number", "integer")
WINDOW_STRIDE_SHARE = 4  # model.window_stride auto: max_length // 4


class ConfigError(ValueError):
    """A config that cannot run; the message names the key and the fix."""

    exit_code = EXIT_BAD_INPUT


def load_schema() -> dict[str, Any]:
    """The schema, parsed once per process (pure-Python YAML takes ~90 ms); a fresh copy each
    call, since the default-filling validator must never share nested dicts with a config."""
    return copy.deepcopy(_parsed_schema())


@functools.cache
def _parsed_schema() -> dict[str, Any]:
    with SCHEMA_PATH.open() as handle:
        schema: dict[str, Any] = yaml.safe_load(handle)
    return schema


def _with_defaults(validator_class: Any) -> Any:
    """Extend a validator so that it fills in `default` values while it walks the config."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator: Any, properties: Any, instance: Any, schema: Any) -> Iterator[Any]:
        if isinstance(instance, dict):
            for name, subschema in properties.items():
                if "default" in subschema and name not in instance:
                    instance[name] = copy.deepcopy(subschema["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


_DefaultingValidator = _with_defaults(jsonschema.Draft7Validator)


def key_path(parts: Any) -> str:
    return ".".join(str(part) for part in parts) or "<top level>"


def _schema_error_message(error: jsonschema.ValidationError) -> str:
    return _schema_error_text(error) + _yaml_number_hint(error)


def _schema_error_text(error: jsonschema.ValidationError) -> str:
    path = key_path(error.absolute_path)
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        extra = (
            sorted(set(error.instance) - set(allowed)) if isinstance(error.instance, dict) else []
        )
        where = path if error.absolute_path else "the top level"
        hint = f" (allowed keys: {', '.join(allowed)})" if allowed else ""
        return f"config key '{where}': unknown key(s) {', '.join(map(repr, extra))}{hint}"
    if error.validator == "enum":
        return f"config key '{path}': {error.instance!r} is not one of {error.validator_value}"
    accepted = _alternatives(error.validator_value) if error.validator == "anyOf" else None
    if accepted:
        return f"config key '{path}': {error.instance!r} is not {accepted}"
    return f"config key '{path}': {error.message}"


def _yaml_number_hint(error: jsonschema.ValidationError) -> str:
    """How to spell as a YAML number the text a number key got (see YAML11_EXPONENT_TEXT);
    empty unless that is what went wrong. The value is never converted: a number that YAML
    read as text may be text in other tools that read the same file."""
    text = error.instance
    if not isinstance(text, str) or not YAML11_EXPONENT_TEXT.match(text):
        return ""
    if error.validator == "anyOf":
        wanted = {option.get("type") for option in error.validator_value}
    elif error.validator == "type":
        value = error.validator_value
        wanted = set(value) if isinstance(value, list) else {value}
    else:
        return ""
    if not wanted & set(NUMBER_TYPES):
        return ""
    if "number" not in wanted and float(text).is_integer():
        return f"; YAML reads {text} as text, not as a number: write {int(float(text))}"
    mantissa, exponent = re.split("[eE]", text)
    mantissa += "0" if mantissa.endswith(".") else "" if "." in mantissa else ".0"
    fixed = f"{mantissa}e{exponent if exponent[0] in '+-' else '+' + exponent}"
    if fixed == text or not isinstance(yaml.safe_load(fixed), float):
        return ""  # text that YAML would read as a number: it came quoted, or not from YAML
    return (
        f"; YAML reads {text} as text, not as a number: write {fixed} (YAML needs a dot in "
        "the number and a sign on the exponent)"
    )


def _alternatives(options: list[dict[str, Any]]) -> str | None:
    """What an anyOf of constants, null, whole numbers from a minimum and bounded numbers
    accepts, in words ("'auto' or a number in (0, 1)"); None for any other anyOf, whose
    jsonschema message stands."""
    described = []
    for option in options:
        if set(option) == {"const"}:
            described.append(repr(option["const"]))
            continue
        if option == {"type": "null"}:
            described.append("null")
            continue
        if set(option) == {"type", "minimum"} and option["type"] == "integer":
            described.append(f"a whole number >= {option['minimum']}")
            continue
        low = option.get("exclusiveMinimum", option.get("minimum"))
        high = option.get("exclusiveMaximum", option.get("maximum"))
        if option.get("type") != "number" or low is None or high is None:
            return None
        opening = "(" if "exclusiveMinimum" in option else "["
        closing = ")" if "exclusiveMaximum" in option else "]"
        described.append(f"a number in {opening}{low:g}, {high:g}{closing}")
    return " or ".join(described)


def parse_size(text: str) -> int:
    """Parse '10GB', '500MB' or '1.5GiB' into bytes (decimal units, and binary with 'i')."""
    match = SIZE_PATTERN.match(str(text))
    if not match:
        raise ConfigError(f"cannot parse size {text!r}; write it like 10GB, 500MB or 2GiB")
    number, unit = match.groups()
    return int(float(number) * SIZE_UNITS[unit.upper()])


def validate_config(raw: dict[str, Any] | None) -> dict[str, Any]:
    """Return a validated deep copy of `raw` with every default filled in.

    Raises ConfigError listing every problem at once, each with its key path.
    """
    config = copy.deepcopy(raw) if raw else {}
    if not isinstance(config, dict):
        raise ConfigError(f"the config must be a mapping of keys, found {type(config).__name__}")
    # Only a config that names its search space can be checked against it (study.sampler, enqueue):
    # the study step validates just its study and tracking sections.
    searched = "search_space" in config
    validator = _DefaultingValidator(load_schema())
    errors = sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        raise ConfigError("invalid config:\n  " + "\n  ".join(map(_schema_error_message, errors)))
    _resolve_window_stride(config["model"])
    problems = list(_semantic_problems(config, searched=searched))
    if problems:
        raise ConfigError("invalid config:\n  " + "\n  ".join(problems))
    # A password in a URL is masked by value from here on, in every log line and file, even
    # where a library quotes it in a shape the patterns do not know.
    register_url_secrets(config["study"]["storage"])
    register_url_secrets(config["tracking"]["uri"])
    return config


def _resolve_window_stride(model: dict[str, Any]) -> None:
    """model.window_stride `auto`: a quarter of max_length (64 at the default 256, the number
    before auto), resolved here so that everything downstream, the fingerprint included, sees
    the number. max_length is not searchable, so no trial's parameters change it later."""
    if model["window_stride"] == "auto":
        model["window_stride"] = model["max_length"] // WINDOW_STRIDE_SHARE


def _semantic_problems(config: dict[str, Any], searched: bool = True) -> Iterator[str]:
    from leanhpo.config.search_space import search_space_problems
    from leanhpo.config.strategy import pruner_problems, strategy_problems

    study, data, retention = config["study"], config["data"], config["retention"]
    if study["metric"] not in MAXIMISABLE_METRICS:
        yield (
            f"config key 'study.metric': unknown metric {study['metric']!r}; valid names: "
            + ", ".join(MAXIMISABLE_METRICS)
        )
    split = data["split"]
    total = split["train"] + split["validation"] + split["test"]
    if abs(total - 1.0) > SPLIT_TOLERANCE:
        yield (
            f"config key 'data.split': train + validation + test must be 1.0, found {total:g}; "
            "adjust the three ratios"
        )
    if data["source"] == "local" and not data["path"]:
        yield (
            "config key 'data.path': data.source is 'local' but no folder is given; set data.path "
            "to the folder holding redsm5_posts.csv and redsm5_annotations.csv"
        )
    if retention["keep_best_k_max"] < retention["keep_best_k"]:
        yield (
            f"config key 'retention.keep_best_k_max': {retention['keep_best_k_max']} is smaller "
            f"than retention.keep_best_k ({retention['keep_best_k']}); raise it or lower keep_best_k"
        )
    model = config["model"]
    from leanhpo.hub import model_id_problem

    problem = model_id_problem(model["id"])
    if problem:
        yield problem
    if model["long_posts"] == "windows" and model["window_stride"] > model["max_length"] // 2:
        yield (
            f"config key 'model.window_stride': {model['window_stride']} tokens of overlap "
            f"leave too little new text per window of model.max_length={model['max_length']}; "
            "use at most half of max_length (e.g. 64 for 256)"
        )
    resources = config["resources"]
    if resources["gpu_model"] and resources["gpu"] < 1:
        yield (
            f"config key 'resources.gpu_model': {resources['gpu_model']!r} asks for a GPU type but "
            "resources.gpu is 0; set resources.gpu to the GPUs per trial, or gpu_model to null"
        )
    yield from _retention_problems(config)
    yield from _confirm_problems(config)
    yield from _augmentation_problems(config)
    yield from pruner_problems(config)
    space_problems = list(search_space_problems(config))
    yield from space_problems
    if searched and not space_problems:  # checked against a sound space only
        yield from strategy_problems(config)


def _confirm_problems(config: dict[str, Any]) -> Iterator[str]:
    """study.confirm retrains candidates whose own trial must still hold its best checkpoint:
    the trial is one of the configuration's runs and may be the one exported."""
    top_k = config["study"]["confirm"]["top_k"]
    keep = config["retention"]["keep_best_trials"]
    if top_k > keep and config["train"]["checkpointing"]:
        yield (
            f"config key 'study.confirm.top_k': {top_k} configurations retrained over seeds, but "
            f"retention.keep_best_trials keeps the checkpoints of only {keep} trials, so a "
            f"candidate's own trial could not be evaluated or exported; raise "
            f"retention.keep_best_trials to {top_k} or lower study.confirm.top_k"
        )
    if top_k > config["study"]["n_trials"]:
        yield (
            f"config key 'study.confirm.top_k': {top_k} configurations, but the study has only "
            f"{config['study']['n_trials']} trial slots; lower it or raise study.n_trials"
        )


def _augmentation_problems(config: dict[str, Any]) -> Iterator[str]:
    from leanhpo.data.augment import augmentation_config_problems

    train = config["train"]
    yield from augmentation_config_problems(
        train["augmentation_prob"], train["augmentation_methods"]
    )
    spec = (config.get("search_space") or {}).get("augmentation_methods")
    for choice in (spec or {}).get("choices", []):
        key = "search_space.augmentation_methods"
        yield from augmentation_config_problems(0.5, choice, methods_key=key)


def _retention_problems(config: dict[str, Any]) -> Iterator[str]:
    """Policies that cannot be satisfied (SPEC 5), found before anything runs."""
    retention, train, model = config["retention"], config["train"], config["model"]
    if not train["checkpointing"]:
        return
    if retention["keep_best_k"] < 1:
        yield (
            "config key 'retention.keep_best_k': 0 would delete every trial's best checkpoint, so the "
            "best model could not be evaluated; set it to 1 or more (or train.checkpointing: false)"
        )
    try:
        cap = parse_size(retention["max_total_size"])
    except ConfigError as error:
        yield f"config key 'retention.max_total_size': {error}"
        return
    from leanhpo.storage.estimate import estimate_from_model_files, weights_only_bytes
    from leanhpo.storage.preflight import human

    one = estimate_from_model_files(model["id"], model.get("revision", "main")) or 0
    # At the least (after every disk-pressure step) a trial holds a resume point while it writes
    # the next checkpoint; with weights-only retention its best epoch, when older, is kept apart
    # from the resume point, stripped.
    needed = one * min(train["epochs"], 2)
    what = f"a resume point while it writes the next, {human(one)} each"
    if retention.get("weights_only", True) and train["epochs"] >= 3 and one:
        stripped = weights_only_bytes(one)
        needed += stripped
        what += f", and its best epoch, {human(stripped)} weights only"
    if cap < max(needed, 1):
        yield (
            f"config key 'retention.max_total_size': {retention['max_total_size']} cannot hold what a "
            f"trial of model {model['id']!r} needs ({human(needed)}: {what}); raise it to at least "
            f"{human(needed)}"
        )


def load_config_file(*paths: Path | str) -> dict[str, Any]:
    """Merge YAML files like `snakemake --configfile` does (nested keys override), then validate."""
    merged: dict[str, Any] = {}
    for path in paths:
        with Path(path).open() as handle:
            loaded = yaml.safe_load(handle) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the config must be a mapping of keys")
        merged = deep_merge(merged, loaded)
    return validate_config(merged)


def deep_merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    result = copy.deepcopy(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = deep_merge(result[key], value)
        else:
            result[key] = copy.deepcopy(value)
    return result
