"""Adapter: rule prepare_dataset -> leanhpo.data.prepare_dataset."""

from pathlib import Path

from leanhpo.data import prepare_dataset
from leanhpo.workflow import job, to_terminal
from leanhpo.workflow.params import from_params

with job(snakemake.log[0]):
    config = from_params(snakemake.params)
    # A symptom short of data.split.min_positives is named on the terminal, not only in the log.
    prepare_dataset(config["data"], Path(snakemake.output.report).parent, notify=to_terminal)
