"""A study's trials share one config: the fingerprint of what decides a trial's result, kept
by each trial (state.json) and by the study (Optuna user attrs), checked for every slot."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import optuna

from leanhpo.exit_codes import EXIT_BAD_INPUT
from leanhpo.tracking import flatten

# Sections whose change makes a finished trial meaningless for the study (fingerprinted).
TRAINING_SECTIONS = ("data", "model", "train", "search_space")
STUDY_FINGERPRINT_ATTR = "leanhpo.fingerprint"
STUDY_FINGERPRINT_CONFIG_ATTR = "leanhpo.fingerprint_config"
# Keys of those sections that change how a trial runs, not what it learns: lowering
# train.max_batch_rows after an out-of-memory stop must resume the study, not be refused.
EXECUTION_KEYS = {"train": ("max_batch_rows",)}
# Keys added after studies were fingerprinted, with the value that does what the code did before
# them: at that value they stay out of the fingerprint, so a study started earlier resumes and
# grows; any other value is a change like any other.
# train.deterministic is fingerprinted, not an execution key like max_batch_rows: on CUDA it
# picks other kernels, so the numbers of every epoch change, and a study whose trials (or the
# two halves of a resumed trial) ran under both values would keep neither promise, bitwise
# resumes nor comparable trials. On the CPU both values compute the same numbers as the code
# before the key, where every study so far ran; true is that behaviour.
INTRODUCED_KEYS: dict[str, dict[str, Any]] = {
    "model": {"decision_threshold": 0.5},
    "train": {"deterministic": True},
}


class StudyConfigMismatchError(RuntimeError):
    exit_code = EXIT_BAD_INPUT


def training_sections(config: dict[str, Any]) -> dict[str, Any]:
    """The sections that decide a trial's result, without the EXECUTION_KEYS and without the
    INTRODUCED_KEYS at their earlier behaviour."""
    return {
        section: {
            k: v
            for k, v in config[section].items()
            if k not in EXECUTION_KEYS.get(section, ()) and not _as_before(section, k, v)
        }
        for section in TRAINING_SECTIONS
    }


def _as_before(section: str, key: str, value: Any) -> bool:
    before = INTRODUCED_KEYS.get(section, {})
    return key in before and value == before[key]


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
    run records it."""
    sections = training_sections(config)
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
    )
