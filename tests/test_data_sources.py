"""Data sources (sample, local folder, Hugging Face hub cache) and the prepare step end to end."""

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import requests
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from leanhpo.data import (
    DataError,
    generate_sample,
    load_split,
    materialize_source,
    prepare_dataset,
    sources,
)

COMMIT = "0123456789abcdef0123456789abcdef01234567"
SPLIT = {"train": 0.8, "validation": 0.1, "test": 0.1, "seed": 42}


def _cfg(**overrides: Any) -> dict[str, Any]:
    cfg = {
        "source": "sample",
        "path": None,
        "id": "irlab-udc/redsm5",
        "revision": "main",
        "sample_posts": 60,
        "split": dict(SPLIT),
    }
    cfg.update(overrides)
    return cfg


@pytest.fixture
def csv_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "redsm5"
    generate_sample(folder, 30, seed=5)
    return folder


@pytest.fixture
def hub_cache(tmp_path: Path, csv_folder: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A Hugging Face cache laid out as huggingface_hub writes it, with the CSVs in a subfolder."""
    cache = tmp_path / "hf_home" / "hub"
    repo = cache / "datasets--irlab-udc--redsm5"
    snapshot = repo / "snapshots" / COMMIT / "data"
    snapshot.mkdir(parents=True)
    for name in ("redsm5_posts.csv", "redsm5_annotations.csv"):
        shutil.copy(csv_folder / name, snapshot / name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(sources, "HUB_RETRY_WAITS", (0, 0, 0, 0, 0))
    return cache


def test_sample_source_generates_into_raw_dir(tmp_path: Path) -> None:
    result = materialize_source(_cfg(sample_posts=25), tmp_path / "raw")
    assert result["posts_csv"] == tmp_path / "raw" / "redsm5_posts.csv"
    assert result["annotations_csv"].is_file()
    assert result["dataset_id"] == "leanhpo-sample"
    assert result["revision"] == result["resolved_revision"] == "v4-long_tailed-n25-s42"


def test_local_source_reads_in_place(tmp_path: Path, csv_folder: Path) -> None:
    result = materialize_source(_cfg(source="local", path=str(csv_folder)), tmp_path / "raw")
    assert result["posts_csv"] == csv_folder / "redsm5_posts.csv"
    assert result["source"] == "local" and result["revision"] is None
    assert result["resolved_revision"].startswith("sha256:")
    assert not (tmp_path / "raw").exists()


def test_local_source_missing_file_lists_folder_and_expected_names(csv_folder: Path) -> None:
    (csv_folder / "redsm5_annotations.csv").unlink()
    with pytest.raises(DataError) as caught:
        materialize_source(_cfg(source="local", path=str(csv_folder)), csv_folder / "raw")
    message = str(caught.value)
    assert str(csv_folder) in message
    assert "['redsm5_posts.csv']" in message  # what the folder holds
    assert "redsm5_annotations.csv" in message and "Fix:" in message


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"source": "s3"}, "data.source"),
        ({"source": "local", "path": None}, "data.path"),
        ({"source": "hub", "id": ""}, "data.id"),
    ],
)
def test_bad_source_config_is_refused(tmp_path: Path, overrides: dict, expected: str) -> None:
    with pytest.raises(DataError, match=expected):
        materialize_source(_cfg(**overrides), tmp_path / "raw")


def test_hub_source_resolves_from_cache(tmp_path: Path, hub_cache: Path) -> None:
    result = materialize_source(_cfg(source="hub"), tmp_path / "raw")
    assert result["resolved_revision"] == COMMIT
    assert result["revision"] == "main" and result["dataset_id"] == "irlab-udc/redsm5"
    assert result["posts_csv"] == tmp_path / "raw" / "redsm5_posts.csv"
    assert result["annotations_csv"].read_bytes().startswith(b"post_id,sentence_id")


def test_hub_source_accepts_a_commit_as_revision(tmp_path: Path, hub_cache: Path) -> None:
    result = materialize_source(_cfg(source="hub", revision=COMMIT), tmp_path / "raw")
    assert result["resolved_revision"] == COMMIT


def test_hub_cache_miss_offline_names_cache_and_fixes(tmp_path: Path, hub_cache: Path) -> None:
    with pytest.raises(DataError) as caught:
        materialize_source(_cfg(source="hub", id="someone/missing"), tmp_path / "raw")
    message = str(caught.value)
    assert str(hub_cache) in message and "HF_HUB_OFFLINE" in message
    assert "huggingface-cli download someone/missing" in message
    assert "data.source: local" in message


def _fake_hub(monkeypatch: pytest.MonkeyPatch, network_error: Exception) -> list[dict]:
    """Replace the download: cache always misses, every network call fails the same way."""
    calls: list[dict] = []

    def fake_snapshot_download(**kwargs: Any) -> str:
        calls.append(kwargs)
        if kwargs.get("local_files_only"):
            raise LocalEntryNotFoundError("not cached")
        raise network_error

    monkeypatch.setattr(sources, "snapshot_download", fake_snapshot_download)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    return calls


def test_unreachable_hub_is_retried_then_reported(
    tmp_path: Path, hub_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _fake_hub(monkeypatch, requests.exceptions.ConnectionError("no route to host"))
    with pytest.raises(DataError) as caught:
        materialize_source(_cfg(source="hub", id="org/name"), tmp_path / "raw")
    assert len(calls) == 1 + 6  # cache lookup, first try, five retries
    assert all(call["cache_dir"] == str(hub_cache) for call in calls)
    message = str(caught.value)
    assert str(hub_cache) in message and "6 attempts" in message and "ConnectionError" in message


def test_gated_hub_says_how_to_get_access_without_retrying_or_leaking_token(
    tmp_path: Path, hub_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = "hf_abcdefghijklmnopqrstuvwxyz0123456789"
    monkeypatch.setenv("HF_TOKEN", token)
    calls = _fake_hub(monkeypatch, GatedRepoError("403 gated"))
    with pytest.raises(DataError) as caught:
        materialize_source(_cfg(source="hub", id="org/name"), tmp_path / "raw")
    assert len(calls) == 2
    message = str(caught.value)
    assert "https://huggingface.co/datasets/org/name" in message
    assert "huggingface-cli login" in message and "HF_TOKEN" in message
    assert token not in message


def test_forbidden_status_is_reported_as_an_access_problem(
    tmp_path: Path, hub_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    response = requests.Response()
    response.status_code = 403
    _fake_hub(monkeypatch, HfHubHTTPError("403 Forbidden", response=response))
    with pytest.raises(DataError, match="accept the terms"):
        materialize_source(_cfg(source="hub", id="org/name"), tmp_path / "raw")


def _http_error(status: int) -> HfHubHTTPError:
    response = requests.Response()
    response.status_code = status
    return HfHubHTTPError(f"{status} error", response=response)


def _wrapped_connection_error() -> LocalEntryNotFoundError:
    """What snapshot_download raises when its API call lost the connection."""
    error = LocalEntryNotFoundError("cannot find the requested files")
    error.__cause__ = requests.exceptions.ConnectionError("reset")
    return error


@pytest.mark.parametrize(
    ("network_error", "n_calls", "expected"),
    [
        (_http_error(503), 7, "did not answer"),
        (_wrapped_connection_error(), 7, "did not answer"),
        (RepositoryNotFoundError("404"), 2, "does not exist or is private"),
        (RevisionNotFoundError("404"), 2, "data.revision"),
        (ValueError("unexpected"), 2, "did not answer"),
    ],
)
def test_hub_errors_retry_only_what_may_pass(
    tmp_path: Path,
    hub_cache: Path,
    monkeypatch: pytest.MonkeyPatch,
    network_error: Exception,
    n_calls: int,
    expected: str,
) -> None:
    calls = _fake_hub(monkeypatch, network_error)
    with pytest.raises(DataError, match=expected):
        materialize_source(_cfg(source="hub", id="org/name"), tmp_path / "raw")
    assert len(calls) == n_calls


def test_cached_snapshot_without_the_csvs_falls_back_to_the_network(
    tmp_path: Path, hub_cache: Path, csv_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty, full = tmp_path / "snap" / COMMIT, tmp_path / "net" / ("f" * 40)
    empty.mkdir(parents=True)
    shutil.copytree(csv_folder, full)

    def fake_snapshot_download(**kwargs: Any) -> str:
        return str(empty if kwargs.get("local_files_only") else full)

    monkeypatch.setattr(sources, "snapshot_download", fake_snapshot_download)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    result = materialize_source(_cfg(source="hub"), tmp_path / "raw")
    assert result["resolved_revision"] == "f" * 40


def test_snapshot_without_redsm5_files_lists_what_it_has(
    tmp_path: Path, hub_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    snapshot = tmp_path / "net" / COMMIT
    (snapshot / "x").mkdir(parents=True)
    (snapshot / "x" / "other.csv").write_text("a,b\n")
    monkeypatch.setattr(sources, "snapshot_download", lambda **kwargs: str(snapshot))
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    with pytest.raises(DataError, match=r"found CSV files \['x/other.csv'\]"):
        materialize_source(_cfg(source="hub"), tmp_path / "raw")


def test_hub_cache_location_is_read_at_call_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    assert sources.hub_cache_dir() == tmp_path / "home" / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    assert sources.hub_cache_dir() == tmp_path / "cache"


def test_prepare_dataset_writes_splits_and_a_stable_report(tmp_path: Path) -> None:
    report = prepare_dataset(_cfg(), tmp_path / "one")
    again = prepare_dataset(_cfg(), tmp_path / "two")
    assert report["fingerprint"] == again["fingerprint"]
    for name in ("train.jsonl", "validation.jsonl", "test.jsonl", "data_report.json"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()
    assert json.loads((tmp_path / "one" / "data_report.json").read_text()) == report
    assert report["n_posts"] == 60
    # By author (the default) the sizes follow the ratios as closely as whole authors and the
    # symptom floors allow; the post split (group_by none) hits them exactly.
    sizes = {name: split["posts"] for name, split in report["splits"].items()}
    assert sum(sizes.values()) == 60 and sizes["validation"] >= 6 and sizes["test"] >= 6
    by_post = prepare_dataset(_cfg(split={**SPLIT, "group_by": "none"}), tmp_path / "post")
    assert {name: split["posts"] for name, split in by_post["splits"].items()} == {
        "train": 48,
        "validation": 6,
        "test": 6,
    }
    train = load_split(tmp_path / "one", "train")
    assert len(train) == sizes["train"]
    positives = report["splits"]["train"]["positive_posts_per_symptom"]
    assert positives["DEPRESSED_MOOD"] == sum(post["labels"][0] for post in train)
    assert report["splits"]["train"]["posts_without_symptom"] == sum(
        1 for post in train if not any(post["labels"])
    )
    assert set(report["raw_sha256"]) == {"redsm5_posts.csv", "redsm5_annotations.csv"}
    assert report["cleaning"]["rows_read"]["posts"] == 60
    assert report["split_ratios"] == {"train": 0.8, "validation": 0.1, "test": 0.1}
    assert report["split_seed"] == 42 and report["revision"] == "v4-long_tailed-n60-s42"
    assert not list((tmp_path / "one").glob(".*.tmp"))


def test_fingerprint_changes_when_the_split_changes(tmp_path: Path) -> None:
    base = prepare_dataset(_cfg(), tmp_path / "a")["fingerprint"]
    other_seed = _cfg(split={**SPLIT, "seed": 43})
    assert prepare_dataset(other_seed, tmp_path / "b")["fingerprint"] != base


def test_prepare_from_hub_records_the_commit(tmp_path: Path, hub_cache: Path) -> None:
    report = prepare_dataset(_cfg(source="hub"), tmp_path / "out")
    assert report["resolved_revision"] == COMMIT
    assert (tmp_path / "out" / "raw" / "redsm5_posts.csv").is_file()
    assert report["n_posts"] == 30


def test_load_split_errors_are_actionable(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="prepare_dataset"):
        load_split(tmp_path, "train")
    with pytest.raises(DataError, match="valid splits"):
        load_split(tmp_path, "dev")
