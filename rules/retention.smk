rule prune_study:
    input:
        study=f"{STUDY}/study.json",
        reports=TRIAL_REPORTS,
    output:
        retention=f"{STUDY}/retention.json",
    log:
        f"{LOGS}/prune_study.log",
    params:
        **RULE_PARAMS["prune_study"],
    conda:
        "../envs/leanhpo.yaml"
    script:
        "../scripts/prune_study.py"
