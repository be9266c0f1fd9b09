"""The length report: long posts and the evidence each input mode reaches, per split."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import tiny_config_dict

from leanhpo.cli import main
from leanhpo.config import Config
from leanhpo.data import load_split, prepare_dataset
from leanhpo.data.splits import SPLIT_NAMES
from leanhpo.models import load_encoder
from leanhpo.training.lengths import length_report

MAX_LENGTH = 128


@pytest.fixture(scope="module")
def long_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A long-tailed sample of 150 posts: some run to thousands of tokens."""
    out = tmp_path_factory.mktemp("long")
    config = tiny_config_dict(out, data={"sample_posts": 150, "sample_profile": "long_tailed"})
    prepare_dataset(config["data"], out)
    return out


def model_config(**model: object) -> Config:
    return Config.from_dict({"model": {"id": "tiny", "max_length": MAX_LENGTH, **model}})


def test_counts_match_a_direct_tokenisation(long_data: Path) -> None:
    """Post lengths and evidence start positions, checked by tokenising each evidence
    sentence's prefix on its own (sentences start at word boundaries, so the prefix's tokens
    are the post's first tokens)."""
    report = length_report(model_config(long_posts="truncate"), long_data)
    tokenizer = load_encoder("tiny")[1]
    for name in SPLIT_NAMES:
        posts = load_split(long_data, name)
        lengths = [len(tokenizer(p["text"], verbose=False)["input_ids"]) for p in posts]
        starts = [
            len(tokenizer(p["text"][:start], verbose=False)["input_ids"]) - 1  # [SEP] dropped
            for p in posts
            for spans in p["evidence"]
            for start, _ in spans
        ]
        split = report["splits"][name]
        assert split["posts"] == len(posts)
        assert split["tokens"]["max"] == max(lengths)
        assert split["posts_over_max_length"] == sum(n > MAX_LENGTH for n in lengths)
        assert split["evidence_sentences"] == len(starts)
        assert split["evidence_starting_past_max_length"] == sum(s >= MAX_LENGTH for s in starts)
        assert split["evidence_start_token"]["max"] == max(starts)
    train = report["splits"]["train"]
    assert train["posts_over_max_length"] > 0 and train["evidence_starting_past_max_length"] > 0
    assert list(train["reach"]) == ["truncate"]


def test_windows_reach_every_evidence_pair_that_truncation_misses(long_data: Path) -> None:
    report = length_report(model_config(long_posts="windows", max_windows=64), long_data)
    assert report["long_posts"] == "windows" and report["max_windows"] == 64
    missed = 0
    for split in report["splits"].values():
        truncate, windows = split["reach"]["truncate"], split["reach"]["windows"]
        assert truncate["evidence_pairs"] == windows["evidence_pairs"] > 0
        assert windows["evidence_pairs_unreached"] == 0
        assert windows["units_over_max_windows"] == 0
        assert windows["rows"] > truncate["rows"] == split["posts"]
        missed += truncate["evidence_pairs_unreached"]
    assert missed > 0  # the sample does hold evidence that truncation cannot see


def test_a_window_cap_is_counted(long_data: Path) -> None:
    capped = length_report(model_config(long_posts="windows", max_windows=2), long_data)
    train = capped["splits"]["train"]["reach"]["windows"]
    assert train["units_over_max_windows"] > 0
    assert train["rows"] <= 2 * capped["splits"]["train"]["posts"]
    assert train["evidence_pairs_unreached"] > 0


def test_cli_writes_the_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tiny_config_dict(tmp_path, data={"sample_posts": 40})
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(yaml.safe_dump(config))
    monkeypatch.chdir(tmp_path)
    assert main(["prepare-data", "--config", str(overlay)]) == 0
    assert main(["length-report", "--config", str(overlay)]) == 0
    written = json.loads(
        (tmp_path / "experiments" / "tiny" / "data" / "length_report.json").read_text()
    )
    assert set(written["splits"]) == set(SPLIT_NAMES)
    assert written["max_length"] == config["model"]["max_length"]
