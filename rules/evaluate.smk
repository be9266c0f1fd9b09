rule evaluate_study:
    input:
        study=f"{STUDY}/study.json",
        retention=f"{STUDY}/retention.json",
        reports=TRIAL_REPORTS,
        test=f"{DATA}/test.jsonl",
    output:
        report=report(
            f"{STUDY}/study_report.json",
            caption="../docs/report/study_report.rst",
            category="Study",
        ),
    log:
        f"{LOGS}/evaluate_study.log",
    params:
        # The bootstrap settings are a rerun trigger: new intervals, the same model.
        config={**study_params(), "evaluation": canonical(config["evaluation"])},
    threads: workflow.cores
    conda:
        "../envs/leanhpo.yaml"
    script:
        "../scripts/evaluate_study.py"


rule export_model:
    input:
        study=f"{STUDY}/study.json",
        study_report=f"{STUDY}/study_report.json",
        # read only when the best trial kept no checkpoint and is retrained in memory
        train=f"{DATA}/train.jsonl",
    output:
        model=directory(f"{STUDY}/best_model"),
    log:
        f"{LOGS}/export_model.log",
    threads: workflow.cores
    conda:
        "../envs/leanhpo.yaml"
    script:
        "../scripts/export_model.py"


rule plot_study:
    input:
        reports=TRIAL_REPORTS,
        study_report=f"{STUDY}/study_report.json",
    output:
        history=report(
            f"{STUDY}/plots/optimization_history.png",
            caption="../docs/report/optimization_history.rst",
            category="Study",
        ),
        curves=report(
            f"{STUDY}/plots/learning_curves.png",
            caption="../docs/report/learning_curves.rst",
            category="Trials",
        ),
    log:
        f"{LOGS}/plot_study.log",
    conda:
        "../envs/leanhpo.yaml"
    script:
        "../scripts/plot_study.py"
