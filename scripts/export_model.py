"""Adapter: rule export_model -> leanhpo.study.export.export_best_model."""

from pathlib import Path

from leanhpo.study.export import export_best_model
from leanhpo.workflow import job
from leanhpo.workflow.params import from_params

with job(snakemake.log[0]):
    export_best_model(
        study_dir=Path(snakemake.input.study).parent,
        study_report_path=Path(snakemake.input.study_report),
        out_dir=Path(snakemake.output.model),
        data_dir=Path(snakemake.input.train).parent,
        config=from_params(snakemake.params),
    )
