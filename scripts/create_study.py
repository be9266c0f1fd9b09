"""Adapter: rule create_study -> leanhpo.study.create.create_study."""

from pathlib import Path

from leanhpo.study.create import create_study
from leanhpo.workflow import job
from leanhpo.workflow.params import from_params

with job(snakemake.log[0]):
    create_study(from_params(snakemake.params), Path(snakemake.output.study))
