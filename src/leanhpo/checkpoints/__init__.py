"""Checkpoint storage: atomic verified folders, pickle-free state, retention planning.

This package knows nothing of MLflow, Optuna or the model: it stores named groups of
tensors plus a JSON ``meta`` dict and decides which epochs to keep.
"""

from leanhpo.checkpoints.manifest import FULL, WEIGHTS_ONLY
from leanhpo.checkpoints.retention import RetentionPlan, RetentionPolicy, plan_retention
from leanhpo.checkpoints.serialize import flatten_state, unflatten_state
from leanhpo.checkpoints.store import (
    CHECKPOINT_FORMAT,
    WEIGHT_GROUPS,
    CheckpointInfo,
    CheckpointStore,
    CorruptCheckpointError,
    LoadedCheckpoint,
    checkpoint_info,
    epoch_id,
)

__all__ = [
    "CHECKPOINT_FORMAT",
    "FULL",
    "WEIGHTS_ONLY",
    "WEIGHT_GROUPS",
    "CheckpointInfo",
    "CheckpointStore",
    "CorruptCheckpointError",
    "LoadedCheckpoint",
    "RetentionPlan",
    "RetentionPolicy",
    "checkpoint_info",
    "epoch_id",
    "flatten_state",
    "plan_retention",
    "unflatten_state",
]
