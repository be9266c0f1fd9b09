"""Refuse a config that would redo finished work, before Snakemake deletes anything.

Snakemake reruns a finished job whose params changed, and it deletes the job's declared outputs
before it starts it: the prepared splits after a typo in `data.path`, a trial's report.json
after a change of `train.epochs` that the trial job itself then refuses. Both jobs fail with a
good message, but the files are already gone. So when the Snakefile is parsed, before any job
is scheduled, this module compares the config with the params Snakemake recorded for every
finished output of the study (its metadata records under .snakemake/metadata) and names the
keys whose change would rerun finished work:

- keys that decide what a trial learns (data, model, train, search_space, the study's seed,
  metric and storage) are refused: all trials of a study share one config. Revert the change,
  or give the new config a new `study.name`;
- the others (retention, evaluation, tracking) only redo cheap steps from what is kept;
  rerunning them is still a deliberate act: `--config rerun_finished=True`.

Params are one (key, value) pair per key (leanhpo.workflow.params), so a difference names its
key. A record in
another form (written by an older leanhpo, or by another persistence backend) is left to
Snakemake, and the trial job's own fingerprint check still refuses a changed training config.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from leanhpo.config.introduced import continue_hint, introduced_value
from leanhpo.workflow.params import parse_param

METADATA = Path(".snakemake") / "metadata"
# What a trial's result depends on (leanhpo.trial.fingerprint covers the same ground, at run
# time); the study keys name the study itself.
RESULT_SECTIONS = ("data", "model", "train", "search_space")
RESULT_STUDY_KEYS = ("study.name", "study.seed", "study.metric", "study.storage")
# The finished steps a change redoes, in words.
STEP_NAMES = {
    "prepare_dataset": "the prepared splits",
    "length_report": "the length report",
    "create_study": "study.json",
    "run_trial": "trial",
    "select_confirm": "the study.confirm plan",
    "confirm_run": "the study.confirm runs (retrained)",
    "prune_study": "study-wide retention",
    "evaluate_study": "the test evaluation",
    "export_model": "the exported model",
    "plot_study": "the plots",
}
MAX_VALUE_CHARS = 80


@dataclass
class Change:
    before: Any
    after: Any
    steps: set[str] = field(default_factory=set)
    trials: set[int] = field(default_factory=set)


def finished_outputs(study_dir: str, workdir: Path) -> Iterator[tuple[str, str, list[str]]]:
    """(output, rule, recorded params) of every output of the study that exists and has a
    Snakemake metadata record (the file persistence of the pinned Snakemake 9: one JSON file per
    output, named by the output's urlsafe base64, split into @-prefixed folders when long)."""
    root = workdir / METADATA
    prefix = study_dir.rstrip("/") + "/"
    if not root.is_dir():
        return
    for folder, _dirs, files in os.walk(root):
        for name in files:
            relative = Path(folder, name).relative_to(root)
            encoded = "".join(part.removeprefix("@") for part in relative.parts)
            try:
                output = base64.urlsafe_b64decode(encoded.encode()).decode()
                record = json.loads(Path(folder, name).read_text())
            except (ValueError, OSError):
                continue
            if not output.startswith(prefix) or not (workdir / output).exists():
                continue
            params = record.get("params")
            if isinstance(record.get("rule"), str) and isinstance(params, list):
                yield output, record["rule"], [str(p) for p in params]


def rerun_changes(
    study_dir: str, rule_params: dict[str, dict[str, Any]], workdir: Path
) -> dict[str, Change]:
    """Config key -> how it changed and which finished outputs it would rerun."""
    changes: dict[str, Change] = {}
    now = {rule: _parsed(params.values()) for rule, params in rule_params.items()}
    for output, rule, recorded in finished_outputs(study_dir, workdir):
        if rule not in now:
            continue
        before, after = _parsed(recorded), now[rule]
        if before is None or after is None:
            continue  # params in another form: Snakemake decides
        for key in sorted(set(before) | set(after)):
            if _same(before.get(key, _MISSING), after.get(key, _MISSING), key):
                continue
            change = changes.setdefault(
                key, Change(before.get(key, _MISSING), after.get(key, _MISSING))
            )
            change.steps.add(rule)
            if rule == "run_trial":
                change.trials.add(_slot(output))
    return changes


_MISSING = object()


def _same(before: Any, after: Any, key: str) -> bool:
    """Equal, or a key added since (config/introduced.py) that was not recorded before and is
    set now to what the code before it did: the finished work is what it would compute."""
    if before == after:
        return True
    known, earlier = introduced_value(key)
    return known and _MISSING in (before, after) and earlier in (before, after)


def _parsed(params: Any) -> dict[str, Any] | None:
    pairs = [parse_param(p) for p in params]
    if any(pair is None for pair in pairs):
        return None
    return dict(pair for pair in pairs if pair is not None)


def _slot(output: str) -> int:
    folder = Path(output).parent.name  # trial_0002
    return int(folder.rsplit("_", 1)[-1]) if folder.startswith("trial_") else -1


def is_result_key(key: str) -> bool:
    return key.split(".", 1)[0] in RESULT_SECTIONS or key in RESULT_STUDY_KEYS


def rerun_refusal(
    study_name: str, changes: dict[str, Change], rerun_finished: bool, n_trials: int
) -> str | None:
    """The message refusing these changes, or None when they may run."""
    if not changes:
        return None
    results = {k: c for k, c in changes.items() if is_result_key(k)}
    if not results and rerun_finished:
        return None
    lines = [
        f"leanhpo: this config would redo finished work of study {study_name!r}. Nothing was "
        "run, and nothing on disk was changed.",
        "  changed:",
    ]
    for key, change in sorted(changes.items()):
        lines.append(f"    {key}: {_shown(change.before)} -> {_shown(change.after)}")
    redone = _redone(changes.values(), n_trials)
    lines.append(f"  it would redo: {redone}")
    if results:
        lines += [
            f"  {', '.join(sorted(results))} decide{'s' if len(results) == 1 else ''} what a "
            "trial learns, and all trials of a study share one config.",
            "  Fix: revert the change to continue this study, or set a new study.name (in your "
            "overlay, e.g. `study: {name: " + f"{study_name}_2" + "}`) to start a new one.",
        ]
        hint = continue_hint(
            [k for k, c in sorted(results.items()) if c.before is _MISSING],
            {k: c.before for k, c in sorted(results.items()) if c.before is not _MISSING},
        )
        if hint:
            lines.append(f"  {hint}")
    else:
        lines += [
            "  These keys only change what is kept or reported: the finished steps would be "
            "redone from what is on disk, without retraining.",
            "  Fix: to do that, run the same command with `--config rerun_finished=True`; "
            "otherwise revert the change.",
        ]
    return "\n".join(lines)


def _shown(value: Any) -> str:
    if value is _MISSING:
        return "(not set)"
    text = json.dumps(value)
    return text if len(text) <= MAX_VALUE_CHARS else text[: MAX_VALUE_CHARS - 3] + "..."


def _redone(changes: Any, n_trials: int) -> str:
    steps: set[str] = set()
    trials: set[int] = set()
    for change in changes:
        steps |= change.steps
        trials |= change.trials
    words = [STEP_NAMES.get(s, s) for s in sorted(steps) if s != "run_trial"]
    if trials:
        shown = ", ".join(str(t + 1) for t in sorted(trials))
        words.insert(0, f"finished trial{'s' if len(trials) > 1 else ''} {shown} of {n_trials}")
    return ", ".join(words)
