# study.confirm: once the search is over, the top_k configurations are trained again with
# `seeds` more seeds each, and the winner is the best mean (leanhpo.study.confirm,
# docs/search.md#confirm). Off (top_k 0): none of this is in the plan.


# Which trials are confirmed: a Snakemake checkpoint, since the top_k are known only once
# every trial has finished. One plan file per top_k, so growing top_k is a new target.
checkpoint select_confirm:
    input:
        study=f"{STUDY}/study.json",
        reports=TRIAL_REPORTS,
    output:
        plan=f"{STUDY}/confirm_plan_top{{top_k}}.json",
    log:
        f"{LOGS}/select_confirm_top{{top_k}}.log",
    wildcard_constraints:
        top_k=r"[1-9]\d*",
    params:
        **RULE_PARAMS["select_confirm"],
    conda:
        "../envs/leanhpo.yaml"
    script:
        "../scripts/select_confirm.py"


# One configuration with one extra seed: a trial in all but Optuna (leanhpo.trial.confirm).
rule confirm_run:
    input:
        study=f"{STUDY}/study.json",
        train=f"{DATA}/train.jsonl",
        validation=f"{DATA}/validation.jsonl",
        data_report=f"{DATA}/data_report.json",
        trial=f"{STUDY}/trial_{{slot}}/report.json",
    output:
        # As for a trial, only the finished job's report: checkpoints and state are resumable.
        report=f"{STUDY}/confirm_trial_{{slot}}_seed_{{seed}}/report.json",
    log:
        f"{STUDY}/confirm_trial_{{slot}}_seed_{{seed}}/logs/stdout.log",
    wildcard_constraints:
        slot=r"\d{4}",
        seed=r"[1-9]\d*",
    threads: trial_threads
    resources:
        mem_mb=config["resources"]["mem_mb"],
        runtime=config["resources"]["runtime"],
        gpu=config["resources"]["gpu"],
        gpu_model=config["resources"]["gpu_model"],
    params:
        **RULE_PARAMS["confirm_run"],
    conda:
        "../envs/leanhpo.yaml"
    script:
        "../scripts/confirm_run.py"
