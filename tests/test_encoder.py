"""The encoder catalog: bundled MiniLM offline, tiny, a local folder, a hub id via the HF cache."""

from __future__ import annotations

import hashlib
import shutil
import time

import pytest

from leanhpo.models import ModelLoadError, load_encoder
from leanhpo.models import encoder as encoder_module

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def test_minilm_loads_offline_from_the_package():
    encoder, tokenizer, info = load_encoder("minilm")
    assert info.source == "package"
    assert info.hidden_size == 384
    assert tokenizer("I can't sleep")["input_ids"][0] == tokenizer.cls_token_id
    assert sum(p.numel() for p in encoder.parameters()) > 20_000_000


def test_tiny_is_small_and_random():
    encoder, _, info = load_encoder("tiny", seed=1)
    assert info.source == "random" and info.hidden_size == 32
    assert sum(p.numel() for p in encoder.parameters()) < 2_000_000


@pytest.fixture
def saved_tiny(tmp_path):
    encoder, tokenizer, _ = load_encoder("tiny", seed=5)
    folder = tmp_path / "tiny-model"
    encoder.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_local_folder(saved_tiny):
    _, _, info = load_encoder(str(saved_tiny))
    assert info.source == "local" and info.hidden_size == 32


def test_local_path_that_is_not_a_model_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match=r"config\.json"):
        load_encoder(str(tmp_path / "empty"))
    with pytest.raises(ModelLoadError, match="not a folder"):
        load_encoder(str(tmp_path / "missing"))


def _fake_hub_cache(cache, repo_id, folder):
    """The layout huggingface_hub reads offline: blobs, a snapshot of links, and refs/main."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir()
    for file in folder.iterdir():
        digest = hashlib.sha256(file.read_bytes()).hexdigest()
        shutil.copy(file, repo / "blobs" / digest)
        (snapshot / file.name).symlink_to(repo / "blobs" / digest)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)


def test_hub_id_loads_from_the_local_cache_without_network(saved_tiny, tmp_path, monkeypatch):
    cache = tmp_path / "hf" / "hub"
    _fake_hub_cache(cache, "someone/tiny-bert", saved_tiny)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    monkeypatch.setattr("transformers.utils.hub.TRANSFORMERS_CACHE", str(cache), raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _, _, info = load_encoder("someone/tiny-bert")
    assert info.source == "hub" and info.resolved == "someone/tiny-bert"
    assert info.hidden_size == 32


def test_missing_hub_model_offline_fails_fast_with_help(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.monotonic()
    with pytest.raises(ModelLoadError) as info:
        load_encoder("bert-base")  # alias of google-bert/bert-base-uncased
    message = str(info.value)
    assert "google-bert/bert-base-uncased" in message
    assert "empty-cache" in message
    assert "huggingface-cli login" in message and "huggingface-cli download" in message
    assert time.monotonic() - started < 30


def test_network_failure_is_retried_with_the_backoff_then_explained(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(encoder_module, "HUB_RETRY_WAITS", (0, 0, 0, 0, 0))
    calls = []

    def failing(hub_id, revision, local_only, options=None):
        calls.append(local_only)
        raise OSError("Connection refused")

    monkeypatch.setattr(encoder_module, "_hub_attempt", failing)
    with pytest.raises(ModelLoadError, match="Connection refused"):
        load_encoder("org/model")
    assert calls == [True] + [False] * 6  # cache first, then one try and five retries


def test_gated_model_is_not_retried(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    calls = []

    def gated(hub_id, revision, local_only, options=None):
        calls.append(local_only)
        raise OSError("You are trying to access a gated repo. 401 Client Error")

    monkeypatch.setattr(encoder_module, "_hub_attempt", gated)
    with pytest.raises(ModelLoadError, match="huggingface-cli login"):
        load_encoder("org/gated")
    assert calls == [True, False]
