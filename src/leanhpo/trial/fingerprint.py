"""A study's trials share one config: the fingerprint of what decides a trial's result, kept
by each trial (state.json) and by the study (Optuna user attrs), checked for every slot."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import optuna

from leanhpo.config.introduced import as_before, continue_hint
from leanhpo.exit_codes import EXIT_BAD_INPUT
from leanhpo.study.setup import study_lock
from leanhpo.tracking import flatten

# Sections whose change makes a finished trial meaningless for the study (fingerprinted).
TRAINING_SECTIONS = ("data", "model", "train", "search_space")
STUDY_FINGERPRINT_ATTR = "leanhpo.fingerprint"
STUDY_FINGERPRINT_CONFIG_ATTR = "leanhpo.fingerprint_config"
# Keys of those sections that change how a trial runs, not what it learns: lowering
# train.max_batch_rows after an out-of-memory stop must resume the study, not be refused.
EXECUTION_KEYS = {"train": ("max_batch_rows",)}
# Keys added after studies were fingerprinted (config/introduced.py): at the value that does
# what the code did before them they stay out of the fingerprint, so a study started earlier
# resumes and grows; any other value is a change like any other.


class StudyConfigMismatchError(RuntimeError):
    exit_code = EXIT_BAD_INPUT


def training_sections(config: dict[str, Any]) -> dict[str, Any]:
    """The sections that decide a trial's result, without the EXECUTION_KEYS and without the
    INTRODUCED_KEYS at their earlier behaviour."""
    return {
        section: {
            k: v
            for k, v in config[section].items()
            if k not in EXECUTION_KEYS.get(section, ()) and not as_before(section, k, v)
        }
        for section in TRAINING_SECTIONS
    }


def fingerprint(config: dict[str, Any], data_fingerprint: str) -> str:
    """Hash of what decides a trial's result: changing it mid-study is an error, not a rerun."""
    relevant = training_sections(config)
    relevant["seed"] = config["study"]["seed"]
    relevant["metric"] = config["study"]["metric"]
    relevant["data_fingerprint"] = data_fingerprint
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()


def check_study_fingerprint(study: optuna.Study, value: str, config: dict[str, Any]) -> None:
    """Every slot of a study trains on the config and data the study started with.

    The study keeps its fingerprint (and the sections it covers) as Optuna user attrs, so the
    check holds for a new slot too, on any host that shares the storage; the first slot to
    run records it. Slots start together on several drivers, so it is recorded under the study
    lock and read again there: a slot that lost the race is checked against the winner's."""
    sections = training_sections(config)
    recorded = study.user_attrs.get(STUDY_FINGERPRINT_ATTR)
    if recorded is None:
        study_cfg = config["study"]
        with study_lock(study_cfg["name"], study_cfg["storage"], study_cfg["storage_timeout_s"]):
            recorded = study.user_attrs.get(STUDY_FINGERPRINT_ATTR)
            if recorded is None:
                study.set_user_attr(STUDY_FINGERPRINT_ATTR, value)
                study.set_user_attr(STUDY_FINGERPRINT_CONFIG_ATTR, sections)
                return
    if recorded != value:
        old = study.user_attrs.get(STUDY_FINGERPRINT_CONFIG_ATTR) or {}
        changed = changed_keys(old, sections)
        raise StudyConfigMismatchError(
            f"study {config['study']['name']!r} was started with another config or data "
            f"(changed: {', '.join(changed) or 'the prepared data or the seed'}). All trials of a "
            "study share one config: revert the change, or set a new study.name to start a new study."
            + _hint(changed, old)
        )


def changed_keys(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    old_flat, new_flat = flatten(old), flatten(new)
    return sorted(k for k in set(old_flat) | set(new_flat) if old_flat.get(k) != new_flat.get(k))


def check_trial_fingerprint(
    state: dict[str, Any] | None, value: str, config: dict[str, Any], trial_name: str
) -> None:
    """A resumed (or rerun) slot trains on the config and data it started with."""
    if state is None or state.get("fingerprint") == value:
        return
    changed = changed_keys(state["fingerprint_config"], training_sections(config))
    raise StudyConfigMismatchError(
        f"{trial_name} of study {config['study']['name']!r} was started with another config or "
        f"data (changed: {', '.join(changed) or 'the prepared data'}). All trials of a study share "
        "one config: revert the change, or set a new study.name to start a new study."
        + _hint(changed, state["fingerprint_config"])
    )


def _hint(changed: list[str], old: dict[str, Any]) -> str:
    """How to continue the study when a key it was started without is now set otherwise."""
    before = flatten(old)
    hint = continue_hint(
        [key for key in changed if key not in before],
        {key: before[key] for key in changed if key in before},
    )
    return f" {hint}" if hint else ""
