"""Adapter: checkpoint select_confirm -> leanhpo.study.confirm.plan_confirm."""

from pathlib import Path

from leanhpo.study.confirm import plan_confirm
from leanhpo.workflow import job
from leanhpo.workflow.params import from_params

with job(snakemake.log[0]):
    plan_confirm(
        study_dir=Path(snakemake.input.study).parent,
        report_paths=[Path(p) for p in snakemake.input.reports],
        top_k=int(snakemake.wildcards.top_k),
        metric=from_params(snakemake.params)["study"]["metric"],
        output=Path(snakemake.output.plan),
    )
