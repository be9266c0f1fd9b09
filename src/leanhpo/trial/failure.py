"""A trial that fails through its own settings (SPEC 4): what its `failure` record says.

Every failure has a `reason` code (`non_finite_loss`, `out_of_memory`, `nondeterministic_kernel`)
and a `message`; a failure for memory carries the figures under `memory`. The record goes to
state.json, the report, the Optuna trial (user attr `failure`) and the MLflow run (tags
`leanhpo.failure`, `leanhpo.failure_message`).
"""

from __future__ import annotations

from typing import Any

import torch

from leanhpo.memory.budget import OUT_OF_MEMORY, OutOfMemoryStop
from leanhpo.storage.preflight import human
from leanhpo.training.compute import NondeterministicKernelError
from leanhpo.training.loop import NonFiniteLossError

# A configuration that cannot train: recorded as a failed trial, and the study goes on.
TRIAL_FAILURES = (
    NonFiniteLossError,
    OutOfMemoryStop,
    torch.cuda.OutOfMemoryError,
    NondeterministicKernelError,
)
NON_FINITE_LOSS = "non_finite_loss"
NONDETERMINISTIC_KERNEL = "nondeterministic_kernel"


def failure_of(error: BaseException) -> dict[str, Any]:
    if isinstance(error, OutOfMemoryStop):
        return error.failure()
    if isinstance(error, torch.cuda.OutOfMemoryError):
        return {"reason": OUT_OF_MEMORY, "message": f"CUDA out of memory: {error}", "memory": None}
    if isinstance(error, NondeterministicKernelError):
        return {"reason": NONDETERMINISTIC_KERNEL, "message": str(error)}
    return {"reason": NON_FINITE_LOSS, "message": str(error)}


def killed_for_memory(verdict: dict[str, Any], fixes: list[str]) -> dict[str, Any]:
    """The failure of a trial the kernel's OOM killer ended twice at the same epoch and step
    (memory.attempts.AttemptLog.killed_for_memory): a third try would meet the same batch."""
    message = (
        f"out of memory: the kernel killed this trial {verdict['kills']} times at epoch "
        f"{verdict['epoch']}, step {verdict['step']} ({verdict['rows']} rows in that pass; each "
        f"time {', '.join(verdict['evidence'])}; limit {human(verdict['limit_bytes'])}, "
        f"{verdict['limit_source']}). The seeded batch order meets the same batch on every "
        "rerun, so the trial is recorded as failed instead of killed again. To fix: "
        + "; ".join(fixes)
    )
    return {"reason": OUT_OF_MEMORY, "message": message, "memory": {**verdict, "fixes": fixes}}
