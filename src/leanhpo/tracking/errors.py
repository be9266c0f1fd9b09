"""What an MLflow failure means for us: an outage (buffer and go on), wrong credentials (stop the
study with a clear message), or a bug (raise as is). And the bound on how long one MLflow HTTP
call may block, which MLflow itself would stretch to minutes of retries."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from leanhpo.dblock import database_lock
from leanhpo.exit_codes import EXIT_BAD_INPUT, EXIT_UNAVAILABLE
from leanhpo.fsutil import create_sqlite_atomically, sqlite_path
from leanhpo.logs import mask_secrets, register_secret
from leanhpo.urls import expand_env_references, without_credentials

# Read by mlflow.utils.rest_utils.http_request on every call (mlflow 3.17): defaults are 7
# retries with backoff factor 2 and a 120 s timeout, minutes per failed write. Our own retry is
# the spool, so MLflow's is switched off while a Tracker call runs.
MAX_RETRIES_ENV = "MLFLOW_HTTP_REQUEST_MAX_RETRIES"
TIMEOUT_ENV = "MLFLOW_HTTP_REQUEST_TIMEOUT"  # an int in seconds, for connect and for read
OUTAGE_STATUS = frozenset({408, 429})  # plus every 5xx
AUTH_STATUS = frozenset({401, 403})
# Database URIs MLflow reaches over the network (SQLite is a local file).
NETWORK_DB_SCHEMES = ("postgresql", "mysql")
REASON_CHARS = 300
SCHEMA_LOCK_NAME = "mlflow-schema"  # one per tracking database, whatever the study
# How long a driver waits for another one's migrations: a one-time step of seconds, which
# tracking.write_timeout_s (a few seconds for one write) would cut short.
SCHEMA_WAIT_S = 120.0


class TrackingAuthError(RuntimeError):
    """The server answered, but refused who we are: no buffering can fix that."""

    exit_code = EXIT_BAD_INPUT


class TrackingUnavailable(RuntimeError):
    """MLflow did not answer in time (or answered 5xx/429): an outage, not a bug."""

    exit_code = EXIT_UNAVAILABLE


@contextmanager
def bounded_http(timeout_s: float) -> Iterator[None]:
    """No MLflow-internal retries and a per-request timeout of about `timeout_s` (whole seconds,
    as MLflow parses the variable as an int). The old values come back afterwards, so other
    MLflow use in the process keeps its own settings."""
    wanted = {MAX_RETRIES_ENV: "0", TIMEOUT_ENV: str(max(1, math.ceil(timeout_s)))}
    saved = {name: os.environ.get(name) for name in wanted}
    os.environ.update(wanted)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def http_status(error: BaseException) -> int | None:
    if isinstance(error, MlflowException):
        return int(error.get_http_status_code())
    return None


def _chain(error: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _is_transport_failure(error: BaseException) -> bool:
    """Connection refused/reset, timeouts, a database that cannot be reached or is locked."""
    import requests
    import sqlalchemy.exc

    transient = (
        requests.exceptions.ConnectionError,
        requests.exceptions.Timeout,
        sqlalchemy.exc.OperationalError,
        sqlalchemy.exc.InterfaceError,
        ConnectionError,
        TimeoutError,
    )
    return any(isinstance(link, transient) for link in _chain(error))


def reason_of(error: BaseException) -> str:
    return mask_secrets(f"{type(error).__name__}: {error}")[:REASON_CHARS]


def _refusal(status: int) -> str:
    """Whom the server refused, and why, as far as the HTTP status tells (the credentials are
    in MLflow's variables by now, see client_uri)."""
    user = os.environ.get("MLFLOW_TRACKING_USERNAME")
    # MLflow's own order: basic auth when both halves are set, else the bearer token.
    if user and os.environ.get("MLFLOW_TRACKING_PASSWORD"):
        who = f"user {user!r}"
    elif os.environ.get("MLFLOW_TRACKING_TOKEN"):
        who = "the token in MLFLOW_TRACKING_TOKEN"
    else:
        return f"a request without credentials (HTTP {status}): it asks for a login"
    if status == 403:
        return f"{who} (HTTP 403): logged in, but without permission for this"
    return f"the login of {who} (HTTP {status}): wrong user name or password"


def classify(error: Exception, uri: str) -> Exception:
    """The exception to raise instead of `error`: TrackingUnavailable for an outage,
    TrackingAuthError for refused credentials, `error` itself for anything else (a bug)."""
    if isinstance(error, TrackingUnavailable | TrackingAuthError):
        return error
    status = http_status(error)
    if status in AUTH_STATUS:
        return TrackingAuthError(
            f"MLflow at {mask_secrets(uri)} refused {_refusal(status)}; this is not an outage, "
            "so nothing was buffered. Set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD "
            "(or MLFLOW_TRACKING_TOKEN), or write tracking.uri as http://USER:${VAR}@HOST with "
            "VAR exported, for an account that may write to this experiment; then rerun."
        )
    if _is_transport_failure(error) or (
        status is not None and (status >= 500 or status in OUTAGE_STATUS)
    ):
        return TrackingUnavailable(reason_of(error))
    return error


def _create_mlflow_tables(url: str) -> None:
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    # The artifact root only names the Default experiment's folder, which leanhpo never uses.
    store = SqlAlchemyStore(url, str(Path(str(sqlite_path(url))).parent / "mlruns"))
    store.engine.dispose()


def make_client(uri: str, timeout_s: float) -> MlflowClient:
    """An MlflowClient, but first one bounded connection attempt for a database URI: MLflow's
    constructor retries a dead database 10 times with backoff (about 100 s) before it raises.

    With a database URI the first client makes MLflow's tables, and MLflow's migrations are not
    safe to run twice at once (two drivers on a new PostgreSQL database: UniqueViolation on
    alembic_version). So they run under the database's schema lock (leanhpo/dblock.py), and a
    driver that waited finds the tables made. A server (http) makes its own tables."""
    if not uri.startswith(("sqlite", *NETWORK_DB_SCHEMES)):
        return MlflowClient(tracking_uri=uri)
    seconds = max(1, math.ceil(timeout_s))
    engine_kwargs = (
        {"connect_args": {"connect_timeout": seconds}} if uri.startswith("postgresql") else {}
    )
    if uri.startswith(NETWORK_DB_SCHEMES):
        import sqlalchemy

        engine = sqlalchemy.create_engine(uri, **engine_kwargs)
        try:
            with engine.connect():
                pass
        finally:
            engine.dispose()
    with database_lock(uri, SCHEMA_LOCK_NAME, max(timeout_s, SCHEMA_WAIT_S), engine_kwargs):
        create_sqlite_atomically(uri, _create_mlflow_tables)
        return MlflowClient(tracking_uri=uri)  # makes the tables of a new network database


def client_uri(uri: str) -> str:
    """The URI the MLflow client gets: `${NAME}` references filled in, and for HTTP without
    user:password, which go to MLFLOW_TRACKING_USERNAME/PASSWORD (this process only) instead.
    Why: MLflow prints and logs the URI it was given ("View run ... at: URI", retry warnings)
    on paths our masking never sees."""
    live = expand_env_references(uri, "tracking.uri")
    # Noise in every job log, and on older MLflow versions it carried the URI's password.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    if not live.startswith(("http://", "https://")):
        return live
    bare, user, password = without_credentials(live)
    if user is not None:
        os.environ["MLFLOW_TRACKING_USERNAME"] = user
    if password is not None:
        register_secret(password)
        os.environ["MLFLOW_TRACKING_PASSWORD"] = password
    return bare


def is_refusal(error: BaseException, uri: str) -> bool:
    """MLflow answered and refused this request for good: an HTTP 4xx that is neither about
    who we are (401, 403) nor an outage (408, 429). Sending it again cannot help (its run was
    deleted, or the server is not the one the request was meant for), so a spooled entry that
    gets one becomes a dead letter instead of blocking every entry behind it."""
    if not isinstance(error, MlflowException) or classify(error, uri) is not error:
        return False
    status = http_status(error)
    return status is not None and 400 <= status < 500
