"""Adapter: rule prepare_dataset -> leanhpo.data.prepare_dataset."""

from pathlib import Path

from leanhpo.data import prepare_dataset
from leanhpo.workflow import job
from leanhpo.workflow.params import from_params

with job(snakemake.log[0]):
    prepare_dataset(from_params(snakemake.params)["data"], Path(snakemake.output.report).parent)
