"""Early stopping of hopeless trials (study.pruner): Optuna's pruners, decided reproducibly.

A decision is taken after an epoch's checkpoint is committed and its metric published, for every
epoch but the last (a trial that trained all its epochs is completed). It is computed on an
in-memory copy of the study in which this trial's own earlier reports are replayed epoch by
epoch, so it depends only on what the storage holds and not on how often the trial was killed
and resumed. (Optuna's successive halving writes rung attributes while deciding; a kill between
that write and our record would otherwise shift every later decision of the trial.) The
attributes the pruner gave this trial in the copy are then written to the real storage, where
later trials compare against them, and the caller records the decision in state.json before it
acts on it: a rerun reads the decision back instead of deciding again.

In a sequential study the other trials are finished when a trial decides, so the same study
gives the same decisions on every run; with study.parallel, decisions depend on which trials
had reported when, as in any parallel Optuna study.
"""

from __future__ import annotations

import copy
import logging
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.pruners import (
    BasePruner,
    HyperbandPruner,
    MedianPruner,
    PatientPruner,
    PercentilePruner,
    SuccessiveHalvingPruner,
    ThresholdPruner,
)
from optuna.trial import FrozenTrial, TrialState

from leanhpo.config.strategy import WRAPPER_OPTIONS
from leanhpo.fsutil import atomic_write_json
from leanhpo.logs import event

# Fixed where Optuna would estimate them from the trials seen so far ("auto"), which would make
# a decision depend on when it was taken.
DEFAULT_MIN_RESOURCE = 1
PERCENTILE_DEFAULT = 25.0
# Every decision builds a throwaway in-memory study; Optuna would log each one's creation.
logging.getLogger("optuna.storages._in_memory").setLevel(logging.WARNING)


def build_pruner(name: str, options: dict[str, Any], epochs: int) -> BasePruner | None:
    """The Optuna pruner of study.pruner / study.pruner_options (validated), or None when
    nothing is ever pruned. A fresh one per decision: hyperband keeps state between calls."""
    given = {k: v for k, v in options.items() if k not in WRAPPER_OPTIONS}
    inner: BasePruner | None
    if name == "median":
        inner = MedianPruner(**given)
    elif name == "percentile":
        inner = PercentilePruner(**{"percentile": PERCENTILE_DEFAULT, **given})
    elif name == "successive_halving":
        inner = SuccessiveHalvingPruner(**{"min_resource": DEFAULT_MIN_RESOURCE, **given})
    elif name == "hyperband":
        defaults = {"min_resource": DEFAULT_MIN_RESOURCE, "max_resource": epochs}
        inner = HyperbandPruner(**{**defaults, **given})
    elif name == "threshold":
        inner = ThresholdPruner(**given)
    else:
        inner = None
    if options.get("patience") is not None:
        with warnings.catch_warnings():  # experimental in Optuna since 2.8; pinned in the lock
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return PatientPruner(inner, options["patience"], options.get("min_delta", 0.0))
    return inner


def pruning_enabled(study_config: dict[str, Any]) -> bool:
    return study_config["pruner"] != "none" or "patience" in study_config["pruner_options"]


def describe(study_config: dict[str, Any]) -> dict[str, Any]:
    """What state.json and the report record about the pruner that decided."""
    return {"pruner": study_config["pruner"], "options": dict(study_config["pruner_options"])}


def recorded_decisions(
    config: dict[str, Any],
    study: optuna.Study,
    trial_id: int,
    state: dict[str, Any],
    state_path: Path,
    fence: Callable[[], None],
    log: logging.Logger,
) -> Callable[[int], bool] | None:
    """The runner's stop_after: each epoch's decision is taken once (decide), recorded in
    state.json (`pruning.decisions`), and only then returned, so a rerun after any kill reads
    back the decisions already taken. Recorded decisions are honoured even after study.pruner
    was changed; new ones follow the current config. None when nothing can stop the trial."""
    study_cfg = config["study"]
    enabled = pruning_enabled(study_cfg)
    if not enabled and not (state.get("pruning") or {}).get("decisions"):
        return None
    record = state.setdefault("pruning", {**describe(study_cfg), "decisions": {}})
    record.setdefault("pruned_at_epoch", None)
    decisions: dict[str, bool] = record["decisions"]

    def stop_after(epoch: int) -> bool:
        if str(epoch) in decisions or not enabled:
            return decisions.get(str(epoch), False)
        fence()  # never decide (nor write rung values) for a slot another process took over
        epochs = int(config["train"]["epochs"])  # hyperband's max_resource by default
        pruner = build_pruner(study_cfg["pruner"], study_cfg["pruner_options"], epochs)
        verdict = pruner is not None and decide(study, trial_id, epoch, pruner)
        decisions[str(epoch)] = verdict
        atomic_write_json(state_path, state)
        word = "stop" if verdict else "continue"
        message = f"pruner {study_cfg['pruner']} after epoch {epoch}: {word}"
        event(log, message, kind="prune_decision", epoch=epoch, stop=verdict)
        return verdict

    return stop_after


def decide(study: optuna.Study, trial_id: int, epoch: int, pruner: BasePruner) -> bool:
    """Whether the trial `trial_id` is to stop after `epoch` (its reports up to it only)."""
    trials = sorted(study._storage.get_all_trials(study._study_id), key=lambda t: t.number)
    storage = optuna.storages.InMemoryStorage()
    study_id = storage.create_new_study(list(study.directions), study.study_name)
    copy_id = None
    own: FrozenTrial | None = None
    for trial in trials:  # in number order, so the copies keep their numbers (hyperband)
        template = trial
        if trial._trial_id == trial_id:
            own = trial
            template = copy.deepcopy(trial)
            template.state = TrialState.RUNNING
            template.intermediate_values = {}
            template._system_attrs = {
                k: v for k, v in trial.system_attrs.items() if k not in _pruner_attrs(trial)
            }
        created = storage.create_new_trial(study_id, template_trial=template)
        if trial._trial_id == trial_id:
            copy_id = created
    if own is None or copy_id is None:
        raise RuntimeError(f"Optuna trial id {trial_id} is not in study {study.study_name!r}")
    replica = optuna.load_study(study_name=study.study_name, storage=storage)
    verdict = False
    for step in sorted(s for s in own.intermediate_values if s <= epoch):
        storage.set_trial_intermediate_value(copy_id, step, own.intermediate_values[step])
        verdict = pruner.prune(replica, storage.get_trial(copy_id))
    replayed = storage.get_trial(copy_id).system_attrs
    for key, value in replayed.items():  # the rung values later trials compare against
        if own.system_attrs.get(key) != value:
            study._storage.set_trial_system_attr(trial_id, key, value)
    return bool(verdict)


def _pruner_attrs(trial: FrozenTrial) -> set[str]:
    """The system attributes a pruner wrote (successive halving's rungs, also inside
    hyperband); replayed from the reports, never copied."""
    return {k for k in trial.system_attrs if k.startswith("completed_rung_")}
