"""leanhpo: long hyperparameter-optimisation studies on a small disk."""

import os

__version__ = "0.1.0"

# MLflow would otherwise try to reach its telemetry host on every import.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")
