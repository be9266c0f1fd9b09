"""What a checkpoint holds for a trial, and how it is put back.

Groups: `model` (the state dict), `optimizer` and `rng` (pickle-free flattened state). The
JSON meta carries the scheduler, the skeletons of the flattened groups, the epoch and step,
the metric history, the ledger of checkpoints written so far, the resolved config and the
compatibility metadata, so that one checkpoint alone is enough to resume the trial.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

from leanhpo.checkpoints import LoadedCheckpoint, flatten_state, unflatten_state
from leanhpo.exit_codes import EXIT_BAD_INPUT
from leanhpo.models import architecture_signature
from leanhpo.training.setup import Network, Optimisation


class IncompatibleCheckpointError(RuntimeError):
    """A checkpoint that does not fit the current code or config; never loaded silently. Bad
    input (exit 2): a rerun without a change fails the same way."""

    exit_code = EXIT_BAD_INPUT


def capture_rng() -> dict[str, Any]:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def pack(
    network: Network, optimisation: Optimisation, meta: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(tensor groups, meta) ready for CheckpointStore.save."""
    model_tensors = {
        k: v.detach().cpu().contiguous() for k, v in network.model.state_dict().items()
    }
    optimizer_tensors, optimizer_skeleton = flatten_state(optimisation.optimizer.state_dict())
    rng_tensors, rng_skeleton = flatten_state(capture_rng())
    full_meta = {
        **meta,
        "scheduler": optimisation.scheduler.state_dict(),
        "optimizer_skeleton": optimizer_skeleton,
        "rng_skeleton": rng_skeleton,
    }
    groups = {"model": model_tensors, "optimizer": optimizer_tensors, "rng": rng_tensors}
    return groups, full_meta


def check_compatible(loaded: LoadedCheckpoint, network: Network, expected: dict[str, Any]) -> None:
    """Raise IncompatibleCheckpointError unless the checkpoint was made by this architecture."""
    stored = loaded.meta.get("compat") or {}
    where = loaded.info.path
    problems = []
    for key in ("encoder_id", "heads"):
        if stored.get(key) != expected.get(key):
            problems.append(
                f"{key}: checkpoint has {stored.get(key)!r}, the config gives {expected.get(key)!r}"
            )
    signature = architecture_signature(network.model)
    if stored.get("architecture_signature") != signature:
        problems.append("the tensor names or shapes differ from the model the config builds")
    if problems:
        raise IncompatibleCheckpointError(
            f"checkpoint {where} does not fit this trial's model:\n  - "
            + "\n  - ".join(problems)
            + "\n  It was written by another config or code version. Restore the config the trial "
            "started with, or move the trial folder away and rerun to start the trial afresh "
            "(its metrics in MLflow stay as they are)."
        )


def restore(loaded: LoadedCheckpoint, network: Network, optimisation: Optimisation | None) -> None:
    """Load weights (strict) and, when training goes on, optimizer, scheduler and RNG."""
    device = network.device
    state = {k: v.to(device) for k, v in loaded.groups["model"].items()}
    network.model.load_state_dict(state, strict=True)
    if optimisation is None:
        return
    optimizer_state = unflatten_state(loaded.groups["optimizer"], loaded.meta["optimizer_skeleton"])
    optimisation.optimizer.load_state_dict(optimizer_state)
    optimisation.scheduler.load_state_dict(loaded.meta["scheduler"])
    restore_rng(unflatten_state(loaded.groups["rng"], loaded.meta["rng_skeleton"]))
