"""Config keys added after studies, checkpoints and exports were written with the code before
them, and the value that does what that code did.

Three places read them: the trial fingerprint (trial/fingerprint.py), where a key at its earlier
value stays out of the hash so a study started before it resumes and grows; the guard
(workflow/guard.py), where a key that was not set before and is set to that value now is no
change; and `Config.from_stored`, which reads a config stored by an older leanhpo (a checkpoint,
a trial report, an export) with those values, not with today's defaults, so that a model is
used as it was selected.

A leaf module: config validation and the Snakefile's guard import it without torch or Optuna.
"""

from __future__ import annotations

import copy
from typing import Any

# train.deterministic is fingerprinted, not an execution key like max_batch_rows: on CUDA it
# picks other kernels, so the numbers of every epoch change, and a study whose trials (or the
# two halves of a resumed trial) ran under both values would keep neither promise, bitwise
# resumes nor comparable trials. On the CPU both values compute the same numbers as the code
# before the key, where every study so far ran; true is that behaviour.
# model.evidence_for: the code before it gave (and scored) a sentence for every symptom, the
# ones decided absent included: `all`. Its default, `present`, changes the validation evidence
# metrics and the calibrated null threshold, so a study started before it continues only with
# `all` (the refusal says so).
INTRODUCED_KEYS: dict[str, dict[str, Any]] = {
    "model": {"decision_threshold": 0.5, "evidence_for": "all"},
    "train": {"deterministic": True},
}


# Keys whose default changed, with the default before: a study that ran on the old default sees
# a change it did not make, and the refusal says how to continue it (nothing else differs: a
# changed default is a change like any other for the fingerprint and the guard).
# model.window_pooling: max until issue 25, which measured its drift with the number of windows
# (docs/benchmarks.md, "Window pooling").
# model.window_stride: 64 until issue 27; auto gives 64 at max_length 256, so only studies with
# another max_length and the default stride see a change.
EARLIER_DEFAULTS: dict[str, Any] = {
    "model.max_answer_tokens": 96,
    "model.window_pooling": "max",
    "model.window_stride": 64,
}


def as_before(section: str, key: str, value: Any) -> bool:
    """Whether `section.key` is a key added later, set to the value the code before it had."""
    before = INTRODUCED_KEYS.get(section, {})
    return key in before and value == before[key]


def introduced_value(dotted: str) -> tuple[bool, Any]:
    """(True, the earlier behaviour's value) for an introduced `section.key`, else (False, None)."""
    section, _, key = dotted.partition(".")
    before = INTRODUCED_KEYS.get(section, {})
    return (True, before[key]) if key in before else (False, None)


def with_earlier_values(raw: dict[str, Any]) -> dict[str, Any]:
    """A copy of a stored config in which each introduced key it lacks has its earlier value."""
    filled = copy.deepcopy(raw)
    for section, keys in INTRODUCED_KEYS.items():
        if isinstance(filled.get(section), dict):
            for key, value in keys.items():
                filled[section].setdefault(key, value)
    return filled


def continue_hint(unset_before: list[str], before: dict[str, Any] | None = None) -> str:
    """A sentence for a refusal: how to continue a study whose config did not set the keys of
    `unset_before` (it ran before they existed, or at their earlier value), or set a key of
    `before` (key -> its value then) at a default that has changed since; "" when neither."""
    shown = []
    for key in unset_before:
        known, value = introduced_value(key)
        if known:
            shown.append(f"{key}: {value!r}")
    changed = [
        f"{key}: {value!r}"
        for key, value in (before or {}).items()
        if key in EARLIER_DEFAULTS and value == EARLIER_DEFAULTS[key]
    ]
    sentences = []
    if shown:
        sentences.append(
            f"This study started without {' or '.join(s.split(':')[0] for s in shown)} (that "
            "is, as leanhpo did before the key existed)."
        )
    if changed:
        sentences.append(
            f"This study ran on the earlier default of {' and '.join(s.split(':')[0] for s in changed)}."
        )
    if not sentences:
        return ""
    return (
        " ".join(sentences)
        + f" To continue it, set {', '.join(shown + changed)} in your config or overlay."
    )
