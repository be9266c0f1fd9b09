"""Adapter: rule length_report -> leanhpo.training.lengths.write_length_report."""

from pathlib import Path

from leanhpo.config import Config
from leanhpo.training.lengths import write_length_report
from leanhpo.workflow import job

with job(snakemake.log[0]):
    config = Config.from_dict({"model": snakemake.params.model})
    write_length_report(config, Path(snakemake.output.report).parent)
