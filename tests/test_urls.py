"""Passwords leave service URLs for the environment, and come back only to connect."""

from __future__ import annotations

import os

import pytest

from leanhpo.logs import mask_secrets
from leanhpo.urls import (
    MissingSecretError,
    expand_env_references,
    move_password_to_env,
    without_credentials,
)


def test_a_literal_password_moves_to_the_environment_and_back(monkeypatch):
    monkeypatch.setenv("X_PW", "")  # restored (removed) after the test
    url = "postgresql+psycopg://hpo:p%40ss-W0rd@db:5432/hpo?sslmode=require"
    moved = move_password_to_env(url, "X_PW")
    assert moved == "postgresql+psycopg://hpo:${X_PW}@db:5432/hpo?sslmode=require"
    assert os.environ["X_PW"] == "p@ss-W0rd"  # as it is, like a password the user exports
    assert expand_env_references(moved, "study.storage") == url
    # the value, raw and decoded, is now masked wherever it shows up
    assert "p%40ss-W0rd" not in mask_secrets("connecting with p%40ss-W0rd")
    assert "p@ss-W0rd" not in mask_secrets("password was p@ss-W0rd")


def test_urls_without_a_password_or_with_a_reference_are_left_alone(monkeypatch):
    monkeypatch.setenv("X_PW", "")
    monkeypatch.delenv("X_PW")
    for url in ("sqlite:///experiments/optuna.db", "http://127.0.0.1:5000", "http://u:${PGPW}@h/x"):
        assert move_password_to_env(url, "X_PW") == url
    assert "X_PW" not in os.environ


@pytest.mark.parametrize("scheme", ["http", "postgresql+psycopg"])
def test_a_password_with_url_delimiters_stays_in_the_password(monkeypatch, scheme):
    """PGPASSWORD-style variables hold the password as it is; filled in raw, its '@' or '/'
    would make part of it the host (a DNS lookup of a secret) and leave the rest in logs."""
    import sqlalchemy

    password = "p@ss/w:rd#1?%41 x"
    monkeypatch.setenv("X_PW", password)
    monkeypatch.setenv("X_HOST", "db.example:5432")
    live = expand_env_references(f"{scheme}://hpo:${{X_PW}}@${{X_HOST}}/hpo", "tracking.uri")
    assert live.endswith("@db.example:5432/hpo")
    if scheme == "http":
        assert without_credentials(live) == ("http://db.example:5432/hpo", "hpo", password)
    else:
        parsed = sqlalchemy.engine.make_url(live)
        assert (parsed.password, parsed.host, parsed.port) == (password, "db.example", 5432)
    masked = mask_secrets(live)
    assert masked.startswith(f"{scheme}://hpo:***@") and "w:rd" not in masked


def test_a_reference_to_a_missing_variable_is_an_actionable_bad_input(monkeypatch):
    monkeypatch.delenv("NOPE_PW", raising=False)
    with pytest.raises(MissingSecretError, match=r"NOPE_PW is not set") as info:
        expand_env_references("postgresql://u:${NOPE_PW}@h/db", "study.storage")
    assert info.value.exit_code == 2


def test_http_credentials_are_split_from_the_uri():
    bare, user, password = without_credentials("https://bob:s%2Fcret@mlflow.example:8443/path")
    assert (bare, user, password) == ("https://mlflow.example:8443/path", "bob", "s/cret")
    assert without_credentials("http://127.0.0.1:5000") == ("http://127.0.0.1:5000", None, None)
