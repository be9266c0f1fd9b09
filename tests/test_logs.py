"""Logs: JSONL records with the fixed fields, and secrets masked in every sink."""

from __future__ import annotations

import io
import json

import pytest

from leanhpo.logs import event, mask_secrets, setup_logging


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("token hf_abcdefghijklmnopqrstuvwxyz12", "hf_abcdefghijklmnopqrstuvwxyz12"),
        ("Authorization: Bearer eyJhbGciOi.J9.abc", "eyJhbGciOi.J9.abc"),
        ("postgresql://leanhpo:s3cr3t@db:5432/optuna", "s3cr3t"),
        ("contact alice@example.org now", "alice@example.org"),
        ("api_key=AKIAxxxxxxxxxxxxxxxx", "AKIAxxxxxxxxxxxxxxxx"),
        ("password: hunter2", "hunter2"),
        ("key sk-proj-abcdefghijklmnopqrstuvwxyz", "sk-proj-abcdefghijklmnopqrstuvwxyz"),
        (
            "opaque Zx9aB8cD7eF6gH5iJ4kL3mN2oP1qR0sT9uV8wX7yZ6",
            "Zx9aB8cD7eF6gH5iJ4kL3mN2oP1qR0sT9uV8wX7yZ6",
        ),
    ],
)
def test_secrets_are_masked(text, secret):
    masked = mask_secrets(text)
    assert secret not in masked
    assert "***" in masked


def test_hashes_and_ids_are_not_masked():
    sha = "a" * 30 + "0123456789abcdef" * 2 + "b" * 2
    text = f"checkpoint {sha} run 3fb73477f6f944a0a4316b0f5c737b7a trial_0003"
    assert mask_secrets(text) == text


def test_jsonl_records_have_the_fixed_fields_and_are_masked(tmp_path):
    stream = io.StringIO()
    log = setup_logging(tmp_path / "trial.jsonl", trial="trial_0001", stream=stream)
    event(
        log, "connecting to http://u:pw123@host", kind="x", token_value="hf_abcdefghijklmnopqrstu"
    )
    record = json.loads((tmp_path / "trial.jsonl").read_text().splitlines()[-1])
    assert set(record) == {"timestamp", "level", "component", "trial", "message", "context"}
    assert record["trial"] == "trial_0001" and record["context"]["kind"] == "x"
    assert "pw123" not in json.dumps(record) and "hf_abcdefghijklmnopqrstu" not in json.dumps(
        record
    )
    assert "pw123" not in stream.getvalue() and "[trial_0001]" in stream.getvalue()
