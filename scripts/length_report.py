"""Adapter: rule length_report -> leanhpo.training.lengths.write_length_report."""

from pathlib import Path

from leanhpo.config import Config
from leanhpo.training.lengths import write_length_report
from leanhpo.workflow import job
from leanhpo.workflow.params import from_params

with job(snakemake.log[0]):
    config = Config.from_dict(from_params(snakemake.params))
    write_length_report(config, Path(snakemake.output.report).parent)
