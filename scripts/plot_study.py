"""Adapter: rule plot_study -> leanhpo.plots.plot_study."""

from pathlib import Path

from leanhpo.plots import plot_study
from leanhpo.workflow import job
from leanhpo.workflow.params import from_params

with job(snakemake.log[0]):
    plot_study(
        report_paths=[Path(p) for p in snakemake.input.reports],
        study_report=Path(snakemake.input.study_report),
        history_png=Path(snakemake.output.history),
        curves_png=Path(snakemake.output.curves),
        items={
            k: Path(snakemake.output[k]) for k in ("disk", "importances", "trials", "test", "page")
        },
        study_config=from_params(snakemake.params)["study"],
    )
