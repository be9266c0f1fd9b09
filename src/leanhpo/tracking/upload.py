"""The writes themselves, once MLflow answers: the same functions serve a live write and the
replay of a spooled one, so both go through one exactly-once check.

A metric point (key, step) is uploaded only if the run does not hold it yet. The run's history
is read once per key and then kept in a cache of steps; a live Tracker keeps its cache for the
process, a drain builds a fresh one from the server, so a drain killed after an upload but
before deleting the spool row finds the point there and skips it.
"""

from __future__ import annotations

import logging
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

LOG = logging.getLogger("leanhpo.tracking")
MAX_BATCH = 1000  # MLflow's limit of metrics per log_batch call
MAX_PARAMS = 100  # MLflow's limit of params per log_batch call

# (run id, metric key) -> steps the run holds
StepCache = dict[tuple[str, str], set[int]]


def flatten(mapping: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}; lists stay whole values."""
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _load_steps(client: MlflowClient, run_id: str, keys: set[str], cache: StepCache) -> None:
    missing = [key for key in keys if (run_id, key) not in cache]
    if not missing:
        return
    present = set(client.get_run(run_id).data.metrics)  # saves a history call per new key
    for key in missing:
        steps: set[int] = set()
        if key in present:
            steps = {int(m.step) for m in client.get_metric_history(run_id, key)}
        cache[(run_id, key)] = steps


def upload_metrics(
    client: MlflowClient, run_id: str, payloads: list[dict[str, Any]], cache: StepCache
) -> int:
    """Upload the points of metric payloads ({"step", "ts", "values"}) the run lacks, with
    their own timestamps; return how many went up."""
    _load_steps(client, run_id, {key for p in payloads for key in p["values"]}, cache)
    batch: list[Metric] = []
    taken: set[tuple[str, int]] = set()
    for payload in payloads:
        step = int(payload["step"])
        for key, value in payload["values"].items():
            if step in cache[(run_id, key)] or (key, step) in taken:
                continue
            taken.add((key, step))
            batch.append(Metric(key=key, value=float(value), timestamp=payload["ts"], step=step))
    for start in range(0, len(batch), MAX_BATCH):
        client.log_batch(run_id, metrics=batch[start : start + MAX_BATCH], synchronous=True)
    for key, step in taken:
        cache[(run_id, key)].add(step)
    return len(batch)


def upload_params(client: MlflowClient, run_id: str, params: dict[str, str]) -> None:
    """Params not yet on the run. MLflow params are immutable, so a changed value is reported
    and skipped rather than crashing a resumed trial."""
    existing = client.get_run(run_id).data.params
    fresh: list[Param] = []
    for key, text in sorted(params.items()):
        if key in existing:
            if existing[key] != text:
                LOG.warning(
                    "MLflow param %s already logged as %r; not changing it", key, existing[key]
                )
            continue
        fresh.append(Param(key, text))
    for start in range(0, len(fresh), MAX_PARAMS):
        client.log_batch(run_id, params=fresh[start : start + MAX_PARAMS], synchronous=True)


def upload_tags(client: MlflowClient, run_id: str, tags: dict[str, str]) -> None:
    if tags:
        items = [RunTag(key, value) for key, value in tags.items()]
        client.log_batch(run_id, tags=items, synchronous=True)


def upload_status(client: MlflowClient, run_id: str, status: str, ts: int) -> None:
    """RUNNING, or a terminal status with the time it really ended (not the replay time)."""
    if status == "RUNNING":
        client.update_run(run_id, status=status)
    else:
        client.set_terminated(run_id, status=status, end_time=ts)


def upload(
    client: MlflowClient,
    run_id: str,
    kind: str,
    payloads: list[dict[str, Any]],
    cache: StepCache,
) -> int:
    """Upload payloads of one kind for one run; return the metric points uploaded (0 for the
    other kinds). Tags, status and artifacts are idempotent, params skip present keys."""
    if kind == "metrics":
        return upload_metrics(client, run_id, payloads, cache)
    for payload in payloads:
        if kind == "params":
            upload_params(client, run_id, payload["params"])
        elif kind == "tags":
            upload_tags(client, run_id, payload["tags"])
        elif kind == "status":
            upload_status(client, run_id, payload["status"], payload["ts"])
        elif kind == "dict":
            client.log_dict(run_id, payload["obj"], payload["file"])
        else:
            raise ValueError(f"unknown spool entry kind {kind!r}")
    return 0
