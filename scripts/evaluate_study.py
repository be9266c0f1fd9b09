"""Adapter: rule evaluate_study -> leanhpo.study.evaluate.evaluate_study."""

from pathlib import Path

from leanhpo.study.evaluate import evaluate_study
from leanhpo.workflow import job
from leanhpo.workflow.params import from_params

with job(snakemake.log[0]):
    evaluate_study(
        study_file=Path(snakemake.input.study),
        data_dir=Path(snakemake.input.test).parent,
        report_paths=[Path(p) for p in snakemake.input.reports],
        output=Path(snakemake.output.report),
        config=from_params(snakemake.params),
        # study.confirm (rules/confirm.smk): absent when off
        plan_path=Path(snakemake.input.plan) if hasattr(snakemake.input, "plan") else None,
        confirm_paths=[Path(p) for p in snakemake.input.get("confirm", [])],
    )
