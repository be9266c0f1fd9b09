"""The precision an export predicts in: the one its test scores were computed with.

bf16 and fp32 round differently, and a decision near its threshold, or an evidence span near
the null margin, can flip between them: measured on 80 posts, 3 of 720 symptom decisions and 9
of 720 spans (docs/using-the-model.md). So `predict` and the pyfunc model compute in the
precision the export records (`compute.precision` of leanhpo_model.json, from the study
report), on any device that has it: bf16 autocast runs on every CPU. They warn, naming both,
when they cannot (a GPU without bf16), when the caller asks for another precision, or when the
device type differs from the one that scored the model (other kernels: close, not identical).
"""

from __future__ import annotations

import warnings
from typing import Any

from leanhpo.training.compute import PRECISIONS, bf16_supported, compute_precision

PRECISION_CHOICES = ("auto", *PRECISIONS)


class PrecisionWarning(UserWarning):
    """Predictions are computed otherwise than the scores the export records."""


def recorded_compute(info: dict[str, Any]) -> dict[str, Any] | None:
    """The export's `compute` record; None for exports made before it was recorded."""
    found = info.get("compute")
    return found if isinstance(found, dict) and found.get("precision") in PRECISIONS else None


def choose_precision(
    info: dict[str, Any], amp: bool | str, device_type: str, requested: str = "auto"
) -> str:
    """The precision to predict in on `device_type`: `requested`, or with auto the recorded one
    where the device supports it. Warns (PrecisionWarning) when that is not how the recorded
    scores were computed. An export without a record predicts as its train.amp says on this
    device, as leanhpo did before it recorded one."""
    if requested not in PRECISION_CHOICES:
        raise ValueError(
            f"unknown precision {requested!r}; use one of {', '.join(PRECISION_CHOICES)}"
        )
    recorded = recorded_compute(info)
    if recorded is None:
        return requested if requested != "auto" else compute_precision(amp, device_type)
    wanted = recorded["precision"]
    reasons = []
    if requested != "auto":
        chosen = requested
        if chosen != wanted:
            reasons.append(f"{chosen} was asked for")
    elif wanted == "bf16" and not bf16_supported(device_type):
        chosen = "fp32"
        reasons.append(f"this {device_type} device has no bf16")
    else:
        chosen = wanted
    if device_type != recorded["device"]:
        reasons.append(f"other {device_type} kernels than the {recorded['device']} ones")
    if reasons:
        warnings.warn(
            f"this model's test scores were computed on {recorded['device']} in {wanted}; "
            f"predicting on {device_type} in {chosen} ({'; '.join(reasons)}): predictions may "
            "differ slightly from those the study report scored",
            PrecisionWarning,
            stacklevel=3,
        )
    return chosen
