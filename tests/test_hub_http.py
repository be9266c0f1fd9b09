"""Hub loading against a real HTTP server that plays the Hugging Face hub (tests/services/fake_hub):
downloads, the cache-first rule, the retry schedule on outages, refusals and the token."""

from __future__ import annotations

import itertools
import json
import logging
import os
import random
import string
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from services.fake_hub import DATASET_COMMIT, DATASET_ID, MODEL_COMMIT, MODEL_ID, FakeHub

from leanhpo.data import DataError, materialize_source, prepare_dataset
from leanhpo.exit_codes import EXIT_BAD_INPUT, exit_code_for
from leanhpo.hub import HUB_RETRY_WAITS, RETRY_SCALE_ENV
from leanhpo.models import ModelLoadError, load_encoder

REPO = Path(__file__).resolve().parents[1]
SCALE = 0.05  # the whole 1-2-4-8-16 s schedule in 1.55 s, waits still far apart enough to order
GATED_DATASET_ID = "fake-org/gated-redsm5"
# What one attempt asks before it fails on a refusal. transformers asks for config.json twice:
# first quietly, for the commit hash (that probe swallows a refusal), then for real.
REQUESTS_PER_ATTEMPT = {"model": 2, "dataset": 1}


@pytest.fixture
def token(monkeypatch: pytest.MonkeyPatch) -> str:
    value = "hf_" + "".join(random.choices(string.ascii_letters, k=30))
    monkeypatch.setenv("HF_TOKEN", value)
    return value


def _data_cfg(repo_id: str = DATASET_ID) -> dict[str, Any]:
    split = {"train": 0.8, "validation": 0.1, "test": 0.1, "seed": 42}
    return {"source": "hub", "id": repo_id, "revision": "main", "path": None, "split": split}


def _load(what: str, tmp_path: Path) -> str:
    """Load the model or the dataset from the fake hub; return the resolved revision."""
    if what == "model":
        return str(load_encoder(MODEL_ID)[2].revision)
    return str(materialize_source(_data_cfg(), tmp_path / "raw")["resolved_revision"])


def _expected_error(what: str) -> type[Exception]:
    return ModelLoadError if what == "model" else DataError


def _assert_no_token(token: str, *texts: str) -> None:
    for text in texts:
        assert token not in text


def test_model_downloads_once_then_loads_from_the_cache_with_no_request(
    fake_hub: FakeHub, token: str
) -> None:
    _, tokenizer, info = load_encoder(MODEL_ID)
    assert (info.source, info.revision, info.hidden_size) == ("hub", MODEL_COMMIT, 32)
    assert tokenizer("I can't sleep")["input_ids"][0] == tokenizer.cls_token_id
    assert fake_hub.hub_requests() and all(r.authorized for r in fake_hub.hub_requests())

    fake_hub.clear()
    _, _, cached = load_encoder(MODEL_ID)
    assert cached.revision == MODEL_COMMIT
    assert fake_hub.requests == []


def test_dataset_downloads_once_then_loads_from_the_cache_with_no_request(
    fake_hub: FakeHub, token: str, tmp_path: Path
) -> None:
    report = prepare_dataset(_data_cfg(), tmp_path / "prepared")
    assert report["resolved_revision"] == DATASET_COMMIT
    assert report["n_posts"] == 30
    assert fake_hub.hub_requests()

    fake_hub.clear()
    result = materialize_source(_data_cfg(), tmp_path / "again")
    assert result["resolved_revision"] == DATASET_COMMIT
    assert (
        result["posts_csv"].read_bytes()
        == (tmp_path / "prepared/raw/redsm5_posts.csv").read_bytes()
    )
    assert fake_hub.requests == []


@pytest.mark.parametrize("what", ["model", "dataset"])
def test_a_short_outage_is_ridden_out(
    fake_hub: FakeHub, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, what: str
) -> None:
    monkeypatch.setenv(RETRY_SCALE_ENV, "0.01")
    fake_hub.unavailable_for(2)
    assert _load(what, tmp_path) == (MODEL_COMMIT if what == "model" else DATASET_COMMIT)
    statuses = [request.status for request in fake_hub.hub_requests()]
    # Each failed attempt stops at its first request; huggingface_hub does not retry inside.
    assert statuses[:3] == [503, 503, 200]


@pytest.mark.slow
@pytest.mark.parametrize("what", ["model", "dataset"])
def test_a_hub_outage_is_retried_on_the_backoff_schedule_then_explained(
    fake_hub: FakeHub,
    token: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
    tmp_path: Path,
    what: str,
) -> None:
    monkeypatch.setenv(RETRY_SCALE_ENV, str(SCALE))
    fake_hub.unavailable_for(1000)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(_expected_error(what)) as caught:
        _load(what, tmp_path)

    attempts = fake_hub.hub_requests()
    assert [request.status for request in attempts] == [503] * 6  # one try, five retries
    waits = [SCALE * seconds for seconds in HUB_RETRY_WAITS]
    gaps = [later.at - earlier.at for earlier, later in itertools.pairwise(attempts)]
    assert all(gap >= wait * 0.95 for gap, wait in zip(gaps, waits, strict=True)), gaps
    assert gaps[-1] > 4 * gaps[0], gaps  # 16 s against 1 s: the waits grew
    logged = [r.args for r in caplog.records if r.getMessage().startswith("hub attempt")]
    assert [args[0] for args in logged] == [1, 2, 3, 4, 5]  # type: ignore[index]
    assert [args[2] for args in logged] == pytest.approx(waits)  # type: ignore[index]

    message = str(caught.value)
    assert "6 attempts" in message and str(tmp_path / "hf_home" / "hub") in message
    for advice in (
        "huggingface-cli login",
        "HF_TOKEN",
        "HF_HUB_OFFLINE=1",
        "huggingface-cli download",
    ):
        assert advice in message
    assert "huggingface.co/" in message  # where to accept the licence of a gated repo
    assert exit_code_for(caught.value) == EXIT_BAD_INPUT
    _assert_no_token(token, message, caplog.text, *capfd.readouterr())


@pytest.mark.parametrize("what", ["model", "dataset"])
def test_a_hub_that_does_not_answer_is_retried(
    fake_hub: FakeHub,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
    what: str,
) -> None:
    monkeypatch.setenv(RETRY_SCALE_ENV, "0.01")
    fake_hub.stop()  # the port is closed now: every attempt is a refused connection
    caplog.set_level(logging.WARNING, logger="leanhpo")
    with pytest.raises(_expected_error(what), match="6 attempts"):
        _load(what, tmp_path)
    retries = [r for r in caplog.records if r.getMessage().startswith("hub attempt")]
    assert len(retries) == 5 and "ConnectionError" in retries[0].getMessage()


@pytest.mark.parametrize(("status", "error_code"), [(401, None), (403, None), (403, "GatedRepo")])
@pytest.mark.parametrize("what", ["model", "dataset"])
def test_a_refusal_stops_at_once_with_what_to_do(
    fake_hub: FakeHub,
    token: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
    tmp_path: Path,
    what: str,
    status: int,
    error_code: str | None,
) -> None:
    monkeypatch.setenv(RETRY_SCALE_ENV, "0.01")
    fake_hub.refuse(status, error_code)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(_expected_error(what)) as caught:
        _load(what, tmp_path)

    requests = fake_hub.hub_requests()
    assert [request.status for request in requests] == [status] * REQUESTS_PER_ATTEMPT[what]
    assert not [r for r in caplog.records if r.getMessage().startswith("hub attempt")]
    assert requests[0].authorized  # the token was sent, and the server echoed it back
    message = str(caught.value)
    repo_id = MODEL_ID if what == "model" else DATASET_ID
    assert f"huggingface.co/{'datasets/' if what == 'dataset' else ''}{repo_id}" in message
    for advice in ("huggingface-cli login", "HF_TOKEN", "HF_HUB_OFFLINE=1", "not retried"):
        assert advice in message
    assert exit_code_for(caught.value) == EXIT_BAD_INPUT
    _assert_no_token(token, message, caplog.text, *capfd.readouterr())


@pytest.mark.slow
def test_hub_env_alone_points_a_fresh_process_at_the_hub(
    fake_hub: FakeHub, token: str, tmp_path: Path
) -> None:
    """No in-process patching: HF_ENDPOINT and HF_HOME set before import, as a user would.
    The model resolves to the server's commit; a gated dataset exits 2 through workflow.job,
    with the fix in the log and no token anywhere."""
    fake_hub.add_repo("datasets", GATED_DATASET_ID, DATASET_COMMIT, {})
    fake_hub.refuse(403, "GatedRepo", only=GATED_DATASET_ID)
    log = tmp_path / "job.log"
    script = textwrap.dedent(
        f"""
        import json
        from leanhpo.data import materialize_source
        from leanhpo.models import load_encoder
        from leanhpo.workflow import job

        print(json.dumps({{"model_revision": load_encoder({MODEL_ID!r})[2].revision}}))
        with job({str(log)!r}):
            materialize_source({_data_cfg(GATED_DATASET_ID)!r}, {str(tmp_path / "raw")!r})
        """
    )
    env = {**os.environ, RETRY_SCALE_ENV: "0.01", "PYTHONPATH": str(REPO / "src")}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == EXIT_BAD_INPUT, done.stderr[-3000:]
    assert json.loads(done.stdout.splitlines()[-1]) == {"model_revision": MODEL_COMMIT}
    written = log.read_text()
    assert "accept the terms" in written and "huggingface-cli login" in written
    _assert_no_token(token, written, done.stdout, done.stderr)
    gated = [r for r in fake_hub.hub_requests() if GATED_DATASET_ID in r.path]
    assert [r.status for r in gated] == [403]
