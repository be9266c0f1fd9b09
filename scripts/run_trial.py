"""Adapter: rule run_trial -> leanhpo.trial.job.run_trial_job."""

from pathlib import Path

from leanhpo.trial.job import run_trial_job
from leanhpo.workflow import job

with job(snakemake.log[0]):
    run_trial_job(
        slot=int(snakemake.wildcards.slot),
        config=snakemake.params.config,
        study_file=Path(snakemake.input.study),
        data_dir=Path(snakemake.input.data_report).parent,
        report_path=Path(snakemake.output.report),
    )
