"""Logging: a JSONL file per trial plus human-readable stdout, with secrets masked in both.

Every record carries (timestamp, level, component, trial, message, context). Masking happens in
the formatters, after the message is rendered, so a secret passed through %-args is caught too.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

ROOT_LOGGER = "leanhpo"
MASK = "***"
# Order matters: URL passwords before e-mails, so user:pass@host is not taken for an address.
SECRET_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"(?i)\bBearer\s+[A-Za-z0-9._~+/=-]+"), f"Bearer {MASK}"),
    (re.compile(r"\bhf_[A-Za-z0-9]{10,}\b"), MASK),
    (re.compile(r"\b(?:sk|pk|ghp|gho|xox[abp])[-_][A-Za-z0-9_-]{16,}\b"), MASK),
    (
        re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@\s]+):[^@/\s]+@"),
        rf"\g<scheme>\g<user>:{MASK}@",
    ),
    (
        re.compile(
            r"(?i)\b(?P<key>password|passwd|secret|token|api[_-]?key)(?P<sep>\s*[=:]\s*)[^\s,;&]+"
        ),
        rf"\g<key>\g<sep>{MASK}",
    ),
    (re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}\b"), MASK),
    # Long opaque keys mix upper case, lower case and digits; hex digests, run ids and
    # timestamps (one case only) are left alone.
    (
        re.compile(
            r"\b(?=[A-Za-z0-9]*[a-z])(?=[A-Za-z0-9]*[A-Z])(?=[A-Za-z0-9]*\d)[A-Za-z0-9]{32,}\b"
        ),
        MASK,
    ),
)


# Secrets with no recognisable shape (a plain password) are masked by value: those in these
# variables, and those registered by the code that meets them (passwords in the config's URLs).
SECRET_ENV_VARS = (
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
    "PGPASSWORD",
    "AWS_SECRET_ACCESS_KEY",
    "LEANHPO_STORAGE_PASSWORD",  # where the Snakefile moves the passwords of the config's URLs
    "LEANHPO_TRACKING_PASSWORD",
)
MIN_LITERAL_SECRET = 4  # shorter values would mask ordinary words
_registered: set[str] = set()
URL_PASSWORD = re.compile(r"[a-z][a-z0-9+.-]*://[^:/@\s]+:(?P<password>[^@/\s]+)@")


def register_secret(value: str | None) -> None:
    """Mask `value` wherever it appears from now on, in every sink of this process."""
    if value and len(value) >= MIN_LITERAL_SECRET:
        _registered.add(value)


def register_url_secrets(url: str) -> None:
    """Register the password of a URL (user:password@host), also in its percent-decoded form."""
    from urllib.parse import unquote

    for match in URL_PASSWORD.finditer(url):
        register_secret(match.group("password"))
        register_secret(unquote(match.group("password")))


def _literal_secrets() -> list[str]:
    values = set(_registered)
    for name in SECRET_ENV_VARS:
        value = os.environ.get(name, "")
        if len(value) >= MIN_LITERAL_SECRET:
            values.add(value)
    return sorted(values, key=len, reverse=True)  # longest first: no partial leftovers


def mask_secrets(text: str) -> str:
    for value in _literal_secrets():
        text = text.replace(value, MASK)
    for pattern, replacement in SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def mask_value(value: Any) -> Any:
    """Mask strings anywhere inside a JSON-like value."""
    if isinstance(value, str):
        return mask_secrets(value)
    if isinstance(value, dict):
        return {k: mask_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [mask_value(v) for v in value]
    return value


class JsonlFormatter(logging.Formatter):
    def __init__(self, trial: str | None) -> None:
        super().__init__()
        self.trial = trial

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "component": record.name,
            "trial": getattr(record, "trial", self.trial),
            "message": mask_secrets(record.getMessage()),
            "context": mask_value(getattr(record, "context", {})),
        }
        if record.exc_info:
            entry["context"]["exception"] = mask_secrets(self.formatException(record.exc_info))
        return json.dumps(entry, default=str)


class HumanFormatter(logging.Formatter):
    def __init__(self, trial: str | None) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(message)s", "%H:%M:%S")
        self.trial = trial

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        context = getattr(record, "context", None)
        if context:
            text += "  " + json.dumps(context, default=str, sort_keys=True)
        prefix = f"[{self.trial}] " if self.trial else ""
        return prefix + mask_secrets(text)


def setup_logging(
    jsonl_path: Path | None = None, trial: str | None = None, stream: TextIO | None = None
) -> logging.Logger:
    """Configure the package logger: stdout (or `stream`) and, if given, an appended JSONL file.

    Calling it again replaces the handlers, so one process can run several trials in tests.
    """
    logger = logging.getLogger(ROOT_LOGGER)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    logger.setLevel(logging.INFO)
    logger.propagate = False
    console = logging.StreamHandler(stream or sys.stdout)
    console.setFormatter(HumanFormatter(trial))
    logger.addHandler(console)
    if jsonl_path is not None:
        jsonl_path.parent.mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(jsonl_path, mode="a", encoding="utf-8")
        file_handler.setFormatter(JsonlFormatter(trial))
        logger.addHandler(file_handler)
    return logger


def event(logger: logging.Logger, message: str, level: int = logging.INFO, **context: Any) -> None:
    """Log `message` with structured context that lands in the JSONL `context` field."""
    logger.log(level, message, extra={"context": context})
