"""What the dataset and model loaders share about the Hugging Face hub: when to stay offline,
where the cache is, the retry policy after a cache miss (SPEC 3: backoff 1, 2, 4, 8 and 16 s),
which errors are worth a retry, and how to say so without leaking the token.

The cache is always tried first, without network. After a miss, one network attempt is made
at once, then up to five retries follow the waits below. Only transient failures (a 5xx or
429 answer, a lost connection, a timeout) are retried; a refusal (401/403, gated), a missing
repo, or a hub whose host name does not even resolve (no network, no DNS) stops at once.

LEANHPO_HUB_RETRY_SCALE (a float, default 1) multiplies every wait: tests set it to 0.01 to
run the whole schedule in a fraction of a second; 0 retries without waiting.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import requests
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_chain,
    wait_fixed,
)

from leanhpo.logs import mask_secrets, register_secret

LOG = logging.getLogger(__name__)

HUB_RETRY_WAITS: tuple[float, ...] = (1, 2, 4, 8, 16)
RETRY_SCALE_ENV = "LEANHPO_HUB_RETRY_SCALE"
# Catalog aliases of hub models (SPEC 3); minilm and tiny are built in, see models/encoder.py.
HUB_ALIASES = {
    "bert-base": "google-bert/bert-base-uncased",
    "roberta-base": "FacebookAI/roberta-base",
    "mental-bert": "mental/mental-bert-base-uncased",
    "psychbert": "mnaylor/psychbert-cased",
    "clinicalbert": "emilyalsentzer/Bio_ClinicalBERT",
}
TRUE_ENV_VALUES = ("1", "ON", "YES", "TRUE")
REFUSED_STATUS_CODES = (401, 403)
TRANSIENT_STATUS_CODES = (408, 429)  # and every 5xx
MAX_CAUSE_DEPTH = 10  # transformers and huggingface_hub wrap errors two or three deep

HubErrorKind = Literal["transient", "refused", "missing", "permanent"]


class HubUnavailable(requests.RequestException):
    """The hub answered 5xx/408/429 or could not be reached; worth another attempt later."""


class HubUnresolvable(requests.RequestException):
    """The hub's host name did not resolve: this machine has no network or no DNS.

    Not retried: the backoff (31 s in all) would only delay the message, and the cure (a
    network, or the files in the cache with HF_HUB_OFFLINE=1) is the user's. A hub that
    resolves but refuses connections or times out is still retried, as SPEC 3 asks."""


def hub_offline() -> bool:
    """True when HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE asks for no network at all."""
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(name, "").strip().upper() in TRUE_ENV_VALUES:
            return True
    return False


def hub_cache_dir() -> Path:
    """The hub cache as the environment says NOW (huggingface_hub and transformers read it once,
    at import, so the loaders pass this explicitly and the messages name the folder used)."""
    explicit = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    home = os.environ.get("HF_HOME")
    if home:
        return Path(home).expanduser() / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def retry_scale() -> float:
    raw = os.environ.get(RETRY_SCALE_ENV, "").strip()
    if not raw:
        return 1.0
    try:
        scale = float(raw)
    except ValueError:
        scale = -1.0
    if not scale >= 0:  # also refuses nan
        raise ValueError(
            f"{RETRY_SCALE_ENV}={raw!r} must be a number >= 0 (1 is the real schedule)"
        )
    return scale


def hub_retrying(
    is_transient: Callable[[BaseException], bool], waits: Sequence[float] | None = None
) -> Retrying:
    """A tenacity policy: retry transient errors with `waits` (times LEANHPO_HUB_RETRY_SCALE)
    between attempts, then re-raise the last error. `statistics["attempt_number"]` says how
    many attempts were made."""
    scale = retry_scale()
    scaled = [seconds * scale for seconds in (HUB_RETRY_WAITS if waits is None else waits)]
    return Retrying(
        wait=wait_chain(*[wait_fixed(seconds) for seconds in scaled]),
        stop=stop_after_attempt(len(scaled) + 1),
        retry=retry_if_exception(is_transient),
        before_sleep=_log_retry,
        reraise=True,
    )


def _log_retry(state: RetryCallState) -> None:
    error = state.outcome.exception() if state.outcome else None
    wait = state.next_action.sleep if state.next_action else 0.0
    LOG.warning(
        "hub attempt %d failed (%s); next attempt in %.3g s",
        state.attempt_number,
        describe_hub_error(error) if error else "no error",
        wait,
    )


@contextmanager
def single_shot_hub_requests() -> Iterator[None]:
    """While active, every HTTP request of huggingface_hub is made once: a 5xx/408/429 answer
    or a lost connection raises HubUnavailable at once.

    Why: huggingface_hub retries those itself on file requests (http_backoff: 5 retries,
    1-8 s apart, not configurable). Nested under our tenacity policy, one model attempt during
    a 503 outage made 12 requests over 46 s (transformers asks for config.json twice), six
    attempts about five minutes, on a schedule LEANHPO_HUB_RETRY_SCALE cannot shrink. And
    transformers returns None instead of raising the wrapped error for optional files (the
    tokenizer's), so a flaky hub could load something else. A type that neither library
    catches reaches our policy unchanged. configure_http_backend is the library's documented
    hook for this; the default backend is restored afterwards.
    """
    from huggingface_hub import configure_http_backend

    configure_http_backend(backend_factory=_SingleShotSession)
    try:
        yield
    finally:
        configure_http_backend()


class _SingleShotSession(requests.Session):
    def request(self, method: str, url: str | bytes, *args: Any, **kwargs: Any) -> Any:
        try:
            response = super().request(method, url, *args, **kwargs)
        except (requests.exceptions.SSLError, requests.exceptions.ProxyError):
            raise  # a configuration problem: waiting does not fix it
        except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as error:
            if unresolved_host(error):
                host = urlsplit(str(url)).hostname
                raise HubUnresolvable(
                    f"{method} {url!s}: the host name {host} does not resolve (no network or no "
                    "DNS here; not retried)"
                ) from error
            raise HubUnavailable(f"{method} {url!s}: {type(error).__name__}") from error
        if _is_transient_status(response.status_code):
            raise HubUnavailable(
                f"{method} {url!s}: HTTP {response.status_code}", response=response
            )
        return response


def _is_transient_status(status: int) -> bool:
    return status >= 500 or status in TRANSIENT_STATUS_CODES


def error_chain(error: BaseException) -> list[BaseException]:
    """The error and what caused it: transformers wraps the hub's typed errors in OSError."""
    chain: list[BaseException] = []
    link: BaseException | None = error
    while link is not None and link not in chain and len(chain) < MAX_CAUSE_DEPTH:
        chain.append(link)
        link = link.__cause__ or (None if link.__suppress_context__ else link.__context__)
    return chain


def unresolved_host(error: BaseException) -> bool:
    """Whether the chain holds a failed name lookup (getaddrinfo's error, which urllib3 wraps
    in NameResolutionError), as opposed to a host that resolved and then did not answer."""
    return any(isinstance(link, socket.gaierror) for link in error_chain(error))


def hub_status(error: BaseException) -> int | None:
    """The first HTTP status found along the chain of causes, if any."""
    for link in error_chain(error):
        response = getattr(link, "response", None)
        status = getattr(response, "status_code", None)
        if isinstance(status, int):
            return status
    return None


def hub_error_kind(error: BaseException) -> HubErrorKind | None:
    """What a hub failure means, from the first link of the chain that says; None if none does."""
    from huggingface_hub import errors as hub_errors

    if unresolved_host(error):
        return "permanent"
    for link in error_chain(error):
        if isinstance(link, HubUnavailable):
            return "transient"
        if isinstance(link, hub_errors.GatedRepoError):
            return "refused"
        if isinstance(link, hub_errors.LocalEntryNotFoundError):
            continue  # a wrapper: "not cached, and the hub failed"; the cause says how
        if isinstance(
            link,
            hub_errors.RepositoryNotFoundError
            | hub_errors.RevisionNotFoundError
            | hub_errors.EntryNotFoundError,
        ):
            return "missing"
        if isinstance(
            link,
            hub_errors.OfflineModeIsEnabled
            | requests.exceptions.SSLError
            | requests.exceptions.ProxyError,
        ):
            return "permanent"
        status = getattr(getattr(link, "response", None), "status_code", None)
        if isinstance(status, int):
            if status in REFUSED_STATUS_CODES:
                return "refused"
            if status == 404:
                return "missing"
            return "transient" if _is_transient_status(status) else "permanent"
        if isinstance(link, requests.exceptions.ConnectionError | requests.exceptions.Timeout):
            return "transient"
    return None


def describe_hub_error(error: BaseException) -> str:
    """A short, token-free description for logs: the types along the chain and the status."""
    names = " <- ".join(type(link).__name__ for link in error_chain(error))
    status = hub_status(error)
    return f"{names}, HTTP {status}" if status is not None else names


def redact(text: str) -> str:
    """`text` without the hub token: server messages, which the hub's errors quote, may echo it.
    leanhpo.logs masks the token variables by value already; the token huggingface_hub may
    read from its own token file (`huggingface-cli login`) is registered with them here."""
    from huggingface_hub import get_token

    register_secret(get_token())
    return mask_secrets(text)


def model_id_problem(model_id: str) -> str | None:
    """Why `model.id` can name no model (None when it can): not a catalog alias, not an
    existing folder, and not a well-formed hub id. Whether a hub id exists is left to loading."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if model_id in ("minilm", "tiny", *HUB_ALIASES):
        return None
    local = Path(model_id).expanduser()
    if local.is_dir():
        return None
    aliases = ", ".join(("minilm", "tiny", *HUB_ALIASES))
    if model_id.startswith((".", "/", "~")):
        return (
            f"config key 'model.id': {model_id!r} looks like a local path but {local} is not a "
            f"folder; point it at a folder with config.json, the weights and the tokenizer, or "
            f"use a catalog alias ({aliases}) or a hub id"
        )
    try:
        validate_repo_id(model_id)
    except HFValidationError as error:
        return (
            f"config key 'model.id': {model_id!r} is not a catalog alias ({aliases}), an "
            f"existing folder or a hub id ({error})"
        )
    return None
