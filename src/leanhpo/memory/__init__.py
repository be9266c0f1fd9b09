"""Memory service: how much memory a job may use and uses (cgroup v1/v2, the machine, a CUDA
device), the kernel's OOM-kill counter, peak RSS, the rows-per-pass arithmetic, the stop errors
and the per-attempt record. No training, no Optuna, no MLflow."""
