rule evaluate_study:
    input:
        # with study.confirm: its plan and runs (`plan`, `confirm`; rules/confirm.smk)
        unpack(confirm_inputs),
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
        **RULE_PARAMS["evaluate_study"],
    threads: all_cores
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
    params:
        # Where the MLflow model goes (the parent run) and its registered name, if any.
        **RULE_PARAMS["export_model"],
    threads: all_cores
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
        disk=report(
            f"{STUDY}/plots/disk_use.png",
            caption="../docs/report/disk_use.rst",
            category="Study",
        ),
        importances=report(
            f"{STUDY}/plots/param_importances.png",
            caption="../docs/report/param_importances.rst",
            category="Study",
        ),
        trials=report(
            f"{STUDY}/plots/trials.csv",
            caption="../docs/report/trials.rst",
            category="Trials",
        ),
        test=report(
            f"{STUDY}/plots/test_results.csv",
            caption="../docs/report/test_results.rst",
            category="Study",
        ),
        # The report's landing page (docs/report/workflow.rst) shows this fragment inline.
        page=report(
            f"{STUDY}/plots/study_results.html",
            caption="../docs/report/study_results.rst",
            category="Study",
        ),
    log:
        f"{LOGS}/plot_study.log",
    params:
        # Where the importances read the Optuna study from; it never changes while a study grows.
        **RULE_PARAMS["plot_study"],
    conda:
        "../envs/leanhpo.yaml"
    script:
        "../scripts/plot_study.py"
