"""Config validation: defaults, clear errors naming the key, search space, CLI exit codes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from leanhpo.cli import EXIT_BAD_INPUT, main
from leanhpo.config import (
    Config,
    ConfigError,
    apply_params,
    deep_merge,
    load_config_file,
    parse_size,
    sample_params,
    validate_config,
)
from leanhpo.metric_names import MAXIMISABLE_METRICS

REPO = Path(__file__).resolve().parents[1]


def test_defaults_fill_an_empty_config():
    config = validate_config({})
    assert config["study"]["n_trials"] == 3
    assert config["retention"]["keep_best_trials"] == 3
    assert config["data"]["split"] == {
        "train": 0.8,
        "validation": 0.1,
        "test": 0.1,
        "seed": 42,
        "group_by": "author",
        "min_positives": 3,
        "near_duplicate_jaccard": 0.8,
    }
    assert config["search_space"]["learning_rate"]["log"] is True


# What config.yaml sets for the demo (issue 24: a study that learns the sample in 10 minutes on
# 2 cores, docs/benchmarks.md) against a plain default: more, shorter posts, more epochs, tuned
# thresholds, and a warm start that names params of config.yaml's own search space.
DEMO_KEYS = {
    ("data", "sample_posts"): (160, 400),
    ("data", "sample_profile"): ("long_tailed", "short"),
    ("train", "epochs"): (2, 4),
    ("model", "decision_threshold"): (0.5, "auto"),
}


def test_schema_defaults_are_config_yaml_outside_the_search_space():
    """An overlay on an empty base and one on config.yaml mean the same study; only the search
    space (config.yaml's is the searched one, the schema's a minimal one) and the demo's keys
    differ, each as listed."""
    defaults, shipped = validate_config({}), load_config_file(REPO / "config.yaml")
    defaults.pop("search_space"), shipped.pop("search_space")
    assert defaults["study"].pop("enqueue") == [] and len(shipped["study"].pop("enqueue")) == 1
    for (section, key), (default, demo) in DEMO_KEYS.items():
        assert (defaults[section].pop(key), shipped[section].pop(key)) == (default, demo)
    assert defaults == shipped


def test_config_yaml_is_valid_and_every_key_is_commented():
    config = load_config_file(REPO / "config.yaml")
    assert config["model"]["id"] == "minilm"
    for line in (REPO / "config.yaml").read_text().splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#") and ":" in stripped:
            assert "#" in line, f"config.yaml line without a comment: {line!r}"


def test_config_yaml_lists_every_schema_key():
    """Every key is documented where users look: config.yaml (with a comment) and the schema."""
    from leanhpo.config.validate import load_schema

    written = yaml.safe_load((REPO / "config.yaml").read_text())
    missing = []

    def walk(node, values, path):
        for name, sub in node.get("properties", {}).items():
            if name not in values:
                missing.append(path + name)
            elif "properties" in sub and not sub.get("x-option-map"):
                walk(sub, values[name] or {}, f"{path}{name}.")

    walk(load_schema(), written, "")
    assert missing == []


def test_every_schema_key_has_description_and_default():
    from leanhpo.config.validate import load_schema

    def walk(node, path):
        for name, sub in node.get("properties", {}).items():
            assert "description" in sub, f"{path}{name} lacks a description"
            assert "default" in sub or path.startswith("search_space"), (
                f"{path}{name} lacks a default"
            )
            if sub.get("x-option-map"):  # an option's default is its pruner's (see the schema)
                for option, spec in sub["properties"].items():
                    assert "description" in spec, f"{path}{name}.{option} lacks a description"
                continue
            walk(sub, f"{path}{name}.")

    walk(load_schema(), "")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"study": {"n_trials": -1}}, "study.n_trials"),
        ({"study": {"n_trails": 3}}, "'n_trails'"),
        ({"bogus": 1}, "'bogus'"),
        ({"model": {"pooling": "max"}}, "model.pooling"),
        ({"data": {"source": "local"}}, "data.path"),
        ({"data": {"split": {"train": 0.5, "validation": 0.1, "test": 0.1}}}, "data.split"),
        ({"retention": {"keep_best_k": 3, "keep_best_k_max": 2}}, "keep_best_k_max"),
        ({"retention": {"keep_best_k": 0}}, "retention.keep_best_k"),
        ({"retention": {"max_total_size": "lots"}}, "retention.max_total_size"),
        ({"resources": {"gpu_model": "a100"}}, "resources.gpu_model"),
        ({"resources": {"mem_mb": 0}}, "resources.mem_mb"),
        ({"model": {"long_posts": "windows", "window_stride": 200}}, "model.window_stride"),
        ({"model": {"long_posts": "slide"}}, "model.long_posts"),
        ({"model": {"window_pooling": "sum"}}, "model.window_pooling"),
        ({"search_space": {"lr": {"type": "float", "low": 1, "high": 2}}}, "search_space.lr"),
        ({"search_space": {"dropout": {"type": "float", "low": 0.1, "high": 0.95}}}, "high=0.95"),
        (
            {"search_space": {"learning_rate": {"type": "float", "low": 0.1, "high": 0.01}}},
            "larger than high",
        ),
        (
            {
                "search_space": {
                    "learning_rate": {"type": "float", "low": 0, "high": 0.1, "log": True}
                }
            },
            "log scale",
        ),
        (
            {"search_space": {"pooling": {"type": "categorical", "choices": ["cls", "max"]}}},
            "'max'",
        ),
        ({"search_space": {"pooling": {"type": "categorical"}}}, "choices"),
        (
            {
                "search_space": {
                    "dropout": {
                        "type": "float",
                        "low": 0,
                        "high": 0.2,
                        "condition": {"pooling": ["cls"]},
                    }
                }
            },
            "condition.pooling",
        ),
    ],
)
def test_bad_config_names_the_key(raw, expected):
    with pytest.raises(ConfigError) as info:
        validate_config(raw)
    assert expected in str(info.value)


def test_unknown_metric_lists_the_valid_names():
    with pytest.raises(ConfigError) as info:
        validate_config({"study": {"metric": "val_loss"}})
    message = str(info.value)
    assert "study.metric" in message
    assert "val_criteria_f1_macro" in message and "val_evidence_f1" in message


def test_all_errors_are_reported_at_once():
    with pytest.raises(ConfigError) as info:
        validate_config({"study": {"n_trials": 0, "seed": -3}})
    assert "study.n_trials" in str(info.value) and "study.seed" in str(info.value)


def test_overlay_merges_nested_keys_and_null_drops_a_search_entry(tmp_path):
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(
        yaml.safe_dump({"study": {"n_trials": 6}, "search_space": {"head_learning_rate": None}})
    )
    # config.yaml's warm start names the dropped entry: the error says how to drop it too
    with pytest.raises(ConfigError, match=r"study.enqueue\[0\].head_learning_rate.*enqueue: \[\]"):
        load_config_file(REPO / "config.yaml", overlay)
    overlay.write_text(
        yaml.safe_dump(
            {
                "study": {"n_trials": 6, "enqueue": []},
                "search_space": {"head_learning_rate": None},
            }
        )
    )
    config = load_config_file(REPO / "config.yaml", overlay)
    assert config["study"]["n_trials"] == 6
    assert config["study"]["name"] == "demo"
    from leanhpo.config import active_space

    with (REPO / "config.yaml").open() as handle:
        default_space = set(yaml.safe_load(handle)["search_space"])
    assert "head_learning_rate" in default_space
    assert set(active_space(config)) == default_space - {"head_learning_rate"}


def test_parse_size():
    assert parse_size("10GB") == 10 * 10**9
    assert parse_size("500MB") == 500 * 10**6
    assert parse_size("1.5GiB") == int(1.5 * 2**30)
    with pytest.raises(ConfigError):
        parse_size("ten gigs")


def test_typed_config_round_trip():
    config = Config.from_dict({"train": {"epochs": 5}})
    assert config.train.epochs == 5
    assert config.retention.max_total_bytes == 10 * 10**9
    assert Config.from_dict(config.to_dict()) == config


class FixedSuggester:
    """Records what is asked and answers the first choice or the low bound."""

    def __init__(self):
        self.asked = []

    def suggest_float(self, name, low, high, *, step=None, log=False):
        self.asked.append(name)
        return low

    def suggest_int(self, name, low, high, *, step=1, log=False):
        self.asked.append(name)
        return low

    def suggest_categorical(self, name, choices):
        self.asked.append(name)
        return choices[0]


def test_conditional_parameters_are_sampled_only_when_their_condition_holds():
    space = {
        "pooling": {"type": "categorical", "choices": ["cls", "mean"]},
        "dropout": {"type": "float", "low": 0.0, "high": 0.3, "condition": {"pooling": ["mean"]}},
        "batch_size": {"type": "int", "low": 4, "high": 16, "condition": {"pooling": ["cls"]}},
    }
    config = validate_config({"search_space": space})
    suggester = FixedSuggester()
    params = sample_params(suggester, config)
    assert params == {"pooling": "cls", "batch_size": 4}
    assert suggester.asked == ["pooling", "batch_size"]
    resolved = apply_params(config, params)
    assert resolved["model"]["pooling"] == "cls"
    assert resolved["train"]["batch_size"] == 4
    assert config["model"]["pooling"] == "mean"  # the input is not modified


def test_optuna_samples_200_valid_trial_configs(tmp_path):
    import optuna

    space = {
        "learning_rate": {"type": "float", "low": 1e-5, "high": 1e-3, "log": True},
        "pooling": {"type": "categorical", "choices": ["cls", "mean"]},
        "dropout": {"type": "float", "low": 0.0, "high": 0.5, "condition": {"pooling": ["mean"]}},
        "batch_size": {"type": "int", "low": 4, "high": 32, "step": 4},
    }
    config = validate_config({"search_space": space})
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(200):
        trial = study.ask()
        params = sample_params(trial, config)
        assert ("dropout" in params) == (params["pooling"] == "mean")
        Config.from_dict(apply_params(config, params))  # raises if invalid
        study.tell(trial, 0.0)


def test_cli_validate_config_exit_codes(tmp_path, capsys):
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump({"study": {"n_trials": 2}}))
    assert main(["validate-config", "--config", str(good)]) == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"study": {"n_trials": -2}}))
    assert main(["validate-config", "--config", str(bad)]) == EXIT_BAD_INPUT
    assert "study.n_trials" in capsys.readouterr().err
    assert main(["validate-config", "--config", str(tmp_path / "missing.yaml")]) == EXIT_BAD_INPUT


def test_deep_merge_does_not_mutate():
    base = {"a": {"b": 1, "c": 2}}
    merged = deep_merge(base, {"a": {"b": 3}})
    assert merged == {"a": {"b": 3, "c": 2}} and base == {"a": {"b": 1, "c": 2}}


def test_metric_names_cover_per_symptom_and_evidence():
    assert "val_criteria_f1_WORTHLESSNESS" in MAXIMISABLE_METRICS
    assert "val_evidence_exact_match" in MAXIMISABLE_METRICS


@pytest.mark.parametrize(
    ("model_id", "message"),
    [
        ("/does/not/exist", "looks like a local path but /does/not/exist is not a folder"),
        ("./models/mine", "looks like a local path"),
        ("not a hub id!!", "is not a catalog alias"),
    ],
)
def test_a_model_id_that_names_no_model_is_a_config_error(model_id, message):
    """Not a traceback from the checkpoint-size estimate (huggingface_hub's HFValidationError)."""
    with pytest.raises(ConfigError, match=re.escape(message)) as error:
        validate_config({"model": {"id": model_id}})
    assert "config key 'model.id'" in str(error.value)


def test_model_ids_that_can_name_a_model_are_accepted(tmp_path):
    for model_id in ("minilm", "tiny", "bert-base", "someone/some-model", str(tmp_path)):
        assert validate_config({"model": {"id": model_id}})["model"]["id"] == model_id


def test_window_stride_auto_is_a_quarter_of_max_length_and_keeps_the_fingerprint():
    from leanhpo.trial.fingerprint import fingerprint

    def model(**keys):
        return validate_config({"model": keys})["model"]["window_stride"]

    assert validate_config({})["model"]["window_stride"] == 64  # the number before auto, at 256
    assert model(max_length=512) == 128
    # Refused before auto, when the default stride was a fixed 64 (more than half of 96).
    assert model(max_length=96) == 24
    assert model(max_length=128, window_stride=48) == 48
    # At max_length 256 a study fingerprinted with the old default keeps its fingerprint.
    auto = validate_config({"model": {"window_stride": "auto"}})
    fixed = validate_config({"model": {"window_stride": 64}})
    assert fingerprint(auto, "data") == fingerprint(fixed, "data")
    with pytest.raises(ConfigError, match=r"model\.window_stride"):
        validate_config({"model": {"window_stride": "quarter"}})
