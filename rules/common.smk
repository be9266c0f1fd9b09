# Helpers and config checks; no rules here. Everything that can be checked from the config is
# checked while the Snakefile is parsed, before Snakemake schedules a job and so before it
# deletes the outputs of a job it means to rerun: the config's form, the data and model it
# names, and whether it would redo finished work (leanhpo.workflow.guard). A refusal exits
# with leanhpo's code (2: bad input) and leaves every file as it was.
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError

from leanhpo.config import ConfigError, validate_config
from leanhpo.config.inputs import input_problems
from leanhpo.workflow import (
    announce_n_trials,
    announce_search,
    canonical,
    environment_problems,
    without_passwords,
    recover_stale_locks,
)
from leanhpo.workflow.guard import rerun_changes, rerun_refusal
from leanhpo.workflow.params import announce_runtime, as_params
from leanhpo.workflow.stops import announce_run, dry_run, refuse

try:
    _validated = validate_config(config)
except ConfigError as error:
    refuse(f"leanhpo: {error}", workflow)
# Our validator (JSON Schema with defaults, like snakemake.utils.validate) also names every bad
# key at once and runs the checks a schema cannot express (metric names, search space, ratios).
config.clear()
config.update(_validated)
_problems = input_problems(config) + environment_problems(config)
if _problems and dry_run():
    # A plan runs nothing: say what a real run would refuse, and show the plan.
    print("leanhpo: a real run would stop here:\n" + "\n".join(_problems), file=sys.stderr)
elif _problems:
    refuse("leanhpo: " + "\n".join(_problems), workflow)

STUDY = f"experiments/{config['study']['name']}"
DATA = f"{STUDY}/data"
LOGS = f"{STUDY}/logs"
N_TRIALS = config["study"]["n_trials"]
SLOTS = [f"{slot:04d}" for slot in range(N_TRIALS)]
TRIAL_REPORTS = expand(f"{STUDY}/trial_{{slot}}/report.json", slot=SLOTS)
announce_n_trials(N_TRIALS)  # for "trial i of N" progress lines only; see trial_params()
announce_search(config["study"])  # the sampler of slots not yet started; see trial_params()
announce_runtime(config)  # retry budgets and rows per pass: never rerun triggers
announce_run(workflow)  # so the run's end can show a job's known stop (leanhpo.workflow.stops)

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


CONFIRM = config["study"]["confirm"]


def confirm_inputs(wildcards):
    """study.confirm's plan (a checkpoint: the top_k are known once every trial finished) and
    the report of every run it asks for; nothing when confirm is off. study.confirm is never a
    rerun trigger: a larger top_k is another plan file, more seeds are more targets, and only
    what is new trains (finished runs are up to date)."""
    if not CONFIRM["top_k"]:
        return {}
    from leanhpo.fsutil import read_json
    from leanhpo.study.confirm import confirm_targets

    plan = checkpoints.select_confirm.get(top_k=CONFIRM["top_k"]).output.plan
    return {"plan": plan, "confirm": confirm_targets(STUDY, read_json(plan), CONFIRM["seeds"])}


def length_params():
    """Only what the tokenisation depends on: a change of heads or training leaves it be."""
    keys = ("id", "revision", "max_length", "long_posts", "window_stride", "max_windows")
    return {"model": {k: config["model"][k] for k in (*keys, "input_format")}}


# Each rule's params, one per config key (leanhpo.workflow.params): Snakemake's rerun reasons
# then name the changed keys, and the guard below compares them with the finished outputs'.
RULE_PARAMS = {
    name: as_params(canonical(sections))
    for name, sections in {
        "prepare_dataset": {"data": config["data"]},
        "length_report": length_params(),
        "create_study": study_params(),
        "run_trial": trial_params(),
        # a study.confirm run trains as a trial does: the same rerun triggers
        "confirm_run": trial_params(),
        "select_confirm": {"study": study_params()["study"]},
        "prune_study": {"retention": config["retention"]},
        "evaluate_study": {**study_params(), "evaluation": config["evaluation"]},
        "export_model": export_params(),
        "plot_study": {"study": study_params()["study"]},
    }.items()
}
_refusal = rerun_refusal(
    config["study"]["name"],
    rerun_changes(STUDY, RULE_PARAMS, Path.cwd()),
    config["rerun_finished"],
    N_TRIALS,
)
if _refusal:
    refuse(_refusal, workflow)

# A kill -9 leaves Snakemake's lock files behind; clear them only if no other instance of this
# workflow is alive (see leanhpo/workflow), so the resume command needs no manual --unlock.
recover_stale_locks()
