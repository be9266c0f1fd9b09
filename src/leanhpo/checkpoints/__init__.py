"""Checkpoint storage: atomic verified folders, pickle-free state, retention planning.

This package knows nothing of MLflow, Optuna or the model: it stores named groups of
tensors plus a JSON ``meta`` dict and decides which epochs to keep.
"""

from leanhpo.checkpoints.retention import RetentionPlan, RetentionPolicy, plan_retention
from leanhpo.checkpoints.serialize import flatten_state, unflatten_state
from leanhpo.checkpoints.store import (
    CHECKPOINT_FORMAT,
    CheckpointInfo,
    CheckpointStore,
    CorruptCheckpointError,
    LoadedCheckpoint,
    epoch_id,
)

__all__ = [
    "CHECKPOINT_FORMAT",
    "CheckpointInfo",
    "CheckpointStore",
    "CorruptCheckpointError",
    "LoadedCheckpoint",
    "RetentionPlan",
    "RetentionPolicy",
    "epoch_id",
    "flatten_state",
    "plan_retention",
    "unflatten_state",
]
