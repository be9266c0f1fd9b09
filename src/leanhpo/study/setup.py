"""Create or continue a study, and map trial slots to Optuna trials.

A slot is the unit Snakemake schedules (`trial_{NNNN}`). Its Optuna trial is created in ONE
storage transaction together with the slot user attr, so a kill can never leave a trial that no
slot owns; a rerun finds the slot's trial again by that attr and re-attaches to it.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from functools import partial
from typing import Any

import optuna
import sqlalchemy.engine
import sqlalchemy.exc
from optuna.trial import FrozenTrial, TrialState

from leanhpo.config.strategy import grid_points
from leanhpo.dblock import database_lock
from leanhpo.fsutil import create_sqlite_atomically
from leanhpo.logs import mask_secrets
from leanhpo.paths import trial_label
from leanhpo.study.deadline import WatchedPool, postgres_connect_args, sqlite_connect_args
from leanhpo.study.lease import SlotLease
from leanhpo.study.retry import RetryingStorage, StorageRetrier
from leanhpo.study.samplers import SLOT_ATTR, sampler_for
from leanhpo.urls import expand_env_references

TRIAL_UUID_ATTR = "leanhpo.trial_uuid"
STUDY_UUID_ATTR = "leanhpo.study_uuid"
CREATED_AT_ATTR = "leanhpo.created_at"
OWNER_ATTR = "leanhpo.trained_by"  # host, pid, process start, working folder
STUDY_LEASE_SLOT = -1  # the lease that serialises study-wide set-up across drivers
STUDY_LOCK_NAME = "study:{name}"  # the cold-start lock (study_lock), one per study name
DIRECTION = optuna.study.StudyDirection.MAXIMIZE
FINISHED = (TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED)
DEFAULT_STORAGE_TIMEOUT_S = 600.0  # study.storage_timeout_s's default


def engine_kwargs_for(url: str, timeout_s: float = DEFAULT_STORAGE_TIMEOUT_S) -> dict[str, Any]:
    """SQLAlchemy engine settings that give every call a deadline derived from `timeout_s`
    (study.storage_timeout_s; see study/deadline.py)."""
    # pre_ping: after a server restart the pooled connections are dead; test each one on
    # checkout and replace it, instead of failing the first call after every outage.
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    parsed = sqlalchemy.engine.make_url(url)
    if url.startswith("postgresql"):
        kwargs["connect_args"] = postgres_connect_args(timeout_s, parsed.query)
        kwargs["poolclass"] = WatchedPool  # the watchdog finds a stuck call's connection
    elif url.startswith("sqlite"):
        kwargs["connect_args"] = sqlite_connect_args(timeout_s)
        if parsed.database not in (None, "", ":memory:"):
            kwargs["poolclass"] = WatchedPool  # a file database (in memory needs one connection)
    return kwargs


def _create_optuna_tables(url: str) -> None:
    optuna.storages.RDBStorage(url).engine.dispose()


def _rdb_storage(live: str, timeout_s: float, attempts: int = 5) -> optuna.storages.RDBStorage:
    """Optuna's RDBStorage, whose first use creates its tables. Several drivers starting on a
    fresh database race to create them (CREATE TYPE/TABLE is not idempotent on PostgreSQL);
    the losers see the winner's objects as duplicates, and trying again finds them made."""
    for attempt in range(1, attempts + 1):
        try:
            return optuna.storages.RDBStorage(live, engine_kwargs_for(live, timeout_s))
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError) as error:
            text = str(error)
            if attempt == attempts or not ("already exists" in text or "duplicate key" in text):
                raise
            time.sleep(0.2 * attempt)
    raise AssertionError("unreachable")


def storage_for(url: str, timeout_s: float = DEFAULT_STORAGE_TIMEOUT_S) -> RetryingStorage:
    """The Optuna storage at `url`, every call retried on transient database errors for at most
    `timeout_s` (study.storage_timeout_s), then StorageUnavailableError (exit 69). A
    `${NAME}` in `url` (a password the Snakefile moved out of the params) is filled in here."""
    live = expand_env_references(url, "study.storage")
    create_sqlite_atomically(live, _create_optuna_tables)  # folder included
    retrier = StorageRetrier(url, timeout_s)
    rdb = retrier.call("connect", lambda _attempt: _rdb_storage(live, timeout_s))
    # The cache Optuna itself puts over an RDBStorage (see retry.py for why it sits inside).
    return RetryingStorage(optuna.storages._CachedStorage(rdb), retrier, TRIAL_UUID_ATTR)


def sampler_from_config(config: dict[str, Any]) -> optuna.samplers.BaseSampler:
    """study.sampler with its options (see study/samplers.py); the grid is built from the
    search space, its points taken from the first slot after the enqueued ones."""
    study = config["study"]
    name = study["sampler"]
    return sampler_for(
        study["seed"],
        name,
        n_startup_trials=study["n_startup_trials"],
        parallel=study["parallel"],
        grid=grid_points(config) if name == "grid" else (),
        grid_offset=len(study["enqueue"]),
    )


def open_study(
    name: str,
    storage_url: str,
    seed: int,
    *,
    timeout_s: float = DEFAULT_STORAGE_TIMEOUT_S,
    sampler: optuna.samplers.BaseSampler | None = None,
) -> optuna.Study:
    """The study, drawing with `sampler` (default: TPE seeded by `seed`; a trial job passes
    sampler_from_config)."""
    try:
        study = optuna.load_study(
            study_name=name,
            storage=storage_for(storage_url, timeout_s),
            sampler=sampler or sampler_for(seed),
        )
    except KeyError as error:
        raise RuntimeError(
            f"Optuna study {name!r} does not exist in {mask_secrets(storage_url)}; run the create_study "
            "step first (snakemake runs it for you)"
        ) from error
    return study


@contextmanager
def study_lock(
    name: str, storage_url: str, timeout_s: float = DEFAULT_STORAGE_TIMEOUT_S
) -> Iterator[None]:
    """Study `name`'s cold-start lock, in its own database (see leanhpo/dblock.py): every
    driver on every host that creates the study, or records what it was started with, does so
    one at a time, and each finds what the first one made. Waits at most `timeout_s`
    (study.storage_timeout_s); a database that cannot be reached is retried as any call is."""
    live = expand_env_references(storage_url, "study.storage")
    retrier = StorageRetrier(storage_url, timeout_s)
    with ExitStack() as stack:
        lock = partial(database_lock, live, STUDY_LOCK_NAME.format(name=name), timeout_s)
        retrier.call(
            "the study lock",
            lambda _attempt: stack.enter_context(lock(engine_kwargs_for(live, timeout_s))),
        )
        yield


def create_or_load_study(
    name: str, storage_url: str, *, timeout_s: float = DEFAULT_STORAGE_TIMEOUT_S
) -> optuna.Study:
    """The study, its UUID and creation time: made by the first driver, found by the others,
    under the study lock (the attrs are checked, then set, so never without it)."""
    with study_lock(name, storage_url, timeout_s):
        study = optuna.create_study(
            study_name=name,
            storage=storage_for(storage_url, timeout_s),
            direction=DIRECTION,
            load_if_exists=True,
        )
        if study.direction != DIRECTION:
            raise RuntimeError(
                f"Optuna study {name!r} in {mask_secrets(storage_url)} is not a maximising "
                "study; leanhpo always maximises study.metric, so choose another study.name"
            )
        if STUDY_UUID_ATTR not in study.user_attrs:
            study.set_user_attr(STUDY_UUID_ATTR, str(uuid.uuid4()))
            study.set_user_attr(CREATED_AT_ATTR, datetime.now(UTC).isoformat())
    return study


def slot_lease(
    study: optuna.Study, slot: int, grace_s: float, log: logging.Logger | None = None
) -> SlotLease:
    """The lease that makes this process the slot's only trainer (see study/lease.py), in the
    study's own database, through the same connection pool and retry policy as Optuna's calls."""
    storage = study._storage
    if not isinstance(storage, RetryingStorage):
        raise TypeError("slot_lease needs a study opened with open_study()")
    engine = storage.inner._backend.engine  # type: ignore[attr-defined]  # the cached RDBStorage
    return SlotLease(engine, storage.retrier, study._study_id, slot, grace_s, log)


def slot_trials(study: optuna.Study, slot: int) -> list[FrozenTrial]:
    return [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get(SLOT_ATTR) == slot]


def attach_slot(
    study: optuna.Study, slot: int, fixed_params: dict[str, Any] | None = None
) -> FrozenTrial:
    """The slot's Optuna trial: its finished one, else its running one, else a new one.

    A new trial gets `fixed_params` (its study.enqueue set) as Optuna's own `fixed_params`
    system attr, which `Trial.suggest_*` returns for those names: written with the trial, so a
    resumed slot keeps them and a slot that already has a trial never takes a set again."""
    mine = slot_trials(study, slot)
    for wanted in (FINISHED, (TrialState.RUNNING, TrialState.WAITING)):
        matches = [t for t in mine if t.state in wanted]
        if matches:
            return matches[-1]
    template = optuna.trial.create_trial(
        state=TrialState.RUNNING,
        user_attrs={SLOT_ATTR: slot, TRIAL_UUID_ATTR: str(uuid.uuid4())},
        system_attrs={"fixed_params": fixed_params} if fixed_params else None,
    )
    study_id = study._storage.get_study_id_from_name(study.study_name)
    trial_id = study._storage.create_new_trial(study_id, template_trial=template)
    return study._storage.get_trial(trial_id)


STATE_NAMES = {
    TrialState.COMPLETE: "completed",
    TrialState.FAIL: "failed",
    TrialState.PRUNED: "pruned",
    TrialState.RUNNING: "running",
    TrialState.WAITING: "waiting",
}


def trial_counts(study: optuna.Study) -> dict[str, int]:
    counts = dict.fromkeys(STATE_NAMES.values(), 0)
    for trial in study.get_trials(deepcopy=False):
        counts[STATE_NAMES[trial.state]] += 1
    return counts


def progress(study: optuna.Study, slot: int, n_trials: int) -> dict[str, Any]:
    """ "trial i of N", best so far and an ETA from the mean duration of finished trials."""
    done = [t for t in study.get_trials(deepcopy=False) if t.state in FINISHED]
    complete = [t for t in done if t.state == TrialState.COMPLETE and t.value is not None]
    durations = [
        (t.datetime_complete - t.datetime_start).total_seconds()
        for t in done
        if t.datetime_complete and t.datetime_start
    ]
    remaining = max(n_trials - len(done), 0)
    eta = sum(durations) / len(durations) * remaining if durations else None
    return {
        "trial": trial_label(slot, n_trials),
        "best_so_far": max((t.value for t in complete if t.value is not None), default=None),
        "eta_seconds": round(eta, 1) if eta is not None else None,
        "study_status": "running",
    }


def final_progress(n_trials: int, best_value: float | None) -> dict[str, Any]:
    """progress() once the study is evaluated. Each trial writes progress() when it starts, so
    without this the parent run would keep the last trial's start: the best before it, an ETA
    for it, "running"."""
    return {
        "trial": trial_label(n_trials - 1, n_trials),
        "best_so_far": best_value,
        "eta_seconds": 0,
        "study_status": "finished",
    }


def progress_tags(info: dict[str, Any]) -> dict[str, Any]:
    """The study's parent-run tags for progress() or final_progress()."""
    return {f"leanhpo.{key}": value for key, value in info.items()}
