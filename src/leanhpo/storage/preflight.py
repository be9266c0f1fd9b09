"""The out-of-space error: what a user needs to free room and carry on (SPEC 5 "Preflight").

Raised BEFORE a checkpoint is written, so nothing half-written exists and every metric logged
so far stays. The trial resumes from its last checkpoint once there is room again.
"""

from __future__ import annotations

from typing import Any

from leanhpo.commands import current_invocation, resume_command
from leanhpo.exit_codes import ResourceStop

GiB = 1 << 30
MiB = 1 << 20


def human(size: int | float) -> str:
    for unit, scale in (("GiB", GiB), ("MiB", MiB), ("KiB", 1 << 10)):
        if abs(size) >= scale:
            return f"{size / scale:.2f} {unit}"
    return f"{int(size)} B"


class NoSpaceError(ResourceStop):
    """The next checkpoint cannot fit even after aggressive pruning."""

    kind = "no_space"

    def render(self) -> str:
        p = self.payload
        disk = p["disk"]
        lines = [
            f"leanhpo: not enough space for the next checkpoint: {p['reason']}",
            f"  disk {disk['path']}: total {human(disk['total'])}, used {human(disk['used'])}, "
            f"free {human(disk['free'])} ({disk['free_percent']:.1f}%)",
            f"  next checkpoint needs {human(p['needed_bytes'])} (a resume point; "
            f"{human(p.get('weights_only_bytes', p['needed_bytes']))} once it is not); the study's "
            "checkpoints use "
            f"{human(p['study_checkpoint_bytes'])} (retention.max_total_size = {p['max_total_size']})",
            f"  aggressive pruning already done: {', '.join(p['steps_taken']) or 'none possible'}",
            "  largest artifacts:",
            *(f"    {human(a['bytes']):>12}  {a['path']}" for a in p["largest_artifacts"]),
            f"  to fix, then rerun `{resume_command()}` (the trial resumes):",
            *(f"    - {fix}" for fix in p["fixes"]),
        ]
        return "\n".join(lines)


def fixes(
    study: str, retention: dict[str, Any], needed: int, cap_bytes: int, study_bytes: int
) -> list[str]:
    """The exact commands and config keys that free room or lower the need."""
    run = current_invocation()
    strip = (
        "strip the optimizer state of finished trials' checkpoints (a study written before "
        f"retention.weights_only): `{run.leanhpo('cleanup', '--strip', '--apply')}`"
        if retention.get("weights_only", True)
        else "keep only weights in checkpoints that will never resume: retention.weights_only: "
        "true (now false)"
    )
    return [
        "list and remove checkpoints, temporary folders and logs no trial references: "
        f"`{run.leanhpo('cleanup')}` then `{run.leanhpo('cleanup', '--apply')}`",
        strip,
        f"empty the quarantine folders after inspecting them: `rm -rf experiments/{study}/trial_*/quarantine`",
        f"keep fewer trials' checkpoints: lower retention.keep_best_trials (now {retention['keep_best_trials']})",
        f"keep fewer checkpoints per trial: retention.keep_last_n (now {retention['keep_last_n']}), "
        f"retention.keep_best_k (now {retention['keep_best_k']})",
        f"raise retention.max_total_size (now {retention['max_total_size']}; the study needs at least "
        f"{human(study_bytes + needed)} for this save, {human(cap_bytes)} allowed)",
        f"lower retention.min_free_disk_percent (now {retention['min_free_disk_percent']})",
        "free space on the disk, or move experiments/ to a larger disk and leave a symlink",
        "as a last resort, run without checkpoints: train.checkpointing: false (no resume, no test "
        "evaluation from disk)",
    ]
