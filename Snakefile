# leanhpo: an HPO study of a multi-task DSM-5 symptom model, resumable after any crash.
# Run: snakemake --cores 1   |   after a crash or kill -9: snakemake --cores 1 --rerun-incomplete
from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


# The report's landing page: the study's results, its test scores and its plots.
report: "docs/report/workflow.rst"


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/hpo.smk"
include: "rules/retention.smk"
include: "rules/confirm.smk"
include: "rules/evaluate.smk"


# On a cluster (profiles/slurm) only the trials are submitted; these short steps run where
# Snakemake runs.
localrules:
    all,
    prepare_dataset,
    length_report,
    create_study,
    select_confirm,
    prune_study,
    evaluate_study,
    export_model,
    plot_study,


rule all:
    default_target: True
    input:
        study_report=f"{STUDY}/study_report.json",
        lengths=f"{DATA}/length_report.json",
        plots=f"{STUDY}/plots/optimization_history.png",
        model=f"{STUDY}/best_model",


# The closing summary on the terminal (best trial, scores against baselines, disk, next steps);
# nothing when the run did not reach the study report. Also: python -m leanhpo summary.
onsuccess:
    from leanhpo.workflow.stops import finish_successful_run

    finish_successful_run(workflow, STUDY, config)


# A job's known stop (bad input, a service down, no space, a slot held) ends the run with
# leanhpo's exit code and message, last on the terminal, instead of Snakemake's exit 1.
onerror:
    from leanhpo.workflow.stops import finish_failed_run

    finish_failed_run(workflow)
