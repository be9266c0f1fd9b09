"""Study orchestration: create/continue a study, slot <-> Optuna trial, study-wide retention,
the final test evaluation."""
