"""The export as an MLflow pyfunc model: `mlflow.pyfunc.load_model(uri).predict(df)` gives what
`predict_texts` (and so `python -m leanhpo predict`) gives.

The model is saved "from code" (MLflow's models-from-code): MLflow copies `mlflow_model.py`, a
file of two lines that names `ExportPyfunc`, and runs it at load time, so loading unpickles
nothing of ours; the weights travel as the export folder itself (artifact `export`), verified
against its SHA-256 manifest by `load_exported` as any export is. The loading environment needs
leanhpo installed (the model's requirements pin the libraries it runs on; leanhpo itself is not
on a package index).

Input: a pandas DataFrame with a `text` column and an optional `post_id` column, or a list of
strings. Output: a list of dicts, one per post, in input order, exactly `predict_texts`'s rows:
{post_id, symptoms: {NAME: {probability, present}}, evidence: {NAME: null | {text, start, end}}}.
The signature declares both (MLflow object types; evidence entries optional, as they may be null),
with an input example of two short posts. MLflow enforces the input side, so through
`mlflow.pyfunc.load_model` the input is a DataFrame; a bare list of strings is accepted by
`ExportPyfunc.predict` itself (`loaded.unwrap_python_model().predict(None, texts)`).
"""

from __future__ import annotations

import hashlib
import json
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import pandas as pd
from mlflow.models import Model, ModelSignature
from mlflow.pyfunc import PythonModel
from mlflow.types import ColSpec, DataType, Schema
from mlflow.types.schema import Object, Property

from leanhpo.export.bundle import CARD_NAME, INFO_NAME, load_exported
from leanhpo.export.errors import ExportError
from leanhpo.export.folder import read_manifest
from leanhpo.export.predict import predict_texts
from leanhpo.metric_names import SYMPTOMS

ARTIFACT_KEY = "export"  # the export folder inside the MLflow model (artifacts/export)
MODEL_CODE = Path(__file__).with_name("mlflow_model.py")
INPUT_EXAMPLE = pd.DataFrame(
    {
        "post_id": ["example-1", "example-2"],
        "text": [
            "I can't sleep at night and I feel tired all day.",
            "Nothing is fun anymore. I stopped seeing my friends.",
        ],
    }
)
# What the model runs on, pinned to the versions that saved it (leanhpo itself must be
# installed beside them; see docs/using-the-model.md).
REQUIREMENTS = ("mlflow", "torch", "transformers", "tokenizers", "safetensors", "pandas", "numpy")
# Parts of leanhpo_model.json that say when, not what: left out of the model fingerprint.
WHEN_KEYS = ("exported_at", "study_report_generated_at")


class ExportPyfunc(PythonModel):
    """The pyfunc wrapper: load_exported at load time, predict_texts per call."""

    def load_context(self, context: Any) -> None:
        self.model = load_exported(context.artifacts[ARTIFACT_KEY], "auto")

    # No type hints: MLflow would read them as a second, conflicting signature.
    def predict(self, context, model_input, params=None):
        texts, post_ids = input_texts(model_input)
        return predict_texts(self.model, texts, post_ids)


def input_texts(model_input: Any) -> tuple[list[str], list[str] | None]:
    """(texts, post ids or None) from a DataFrame with `text` (and `post_id`) or a list of str."""
    if isinstance(model_input, pd.DataFrame):
        if "text" not in model_input.columns:
            raise ExportError(
                f"the input has columns {list(model_input.columns)}; it needs a 'text' column"
            )
        ids = None
        if "post_id" in model_input.columns and model_input["post_id"].notna().all():
            ids = [str(value) for value in model_input["post_id"]]
        return list(model_input["text"]), ids
    if isinstance(model_input, list | tuple) and all(isinstance(t, str) for t in model_input):
        return list(model_input), None
    raise ExportError(
        f"expected a DataFrame with a 'text' column or a list of strings, got "
        f"{type(model_input).__name__}"
    )


def signature() -> ModelSignature:
    """`text` (required) and `post_id` (optional) strings in; the prediction rows out (evidence
    of a symptom is null when the model points at no sentence, hence optional)."""
    inputs = Schema(
        [
            ColSpec(DataType.string, "text"),
            ColSpec(DataType.string, "post_id", required=False),
        ]
    )
    decision = Object(
        [Property("probability", DataType.double), Property("present", DataType.boolean)]
    )
    span = Object(
        [
            Property("text", DataType.string),
            Property("start", DataType.long),
            Property("end", DataType.long),
        ]
    )
    outputs = Schema(
        [
            ColSpec(DataType.string, "post_id"),
            ColSpec(Object([Property(name, decision) for name in SYMPTOMS]), "symptoms"),
            ColSpec(
                Object([Property(name, span, required=False) for name in SYMPTOMS]), "evidence"
            ),
        ]
    )
    return ModelSignature(inputs=inputs, outputs=outputs)


def model_fingerprint(export_dir: Path) -> str:
    """SHA-256 of what decides the predictions: every file of the export's manifest but the
    model card, and leanhpo_model.json without its timestamps. A re-export of the same model
    has the same fingerprint (its manifest's own hash changes with every export)."""
    files = read_manifest(export_dir)
    info = json.loads((export_dir / INFO_NAME).read_bytes())
    stable = {
        "files": {k: v["sha256"] for k, v in files.items() if k not in (INFO_NAME, CARD_NAME)},
        "info": {k: v for k, v in info.items() if k not in WHEN_KEYS},
    }
    return hashlib.sha256(json.dumps(stable, sort_keys=True).encode()).hexdigest()


def save_pyfunc(export_dir: Path, out_dir: Path, mlflow_model: Model | None = None) -> Path:
    """Write the MLflow model of an export into `out_dir` (which must not exist yet). MLflow
    loads it once from there, to check the input example against the signature. `mlflow_model`
    carries what its MLmodel file records of where it is logged (run id, logged model id)."""
    mlflow.pyfunc.save_model(
        path=str(out_dir),
        mlflow_model=mlflow_model,
        python_model=str(MODEL_CODE),
        artifacts={ARTIFACT_KEY: str(export_dir)},
        signature=signature(),
        input_example=INPUT_EXAMPLE,
        pip_requirements=requirements(),
        metadata={"leanhpo_model_fingerprint": model_fingerprint(export_dir)},
    )
    return out_dir


def requirements() -> list[str]:
    pinned = []
    for name in REQUIREMENTS:
        try:
            pinned.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            pinned.append(name)
    return pinned
