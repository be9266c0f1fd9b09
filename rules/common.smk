# Helpers and config validation; no rules here.
import sys

from snakemake.exceptions import WorkflowError

from leanhpo.config import ConfigError, validate_config
from leanhpo.workflow import canonical, recover_stale_locks

# A kill -9 leaves Snakemake's lock files behind; clear them only if no other instance of this
# workflow is alive (see leanhpo/workflow.py), so the resume command needs no manual --unlock.
recover_stale_locks()

try:
    _validated = validate_config(config)
except ConfigError as error:
    raise WorkflowError(f"leanhpo: {error}") from None
# Our validator (JSON Schema with defaults, like snakemake.utils.validate) also names every bad
# key at once and runs the checks a schema cannot express (metric names, search space, ratios).
config.clear()
config.update(_validated)

STUDY = f"experiments/{config['study']['name']}"
DATA = f"{STUDY}/data"
LOGS = f"{STUDY}/logs"
N_TRIALS = config["study"]["n_trials"]
SLOTS = [f"{slot:04d}" for slot in range(N_TRIALS)]
TRIAL_REPORTS = expand(f"{STUDY}/trial_{{slot}}/report.json", slot=SLOTS)


def trial_params():
    """What a finished trial's result depends on. study.n_trials, study.parallel and retention
    are left out on purpose: they change without invalidating finished trials, and params are
    rerun triggers. Trials read those from study.json (an ancient() input) instead."""
    study = {k: config["study"][k] for k in ("name", "seed", "storage", "metric")}
    sections = {k: config[k] for k in ("tracking", "data", "model", "train", "search_space")}
    return canonical({"study": study, **sections})


def previous_trial_report(wildcards):
    """Slots run one at a time in slot order (reproducible TPE), unless study.parallel."""
    slot = int(wildcards.slot)
    if config["study"]["parallel"] or slot == 0:
        return []
    return f"{STUDY}/trial_{slot - 1:04d}/report.json"
