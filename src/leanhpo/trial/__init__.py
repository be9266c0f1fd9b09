"""Trial orchestration: one trial's epoch loop, checkpoints, exactly-once metrics, report."""
