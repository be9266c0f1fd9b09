"""Optuna storage calls that ride out a database outage, for a bounded time.

`RetryingStorage` wraps the storage that Optuna would build itself (`_CachedStorage` over an
`RDBStorage`) and retries every call on a transient database error: exponential backoff with
jitter, for at most `timeout_s` per call, then `StorageUnavailableError` (exit code 69).
Why outside the cache and not between cache and RDBStorage: `_CachedStorage` calls private
RDBStorage methods (`_get_trials`, `_create_new_trial`, ...); the public BaseStorage API is the
stable seam. `optuna.storages.get_storage` hands any non-RDBStorage object through unchanged, so
`load_study`/`create_study` neither bypass this wrapper nor add a second cache.

A retry may follow an attempt that committed but whose answer was lost with the connection.
Writes are made idempotent for that case: a tell that finds its trial already in the state it
asked for succeeded, and a trial created with an identity user attr is looked up before it is
created again. Upserts (intermediate values, user and system attrs) and params (unique per
trial, duplicates ignored by RDBStorage) are idempotent already.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any, TypeVar

import optuna
import psycopg
import sqlalchemy.exc
import tenacity
from optuna.exceptions import StorageInternalError, UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from leanhpo.exit_codes import EXIT_BAD_INPUT, EXIT_UNAVAILABLE
from leanhpo.logs import event, mask_secrets
from leanhpo.study.deadline import call_deadline, watchdog_seconds

LOGGER = logging.getLogger("leanhpo.study")
FIRST_WAIT_S = 0.5
MAX_WAIT_S = 10.0  # a restarted server is noticed within this long
# OperationalError covers "wrong password" too: that is a config error, not an outage, and
# waiting `storage_timeout_s` for it would only hide it. psycopg gives no SQLSTATE for
# connection failures, so the server's message is all there is to go by.
PERMANENT_MARKERS = (
    "password authentication failed",
    "no pg_hba.conf entry",
    "does not exist",  # database or role
    "access denied",  # MySQL credentials
    "unknown database",
)
# SQLite raises OperationalError for missing tables and bad SQL as well; only contention, and a
# call the deadline watchdog interrupted (study/deadline.py), passes.
SQLITE_TRANSIENT_MARKERS = (
    "database is locked",
    "database table is locked",
    "database is busy",
    "interrupted",
)

T = TypeVar("T")


class StorageUnavailableError(RuntimeError):
    """The Optuna database stayed unreachable for `storage_timeout_s`; a rerun resumes."""

    exit_code = EXIT_UNAVAILABLE


class StorageRefusedError(RuntimeError):
    """The database answered and refused us (credentials, a missing database): bad input."""

    exit_code = EXIT_BAD_INPUT


def _refused(error: BaseException) -> bool:
    cause = _root_cause(error)
    # Connection-time refusals only: every driver (psycopg, pymysql) calls them this.
    if isinstance(cause, sqlite3.Error) or type(cause).__name__ != "OperationalError":
        return False
    text = str(cause).lower()
    return any(marker in text for marker in PERMANENT_MARKERS)


def _root_cause(error: BaseException) -> BaseException:
    """The driver's own error under Optuna's and SQLAlchemy's wrappers."""
    while True:
        if isinstance(error, sqlalchemy.exc.DBAPIError) and error.orig is not None:
            return error.orig
        if error.__cause__ is None:
            return error
        error = error.__cause__


def _driver_error_is_transient(error: BaseException) -> bool:
    text = str(error).lower()
    if isinstance(error, sqlite3.Error):
        return any(marker in text for marker in SQLITE_TRANSIENT_MARKERS)
    return not any(marker in text for marker in PERMANENT_MARKERS)


def is_transient(error: BaseException) -> bool:
    """True when the connection could not be made or was lost, so trying again can help."""
    if isinstance(error, StorageInternalError):
        # RDBStorage wraps every SQLAlchemy error this way, bad data included: look inside.
        return error.__cause__ is not None and is_transient(error.__cause__)
    if isinstance(error, sqlalchemy.exc.DisconnectionError | sqlalchemy.exc.TimeoutError):
        return True
    if isinstance(error, sqlalchemy.exc.DBAPIError):
        if error.connection_invalidated:
            return True
        transient_kind = (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError)
        cause = error.orig if error.orig is not None else error
        return isinstance(error, transient_kind) and _driver_error_is_transient(cause)
    if isinstance(
        error, psycopg.OperationalError | psycopg.InterfaceError | sqlite3.OperationalError
    ):
        return _driver_error_is_transient(error)
    return False


def describe(error: BaseException) -> str:
    cause = _root_cause(error)
    first_line = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
    return mask_secrets(f"{type(cause).__name__}: {first_line}")


class StorageRetrier:
    """Runs storage calls under one retry policy and logs an outage once, not per attempt."""

    def __init__(self, url: str, timeout_s: float) -> None:
        self.url = mask_secrets(url)
        self.timeout_s = timeout_s
        # Each attempt's own bound (study/deadline.py): a hung server fails the attempt, which
        # is retried, instead of blocking the call past `timeout_s`.
        self.attempt_deadline_s = watchdog_seconds(timeout_s)
        self.outage_started: float | None = None

    def bounded(self, what: str) -> AbstractContextManager[None]:
        """A context in which a database call is cut off at its deadline (one attempt, no
        retry: for a caller with its own policy, such as the lease heartbeat)."""
        return call_deadline(self.attempt_deadline_s, what, self.url)

    def call(self, what: str, attempt: Callable[[int], T]) -> T:
        """Run `attempt(attempt_number)` until it succeeds, fails for good, or time is up.

        The attempt number lets a write see that an earlier attempt may have committed.
        """
        started = time.monotonic()
        backoff = tenacity.wait_random_exponential(multiplier=FIRST_WAIT_S, max=MAX_WAIT_S)

        def wait(state: tenacity.RetryCallState) -> float:
            # Never sleep past the deadline, so the last attempt is made right at it: the whole
            # `timeout_s` is used, however large the next backoff step would have been.
            return max(0.0, min(backoff(state), started + self.timeout_s - time.monotonic()))

        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception(is_transient),
            wait=wait,
            stop=tenacity.stop_after_delay(self.timeout_s),
            before_sleep=lambda state: self._retrying(what, state),
            reraise=True,
        )
        try:
            for try_ in retrying:
                with try_, self.bounded(what):
                    result = attempt(try_.retry_state.attempt_number)
        except Exception as error:
            if _refused(error):
                raise StorageRefusedError(
                    f"The Optuna storage {self.url} refused the connection: {describe(error)}. "
                    "This is not an outage, so it was not retried: check the user, password and "
                    "database in study.storage (or the environment variable its ${...} names)."
                ) from error
            if not is_transient(error):
                raise
            self.outage_started = None
            raise StorageUnavailableError(
                f"The Optuna storage {self.url} did not answer for {time.monotonic() - started:.0f} s "
                f"(study.storage_timeout_s = {self.timeout_s:g}) during {what}; last error: "
                f"{describe(error)}. Nothing is lost: when the database is back, rerun the same "
                "command and the trial resumes from its last checkpoint (checkpointed epochs are "
                "not trained again)."
            ) from error
        if self.outage_started is not None:
            waited = time.monotonic() - self.outage_started
            event(
                LOGGER,
                f"Optuna storage {self.url} answers again after {waited:.1f} s",
                kind="storage_recovered",
                waited_s=round(waited, 1),
            )
            self.outage_started = None
        return result

    def _retrying(self, what: str, state: tenacity.RetryCallState) -> None:
        if self.outage_started is not None:
            return
        self.outage_started = state.start_time
        error = state.outcome.exception() if state.outcome else None
        event(
            LOGGER,
            f"Optuna storage {self.url} unreachable during {what} "
            f"({describe(error) if error else 'unknown error'}); retrying for up to "
            f"{self.timeout_s:g} s (study.storage_timeout_s)",
            logging.WARNING,
            kind="storage_unavailable",
        )


def _retried(name: str) -> Any:
    """A BaseStorage method that forwards to the wrapped storage under the retry policy."""

    def method(self: RetryingStorage, *args: Any, **kwargs: Any) -> Any:
        function = getattr(self.inner, name)
        return self.retrier.call(name, lambda _attempt: function(*args, **kwargs))

    method.__name__ = name
    return method


class RetryingStorage(optuna.storages.BaseStorage):
    """Every public storage method of `inner`, retried; see the module docstring."""

    def __init__(
        self, inner: optuna.storages.BaseStorage, retrier: StorageRetrier, identity_attr: str
    ) -> None:
        self.inner = inner
        self.retrier = retrier
        # The user attr that makes a new trial unique, so a lost create can be found again.
        self.identity_attr = identity_attr

    create_new_study = _retried("create_new_study")
    delete_study = _retried("delete_study")
    set_study_user_attr = _retried("set_study_user_attr")
    set_study_system_attr = _retried("set_study_system_attr")
    get_study_id_from_name = _retried("get_study_id_from_name")
    get_study_name_from_id = _retried("get_study_name_from_id")
    get_study_directions = _retried("get_study_directions")
    get_study_user_attrs = _retried("get_study_user_attrs")
    get_study_system_attrs = _retried("get_study_system_attrs")
    get_all_studies = _retried("get_all_studies")
    set_trial_param = _retried("set_trial_param")
    get_trial_id_from_study_id_trial_number = _retried("get_trial_id_from_study_id_trial_number")
    get_best_trial = _retried("get_best_trial")
    set_trial_intermediate_value = _retried("set_trial_intermediate_value")
    set_trial_user_attr = _retried("set_trial_user_attr")
    set_trial_system_attr = _retried("set_trial_system_attr")
    get_trial = _retried("get_trial")
    get_all_trials = _retried("get_all_trials")

    def create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> int:
        identity = template_trial.user_attrs.get(self.identity_attr) if template_trial else None

        def attempt(number: int) -> int:
            if number > 1 and identity is not None:
                for trial in self.inner.get_all_trials(study_id, deepcopy=False):
                    if trial.user_attrs.get(self.identity_attr) == identity:
                        return trial._trial_id  # the lost attempt did commit
            return self.inner.create_new_trial(study_id, template_trial)

        return self.retrier.call("create_new_trial", attempt)

    def set_trial_state_values(
        self, trial_id: int, state: TrialState, values: Sequence[float] | None = None
    ) -> bool:
        def attempt(number: int) -> bool:
            try:
                return self.inner.set_trial_state_values(trial_id, state, values)
            except UpdateFinishedTrialError:
                if number > 1 and self._already_set(trial_id, state, values):
                    return True  # the lost attempt did commit
                raise

        return self.retrier.call("set_trial_state_values", attempt)

    def _already_set(
        self, trial_id: int, state: TrialState, values: Sequence[float] | None
    ) -> bool:
        trial = self.inner.get_trial(trial_id)
        wanted = None if values is None else [float(v) for v in values]
        return trial.state == state and trial.values == wanted
