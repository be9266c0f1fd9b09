rule create_study:
    output:
        study=f"{STUDY}/study.json",
    log:
        f"{LOGS}/create_study.log",
    params:
        **RULE_PARAMS["create_study"],
    conda:
        "../envs/leanhpo.yaml"
    script:
        "../scripts/create_study.py"


rule run_trial:
    input:
        study=f"{STUDY}/study.json",
        train=f"{DATA}/train.jsonl",
        validation=f"{DATA}/validation.jsonl",
        test=per_trial_test_input,
        data_report=f"{DATA}/data_report.json",
        previous=previous_trial_report,
    output:
        # Only the finished job's report is declared: checkpoints and state are resumable and
        # Snakemake would delete declared outputs of an incomplete job before rerunning it.
        report=f"{STUDY}/trial_{{slot}}/report.json",
    log:
        f"{STUDY}/trial_{{slot}}/logs/stdout.log",
    wildcard_constraints:
        slot=r"\d{4}",
    # Sequential trials may use every core Snakemake was given (it caps threads at --cores and
    # sets OMP_NUM_THREADS from it); parallel ones take one each (raise with --set-threads).
    threads: trial_threads
    # What a cluster executor asks its scheduler for (SLURM: --mem, --time, --gpus); not params,
    # so changing them never reruns finished trials. gpu_model None leaves the resource unset.
    resources:
        mem_mb=config["resources"]["mem_mb"],
        runtime=config["resources"]["runtime"],
        gpu=config["resources"]["gpu"],
        gpu_model=config["resources"]["gpu_model"],
    params:
        **RULE_PARAMS["run_trial"],
    conda:
        "../envs/leanhpo.yaml"
    script:
        "../scripts/run_trial.py"


# The preloaded worker that CPU trial jobs fork from (resources.preload, leanhpo.preload): it
# imports torch, transformers, Optuna and MLflow while the first jobs run, once per run.
onstart:
    from leanhpo.preload.driver import start_server

    start_server(workflow, config["resources"]["preload"], f"{LOGS}/preload.log")
