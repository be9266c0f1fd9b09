"""Passwords leave service URLs for the environment, and come back only to connect."""

from __future__ import annotations

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
    assert expand_env_references(moved, "study.storage") == url
    # the value, raw and decoded, is now masked wherever it shows up
    assert "p%40ss-W0rd" not in mask_secrets("connecting with p%40ss-W0rd")
    assert "p@ss-W0rd" not in mask_secrets("password was p@ss-W0rd")


def test_urls_without_a_password_or_with_a_reference_are_left_alone(monkeypatch):
    monkeypatch.setenv("X_PW", "")
    monkeypatch.delenv("X_PW")
    for url in ("sqlite:///experiments/optuna.db", "http://127.0.0.1:5000", "http://u:${PGPW}@h/x"):
        assert move_password_to_env(url, "X_PW") == url
    import os

    assert "X_PW" not in os.environ


def test_a_reference_to_a_missing_variable_is_an_actionable_bad_input(monkeypatch):
    monkeypatch.delenv("NOPE_PW", raising=False)
    with pytest.raises(MissingSecretError, match=r"NOPE_PW is not set") as info:
        expand_env_references("postgresql://u:${NOPE_PW}@h/db", "study.storage")
    assert info.value.exit_code == 2


def test_http_credentials_are_split_from_the_uri():
    bare, user, password = without_credentials("https://bob:s%2Fcret@mlflow.example:8443/path")
    assert (bare, user, password) == ("https://mlflow.example:8443/path", "bob", "s/cret")
    assert without_credentials("http://127.0.0.1:5000") == ("http://127.0.0.1:5000", None, None)
