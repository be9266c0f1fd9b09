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
        config=study_params(),
    threads: workflow.cores
    conda:
        "../envs/leanhpo.yaml"
    script:
        "../scripts/evaluate_study.py"


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
