# Helpers and config validation; no rules here.
import sys

from snakemake.exceptions import WorkflowError

from leanhpo.config import ConfigError, validate_config
from leanhpo.workflow import (
    announce_n_trials,
    announce_search,
    canonical,
    environment_problems,
    without_passwords,
    recover_stale_locks,
)

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
for _problem in environment_problems(config):
    raise WorkflowError(f"leanhpo: {_problem}")

STUDY = f"experiments/{config['study']['name']}"
DATA = f"{STUDY}/data"
LOGS = f"{STUDY}/logs"
N_TRIALS = config["study"]["n_trials"]
SLOTS = [f"{slot:04d}" for slot in range(N_TRIALS)]
TRIAL_REPORTS = expand(f"{STUDY}/trial_{{slot}}/report.json", slot=SLOTS)
announce_n_trials(N_TRIALS)  # for "trial i/N" progress lines only; see trial_params()
announce_search(config["study"])  # the sampler of slots not yet started; see trial_params()

# What identifies the study, and how its jobs reach its storage (the retry budget).
STUDY_IDENTITY = ("name", "seed", "storage", "metric", "storage_timeout_s", "lease_grace_s")


def study_params():
    """What identifies the study and how its jobs reach its services (URLs whose passwords are
    `${...}` references to this process's environment, see leanhpo.urls). It never changes
    while a study grows, so study.json (the create_study output every trial reads) stays put
    and finished trials stay up to date."""
    study = {k: config["study"][k] for k in STUDY_IDENTITY}
    # register_model is read by the export alone: naming a model must not rerun the study.
    tracking = {k: v for k, v in config["tracking"].items() if k != "register_model"}
    return canonical(without_passwords({"study": study, "tracking": tracking}))


def export_params():
    """study_params() and the name to register the exported MLflow model under (or None)."""
    params = study_params()
    params["tracking"]["register_model"] = config["tracking"]["register_model"]
    return params


def trial_params():
    """Everything a trial job needs. study.n_trials, study.parallel and the search strategy
    (study.sampler, n_startup_trials, enqueue) are left out on purpose and reach the jobs through
    the environment (announce_*): params are rerun triggers, and growing a study or changing how
    its next slots are sampled must not rerun finished trials. A change of
    data, model, train or search_space reruns them, and the trial job refuses it (a study's
    trials share one config). A change of retention or tracking reruns them cheaply: a finished
    trial only re-applies retention and rewrites its report."""
    sections = ("data", "model", "train", "search_space", "retention")
    params = {**study_params(), **{k: config[k] for k in sections}}
    # The evaluation section reaches trials only when per_trial_test is on (its intervals use
    # the bootstrap settings): by default the bootstrap settings leave finished trials alone;
    # turning it on reruns them cheaply (a finished trial only scores its kept checkpoint on
    # test and rewrites its report).
    if config["evaluation"]["per_trial_test"]:
        params["evaluation"] = config["evaluation"]
    return canonical(params)


def all_cores(wildcards=None):
    """Every core Snakemake was given. Without --cores (`snakemake --report report.html`, which
    runs no job) 1: the threads then do not matter, and workflow.cores would stop the parse."""
    try:
        return workflow.cores
    except WorkflowError:
        return 1


def trial_threads(wildcards):
    return 1 if config["study"]["parallel"] else all_cores()


def per_trial_test_input(wildcards):
    """evaluation.per_trial_test makes each trial score its best checkpoint on the test split,
    so the job reads it: declared, so Snakemake orders it and a cluster or storage plugin
    ships it like the other splits."""
    return f"{DATA}/test.jsonl" if config["evaluation"]["per_trial_test"] else []


def previous_trial_report(wildcards):
    """Slots run one at a time in slot order (reproducible TPE), unless study.parallel."""
    slot = int(wildcards.slot)
    if config["study"]["parallel"] or slot == 0:
        return []
    return f"{STUDY}/trial_{slot - 1:04d}/report.json"
