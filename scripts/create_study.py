"""Adapter: rule create_study -> leanhpo.study.create.create_study."""

from pathlib import Path

from leanhpo.study.create import create_study
from leanhpo.workflow import job

with job(snakemake.log[0]):
    create_study(snakemake.params.config, Path(snakemake.output.study))
