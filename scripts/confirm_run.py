"""Adapter: rule confirm_run -> leanhpo.trial.confirm.main, forked from the driver's preloaded
worker when it runs one (resources.preload; see leanhpo.preload), else in this process."""

from leanhpo.preload.client import cpu_job, run_job
from leanhpo.workflow.params import from_params

config = from_params(snakemake.params)
run_job(
    "leanhpo.trial.confirm:main",
    preload=cpu_job(config["train"]["device"]),
    log=snakemake.log[0],
    slot=int(snakemake.wildcards.slot),
    seed_index=int(snakemake.wildcards.seed),
    config=config,
    study_file=snakemake.input.study,
    data_report=snakemake.input.data_report,
    report=snakemake.output.report,
)
