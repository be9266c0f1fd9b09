"""The split by author (issue 25): authors and near-duplicates stay in one split, every symptom
reaches validation and test where the data allows, and `group_by: none` is the old post split."""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
import random
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from leanhpo.data import DataError, load_redsm5, prepare_dataset
from leanhpo.data.splits import (
    SPLIT_NAMES,
    EmptySplitError,
    author_of,
    find_near_duplicates,
    split_dataset,
)
from leanhpo.data.splits.near_duplicates import jaccard, shingles
from leanhpo.data.splits.stratify import Group, stratify
from leanhpo.data.symptoms import SYMPTOMS
from leanhpo.reports import load_schema

SPLIT = {"train": 0.8, "validation": 0.1, "test": 0.1, "seed": 42}


def write_authored_csvs(folder: Path, n_posts: int = 150, seed: int = 5) -> Path:
    """Local ReDSM5 CSVs with author ids, made the same way on every machine."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    posts, rows = [], []
    author = 0
    while len(posts) < n_posts:
        author += 1
        for k in range(min(rng.choice((1, 1, 1, 2, 3, 5, 8)), n_posts - len(posts))):
            post_id = f"s_{author}_{k}"
            symptoms = [s for s in SYMPTOMS if rng.random() < 0.2]
            sentences = [f"Post {k} of writer {author}, about day {rng.randrange(1000)}."]
            sentences += [f"Here is evidence for {s.lower()} in post {post_id}." for s in symptoms]
            posts.append([post_id, " ".join(sentences)])
            for index, symptom in enumerate(symptoms, start=1):
                rows.append([post_id, f"{post_id}_{index}", sentences[index], symptom, "1", ""])
    header = ("post_id", "sentence_id", "sentence_text", "DSM5_symptom", "status", "explanation")
    for name, columns, body in (
        ("redsm5_posts.csv", ("post_id", "text"), posts),
        ("redsm5_annotations.csv", header, rows),
    ):
        with (folder / name).open("w", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(columns)
            writer.writerows(body)
    return folder


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _split_of(out: Path) -> dict[str, str]:
    found = {}
    for name in SPLIT_NAMES:
        for line in (out / f"{name}.jsonl").read_text().splitlines():
            found[json.loads(line)["post_id"]] = name
    return found


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """config.yaml's demo data: 400 short sample posts, the default split."""
    out = tmp_path_factory.mktemp("demo")
    cfg = {"source": "sample", "sample_posts": 400, "sample_profile": "short", "split": SPLIT}
    return out, prepare_dataset(cfg, out)


# sha256 of the prepared splits of write_authored_csvs(150, seed 5), split 80/10/10 seed 42, by
# leanhpo before issue 25 (commit 8929947): `group_by: none` must give the same bytes.
BEFORE_ISSUE_25 = {
    "train": "2bd66a3256f35473d12173e4f78e0138f89232056a89174ba87c8138ab17b501",
    "validation": "6c916de9d0a8f2f972923f7fbaf9c22f6de69d3edb06547af87c4ee50f55553e",
    "test": "d685968946bf49ffd2d7fc8cedd3633a96d18734c14d8f7bd4459a0f2dd643bc",
    "fingerprint": "d59e8b8f6b4b239e2c50a6434128a72092720ce8bb07d6ed35af48f955b0a097",
}


def test_group_by_none_gives_the_old_post_split_byte_for_byte(tmp_path: Path) -> None:
    folder = write_authored_csvs(tmp_path / "csv")
    cfg = {"source": "local", "path": str(folder), "split": {**SPLIT, "group_by": "none"}}
    report = prepare_dataset(cfg, tmp_path / "out")
    found = {name: _sha(tmp_path / "out" / f"{name}.jsonl") for name in SPLIT_NAMES}
    assert {**found, "fingerprint": report["fingerprint"]} == BEFORE_ISSUE_25
    # ... and it leaks: authors cross the split, which the report counts.
    assert report["split"]["authors"]["authors_in_more_than_one_split"] > 0
    assert report["split"]["authors"]["test_posts_with_author_in_train"] > 0
    assert report["split"]["groups"] is None


def test_no_author_has_posts_in_two_splits(demo: tuple[Path, dict[str, Any]]) -> None:
    out, report = demo
    split_of = _split_of(out)
    by_author: dict[str, set[str]] = {}
    for post_id, name in split_of.items():
        by_author.setdefault(post_id.split("_")[1], set()).add(name)
    assert len(by_author) > 100 and all(len(names) == 1 for names in by_author.values())
    authors = report["split"]["authors"]
    assert authors["authors"] == len(by_author) and authors["posts_without_author"] == 0
    assert authors["authors_in_more_than_one_split"] == 0
    assert authors["test_posts_with_author_in_train"] == 0
    assert report["split"]["group_by"] == "author"


def test_no_near_duplicate_pair_is_split_and_each_is_reported(
    demo: tuple[Path, dict[str, Any]],
) -> None:
    out, report = demo
    posts, _ = load_redsm5(out / "raw" / "redsm5_posts.csv", out / "raw" / "redsm5_annotations.csv")
    texts = {post["post_id"]: post["text"] for post in posts}
    split_of = _split_of(out)
    # Checked against every pair, not against the report's own list.
    sets = {post_id: shingles(text) for post_id, text in texts.items()}
    pairs = [
        (a, b)
        for a, b in itertools.combinations(sorted(sets), 2)
        if jaccard(sets[a], sets[b]) >= 0.8
    ]
    assert len(pairs) >= 10
    assert all(split_of[a] == split_of[b] for a, b in pairs)
    duplicates = report["split"]["near_duplicates"]
    assert [pair["posts"] for pair in duplicates["pairs"]] == [list(pair) for pair in pairs]
    assert duplicates["pairs_across_splits"] == 0
    assert sum(duplicates["cluster_sizes"]) == duplicates["posts_in_clusters"]
    assert duplicates["shingle_words"] == 5 and duplicates["jaccard_threshold"] == 0.8


def test_the_post_split_would_have_split_near_duplicates(tmp_path: Path) -> None:
    cfg = {"source": "sample", "sample_posts": 400, "sample_profile": "short"}
    report = prepare_dataset({**cfg, "split": {**SPLIT, "group_by": "none"}}, tmp_path)
    assert report["split"]["near_duplicates"]["pairs_across_splits"] > 0


@pytest.mark.parametrize(("n_posts", "profile"), [(400, "short"), (160, "long_tailed")])
def test_default_seed_gives_every_symptom_min_positives_in_validation_and_test(
    tmp_path: Path, n_posts: int, profile: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """config.yaml's demo data and the schema's default sample."""
    cfg = {"source": "sample", "sample_posts": n_posts, "sample_profile": profile, "split": SPLIT}
    report = prepare_dataset(cfg, tmp_path)
    for name in ("validation", "test"):
        positives = report["splits"][name]["positive_posts_per_symptom"]
        assert min(positives.values()) >= 3, (name, positives)
    assert report["split"]["below_min_positives"] == []
    assert "min_positives" not in capsys.readouterr().err


def test_a_symptom_short_of_min_positives_is_named_with_its_counts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """40 sample posts hold 2 PSYCHOMOTOR positives: no split can give validation and test 3."""
    told: list[str] = []
    cfg = {"source": "sample", "sample_posts": 40, "split": SPLIT}
    report = prepare_dataset(cfg, tmp_path, notify=told.append)
    below = {item["symptom"]: item for item in report["split"]["below_min_positives"]}
    assert "PSYCHOMOTOR" in below
    item = below["PSYCHOMOTOR"]
    assert item["total"] == item["train"] + item["validation"] + item["test"]
    assert min(item["validation"], item["test"]) < 3
    message = item["message"]
    assert "PSYCHOMOTOR" in message and "data.split.min_positives=3" in message
    assert f"{item['validation']} in validation" in message or f"{item['test']} in test" in message
    assert told == [entry["message"] for entry in report["split"]["below_min_positives"]]
    assert message in capsys.readouterr().err  # the rule's log, when run by Snakemake
    for name in ("validation", "test"):  # every count agrees with the per-split counts
        for symptom, entry in below.items():
            assert entry[name] == report["splits"][name]["positive_posts_per_symptom"][symptom]


def test_min_positives_zero_names_nothing(tmp_path: Path) -> None:
    cfg = {"source": "sample", "sample_posts": 40, "split": {**SPLIT, "min_positives": 0}}
    assert prepare_dataset(cfg, tmp_path)["split"]["below_min_positives"] == []


def test_the_split_is_the_same_on_every_run_and_for_any_input_order(tmp_path: Path) -> None:
    cfg = {"source": "sample", "sample_posts": 200, "split": SPLIT}
    first = prepare_dataset(cfg, tmp_path / "a")
    second = prepare_dataset(cfg, tmp_path / "b")
    assert first["fingerprint"] == second["fingerprint"]
    for name in (*(f"{n}.jsonl" for n in SPLIT_NAMES), "data_report.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    posts, _ = load_redsm5(
        tmp_path / "a" / "raw" / "redsm5_posts.csv",
        tmp_path / "a" / "raw" / "redsm5_annotations.csv",
    )
    shuffled = list(posts)
    random.Random(3).shuffle(shuffled)
    assert split_dataset(shuffled, SPLIT).splits == split_dataset(posts, SPLIT).splits
    other = split_dataset(posts, {**SPLIT, "seed": 43}).splits
    assert other["test"] != split_dataset(posts, SPLIT).splits["test"]


def test_pinned_author_split_of_fixed_data(tmp_path: Path) -> None:
    # A change here means the default split (and every downstream metric) changed.
    folder = write_authored_csvs(tmp_path / "csv")
    report = prepare_dataset({"source": "local", "path": str(folder), "split": SPLIT}, tmp_path)
    assert report["fingerprint"] == (
        "bfa711531cf52b77faed95ed968d11a0f8dba01bf1439005f4ae64d04a4bb9c1"
    )
    assert {name: split["posts"] for name, split in report["splits"].items()} == {
        "train": 120,
        "validation": 15,
        "test": 15,
    }


def test_posts_without_an_author_are_groups_of_their_own() -> None:
    posts = [
        {"post_id": f"p{i:03d}", "text": f"post number {i} says {i * 7}", "labels": [i % 2] * 9}
        for i in range(50)
    ]
    outcome = split_dataset(posts, SPLIT)
    assert outcome.report["authors"]["authors"] == 0
    assert outcome.report["authors"]["posts_without_author"] == 50
    assert outcome.report["groups"]["groups"] == 50
    assert sum(len(split) for split in outcome.splits.values()) == 50


def test_too_few_authors_for_three_splits_says_how_to_split_anyway(tmp_path: Path) -> None:
    posts = [
        {"post_id": f"s_{i % 2}_{i}", "text": f"text {i}", "labels": [0] * 9} for i in range(20)
    ]
    with pytest.raises(EmptySplitError) as caught:
        split_dataset(posts, SPLIT)
    assert "2 group(s)" in str(caught.value) and "group_by: none" in str(caught.value)
    assert split_dataset(posts, {**SPLIT, "group_by": "none"}).splits["test"]


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("group_by", "post"),
        ("min_positives", -1),
        ("min_positives", 2.5),
        ("near_duplicate_jaccard", 0),
    ],
)
def test_bad_split_options_name_the_key(key: str, value: Any) -> None:
    posts = [{"post_id": f"p{i}", "text": "x", "labels": [0] * 9} for i in range(30)]
    with pytest.raises(DataError, match=f"data.split.{key}"):
        split_dataset(posts, {**SPLIT, key: value})


@pytest.mark.parametrize(
    ("post_id", "author"),
    [("s_1270_9", "1270"), ("s_ab_cd_12", "ab_cd"), ("s_1000", None), ("p0001", None)],
)
def test_the_author_is_the_middle_of_the_post_id(post_id: str, author: str | None) -> None:
    assert author_of(post_id) == author


def test_the_data_report_follows_its_schema(demo: tuple[Path, dict[str, Any]]) -> None:
    out, report = demo
    schema = load_schema("data_report.schema.json")
    jsonschema.validate(json.loads((out / "data_report.json").read_text()), schema)
    broken = json.loads(json.dumps(report))
    broken["split"]["below_min_positives"] = [{"symptom": "PSYCHOMOTOR"}]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)


_WORDS = st.sampled_from(["i", "feel", "sad", "today", "and", "tired", "so", "very", "not"])


@settings(max_examples=60, deadline=None)
@given(
    texts=st.lists(st.lists(_WORDS, min_size=0, max_size=14), min_size=2, max_size=12),
    threshold=st.sampled_from([0.5, 0.7, 0.8, 1.0]),
)
def test_near_duplicates_are_exactly_the_pairs_above_the_threshold(
    texts: list[list[str]], threshold: float
) -> None:
    """The prefix-filtered join finds what comparing every pair finds."""
    by_id = {f"p{i:02d}": " ".join(words) for i, words in enumerate(texts)}
    sets = {post_id: shingles(text) for post_id, text in by_id.items()}
    expected = [
        (a, b)
        for a, b in itertools.combinations(sorted(by_id), 2)
        if sets[a] and sets[b] and jaccard(sets[a], sets[b]) >= threshold
    ]
    found = find_near_duplicates(by_id, threshold)
    assert [(pair.first, pair.second) for pair in found] == expected
    assert all(pair.jaccard == jaccard(sets[pair.first], sets[pair.second]) for pair in found)


def test_normalisation_ignores_case_punctuation_and_spacing() -> None:
    base = "I can't sleep at night and I feel tired all day long, every day."
    noisy = "i CAN'T   sleep at night; and i feel tired all day long every day!!"
    assert shingles(base) == shingles(noisy)
    assert [(p.first, p.second) for p in find_near_duplicates({"a": base, "b": noisy})] == [
        ("a", "b")
    ]


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_stratification_places_every_group_and_spreads_a_label_over_the_splits(seed: int) -> None:
    rng = random.Random(seed)
    groups = [
        Group(f"g{i:03d}", rng.choice((1, 1, 1, 2, 4, 9)), (int(rng.random() < 0.15), 0))
        for i in range(120)
    ]
    fractions = {"train": 0.8, "validation": 0.1, "test": 0.1}
    assignment = stratify(groups, fractions, 3, random.Random(seed))
    assert set(assignment) == {group.key for group in groups}
    total = sum(group.positives[0] for group in groups)
    for name in ("validation", "test"):
        held = sum(g.positives[0] for g in groups if assignment[g.key] == name)
        assert held >= min(3, (total - 1) // 2)


def test_a_study_prepared_before_the_split_keys_is_refused_naming_them(tmp_path: Path) -> None:
    """Its splits were made by post: continuing it under the new keys would mix two splits, so
    the workflow guard refuses before anything runs (keep the old leanhpo, or a new study)."""
    import base64

    from leanhpo.workflow.guard import rerun_changes, rerun_refusal
    from leanhpo.workflow.params import as_params

    old = {"data": {"source": "sample", "split": SPLIT}}
    now = {"data": {"source": "sample", "split": {**SPLIT, "group_by": "author"}}}
    output = "experiments/demo/data/data_report.json"
    (tmp_path / output).parent.mkdir(parents=True)
    (tmp_path / output).write_text("{}")
    record = (
        tmp_path / ".snakemake" / "metadata" / base64.urlsafe_b64encode(output.encode()).decode()
    )
    record.parent.mkdir(parents=True)
    params = sorted(repr(value) for value in as_params(old).values())
    record.write_text(json.dumps({"rule": "prepare_dataset", "params": params}))
    changes = rerun_changes("experiments/demo", {"prepare_dataset": as_params(now)}, tmp_path)
    message = rerun_refusal("demo", changes, rerun_finished=True, n_trials=3)
    assert message is not None and 'data.split.group_by: (not set) -> "author"' in message
    assert "new study.name" in message


@st.composite
def _authored_posts(draw: st.DrawFn) -> list[dict]:
    n_authors = draw(st.integers(3, 40))
    posts = []
    for author in range(n_authors):
        for k in range(draw(st.integers(1, 6))):
            labels = draw(st.lists(st.integers(0, 1), min_size=9, max_size=9))
            # a few texts repeat across authors: near-duplicates join their groups
            text = draw(
                st.sampled_from([f"unique post {author} {k} about things", "same old text"])
            )
            posts.append({"post_id": f"s_{author}_{k}", "text": text, "labels": labels})
    return posts


@settings(max_examples=60, deadline=None)
@given(posts=_authored_posts(), seed=st.integers(0, 1000))
def test_any_authored_data_keeps_authors_and_duplicates_whole(posts: list[dict], seed: int) -> None:
    try:
        outcome = split_dataset(posts, {**SPLIT, "seed": seed})
    except EmptySplitError:
        return  # too few posts or groups for three splits: said so
    split_of = {p["post_id"]: name for name, split in outcome.splits.items() for p in split}
    assert sorted(split_of) == sorted(p["post_id"] for p in posts)
    assert all(outcome.splits[name] for name in SPLIT_NAMES)
    by_author: dict[str | None, set[str]] = {}
    for post_id, name in split_of.items():
        by_author.setdefault(author_of(post_id), set()).add(name)
    assert all(len(names) == 1 for names in by_author.values())
    duplicates = [p["post_id"] for p in posts if p["text"] == "same old text"]
    assert len({split_of[post_id] for post_id in duplicates}) <= 1
