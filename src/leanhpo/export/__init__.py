"""Export and predict: a verified, pickle-free folder of the study's best model, and inference
with it through the same encode + evaluate code as the study's test evaluation.

`leanhpo.study.export.export_best_model` picks the model and calls `write_export`; the CLI's
`predict` and any wrapper (an MLflow pyfunc) call `load_exported` then `predict_texts`.

Names are imported on first use (PEP 562), so that reading and checking an input file does not
wait for torch and transformers to load: bad input fails in a fraction of a second.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from leanhpo.export.errors import ExportError

if TYPE_CHECKING:
    from leanhpo.export.bundle import (
        CARD_NAME,
        HEADS_NAME,
        INFO_NAME,
        ExportedModel,
        load_exported,
        write_export,
    )
    from leanhpo.export.card import model_card
    from leanhpo.export.folder import EXPORT_FORMAT, MANIFEST_NAME, verify_folder
    from leanhpo.export.formats import InputPosts, read_posts, write_predictions
    from leanhpo.export.predict import iter_predictions, predict_texts, unlabelled_posts

_MODULES = {
    "leanhpo.export.bundle": (
        "CARD_NAME",
        "HEADS_NAME",
        "INFO_NAME",
        "ExportedModel",
        "load_exported",
        "write_export",
    ),
    "leanhpo.export.card": ("model_card",),
    "leanhpo.export.folder": ("EXPORT_FORMAT", "MANIFEST_NAME", "verify_folder"),
    "leanhpo.export.formats": ("InputPosts", "read_posts", "write_predictions"),
    "leanhpo.export.predict": ("iter_predictions", "predict_texts", "unlabelled_posts"),
}
_HOME = {name: module for module, names in _MODULES.items() for name in names}

__all__ = [
    "CARD_NAME",
    "EXPORT_FORMAT",
    "HEADS_NAME",
    "INFO_NAME",
    "MANIFEST_NAME",
    "ExportError",
    "ExportedModel",
    "InputPosts",
    "iter_predictions",
    "load_exported",
    "model_card",
    "predict_texts",
    "read_posts",
    "unlabelled_posts",
    "verify_folder",
    "write_export",
    "write_predictions",
]


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_HOME[name]), name)
