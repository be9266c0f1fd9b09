"""Service URLs without their secrets: passwords live in the environment, not in params.

A password written into `study.storage` or `tracking.uri` would otherwise travel through
Snakemake's params, which Snakemake records in .snakemake/metadata, and through every library
that prints the URL it was given. So the Snakefile moves it into an environment variable of its
own process (jobs inherit it) and leaves a `${NAME}` reference; the package expands the
reference only at the moment it connects. Users may write such references themselves:
`postgresql+psycopg://hpo:${PGPASSWORD}@db/hpo`.

The variable holds the password as it is (as PGPASSWORD does), not percent-encoded: a reference
in the user:password part is encoded when it is filled in, so '@', '/', ':' or '#' in a password
cannot turn into a host, a path or a fragment of the URL.
"""

from __future__ import annotations

import os
import re
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from leanhpo.exit_codes import EXIT_BAD_INPUT
from leanhpo.logs import URL_PASSWORD, register_secret

ENV_REFERENCE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)\}")
# The user:password part of a URL as written, references unexpanded (they hold no '/' or '@').
USERINFO = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://(?P<userinfo>[^/@\s]*)@")
STORAGE_PASSWORD_ENV = "LEANHPO_STORAGE_PASSWORD"
TRACKING_PASSWORD_ENV = "LEANHPO_TRACKING_PASSWORD"


class MissingSecretError(ValueError):
    exit_code = EXIT_BAD_INPUT


def move_password_to_env(url: str, env_name: str) -> str:
    """`url` with a literal password replaced by `${env_name}`, which is set to it here,
    decoded (expand_env_references encodes it again)."""
    match = URL_PASSWORD.match(url)
    if match is None or ENV_REFERENCE.fullmatch(match.group("password")):
        return url
    os.environ[env_name] = unquote(match.group("password"))
    return f"{url[: match.start('password')]}${{{env_name}}}{url[match.end('password') :]}"


def shareable(url: str) -> str:
    """`url` as it may be printed for a person to paste: a `${NAME}` password reference kept
    (their shell fills it in), a literal password masked."""
    match = URL_PASSWORD.match(url)
    if match is None or ENV_REFERENCE.fullmatch(match.group("password")):
        return url
    return f"{url[: match.start('password')]}***{url[match.end('password') :]}"


def expand_env_references(url: str, what: str) -> str:
    """Fill each `${NAME}` of `url` from the environment, percent-encoded inside user:password;
    the values become masked secrets."""
    userinfo = USERINFO.match(url)
    credentials_end = userinfo.end("userinfo") if userinfo else -1

    def value(match: re.Match[str]) -> str:
        name = match.group("name")
        if name not in os.environ:
            raise MissingSecretError(
                f"{what} refers to ${{{name}}}, but the environment variable {name} is not set; "
                f"export it in the shell (or the cluster job's environment) that runs the study"
            )
        raw = os.environ[name]
        filled = quote(raw, safe="") if match.end() <= credentials_end else raw
        for form in (raw, unquote(raw), filled):
            register_secret(form)
        return filled

    return ENV_REFERENCE.sub(value, url)


def without_credentials(url: str) -> tuple[str, str | None, str | None]:
    """(url without user:password, user, password), percent-decoded; for HTTP clients that take
    credentials apart from the URL (MLflow reads MLFLOW_TRACKING_USERNAME/PASSWORD)."""
    parts = urlsplit(url)
    if parts.password is None and parts.username is None:
        return url, None, None
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if parts.port is not None:
        netloc += f":{parts.port}"
    bare = urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    user = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password else None
    return bare, user, password
