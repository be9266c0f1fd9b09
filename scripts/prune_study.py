"""Adapter: rule prune_study -> leanhpo.study.prune.prune_study."""

from pathlib import Path

from leanhpo.study.prune import prune_study
from leanhpo.workflow import job
from leanhpo.workflow.params import from_params

with job(snakemake.log[0]):
    prune_study(
        Path(snakemake.input.study),
        Path(snakemake.output.retention),
        from_params(snakemake.params)["retention"],
    )
