"""Evidence-only augmentation: the text outside evidence is untouched, spans follow the rewrite.

Most properties run on random posts with a fake rewriter (fast, many examples); the TextAttack
tests need the NLTK corpora from `make nltk-data` and import TextAttack once per session.
"""

from __future__ import annotations

import copy
import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from leanhpo.data import SYMPTOMS, DataError, generate_sample, load_redsm5
from leanhpo.data.augment import (
    AUGMENTATION_METHODS,
    DEFAULT_METHODS,
    DOWNLOAD_METHODS,
    augment_posts,
    augment_sentence,
    augment_split,
    augmentation_config_problems,
)
from leanhpo.data.nltk_data import default_dest, missing_resources

N_SYMPTOMS = len(SYMPTOMS)
NLTK_FOLDERS = os.environ.get("NLTK_DATA", str(default_dest())).split(os.pathsep)
NLTK_READY = any(not missing_resources(Path(folder)) for folder in NLTK_FOLDERS if folder)
needs_nltk = pytest.mark.skipif(
    not NLTK_READY,
    reason=f"NLTK corpora wordnet/stopwords not found in {NLTK_FOLDERS}: run `make nltk-data`",
)
REPO = Path(__file__).resolve().parents[1]


def fake_rewrite(sentence: str, method: str, seed: int) -> str | None:
    """Shorter, longer, empty and missing outputs, all determined by the arguments."""
    kind = seed % 4
    if kind == 0:
        return None
    if kind == 1:
        return ""
    if kind == 2:
        return sentence[: max(1, len(sentence) // 2)] + "~"
    return f"«{method}»{sentence.upper()}" + "é" * (seed % 3)


class Recorder:
    """Wraps a rewriter and remembers every output per input sentence."""

    def __init__(self, rewrite: Any = fake_rewrite) -> None:
        self.rewrite = rewrite
        self.outputs: dict[str, set[str]] = {}

    def __call__(self, sentence: str, method: str, seed: int) -> str | None:
        produced = self.rewrite(sentence, method, seed)
        self.outputs.setdefault(sentence, set()).add(produced or "")
        return produced


@st.composite
def posts_with_evidence(draw: st.DrawFn, post_id: str | None = None) -> dict[str, Any]:
    n = draw(st.integers(0, 5))
    fillers = draw(st.lists(st.text(max_size=25), min_size=n + 1, max_size=n + 1))
    sentences = draw(st.lists(st.text(min_size=1, max_size=40), min_size=n, max_size=n))
    text, spans = fillers[0], list[tuple[int, int]]()
    for sentence, filler in zip(sentences, fillers[1:], strict=True):
        spans.append((len(text), len(text) + len(sentence)))
        text += sentence + filler
    evidence: list[set[tuple[int, int]]] = [set() for _ in range(N_SYMPTOMS)]
    for span in spans:  # each sentence is evidence of one to three symptoms
        for symptom in draw(st.sets(st.integers(0, N_SYMPTOMS - 1), min_size=1, max_size=3)):
            evidence[symptom].add(span)
    overlap = draw(st.booleans())
    if spans and overlap:  # a span that partly overlaps another one
        start, end = draw(st.sampled_from(spans))
        cut = draw(st.integers(start, end))
        evidence[draw(st.integers(0, N_SYMPTOMS - 1))].add((cut, min(len(text), end + 3)))
    return {
        "post_id": post_id or draw(st.text("abcxyz0123_", min_size=1, max_size=8)),
        "text": text,
        "labels": [int(bool(symptom_spans)) for symptom_spans in evidence],
        "evidence": [[list(span) for span in sorted(chosen)] for chosen in evidence],
        "unlocated": draw(st.lists(st.integers(0, 2), min_size=N_SYMPTOMS, max_size=N_SYMPTOMS)),
        "negations": draw(st.lists(st.integers(0, 2), min_size=N_SYMPTOMS, max_size=N_SYMPTOMS)),
    }


def unique_spans(post: dict) -> list[tuple[int, int]]:
    return sorted({(s, e) for spans in post["evidence"] for s, e in spans})


def assert_consistent(before: dict, after: dict, outputs: dict[str, set[str]] | None) -> None:
    """The invariants every augmented post must keep (see the module docstring of augment)."""
    assert {k: v for k, v in after.items() if k not in ("text", "evidence")} == {
        k: v for k, v in before.items() if k not in ("text", "evidence")
    }
    moved: dict[tuple[int, int], tuple[int, int]] = {}
    for old_spans, new_spans in zip(before["evidence"], after["evidence"], strict=True):
        assert len(new_spans) == len(old_spans)
        assert new_spans == sorted(new_spans)  # same order, still sorted
        for old, new in zip(old_spans, new_spans, strict=True):
            assert 0 <= new[0] <= new[1] <= len(after["text"])
            # a span shared by several symptoms moves to one place
            assert moved.setdefault((old[0], old[1]), (new[0], new[1])) == (new[0], new[1])
    old_units, new_units = unique_spans(before), [moved[span] for span in unique_spans(before)]
    # Text between evidence spans is byte-identical (the first and last segments included).
    old_edges = [0, *[x for span in old_units for x in span], len(before["text"])]
    new_edges = [0, *[x for span in new_units for x in span], len(after["text"])]
    for i in range(0, len(old_edges), 2):
        old_gap = before["text"][old_edges[i] : max(old_edges[i], old_edges[i + 1])]
        new_gap = after["text"][new_edges[i] : max(new_edges[i], new_edges[i + 1])]
        assert old_gap == new_gap
    for old, new in zip(old_units, new_units, strict=True):
        original, now = before["text"][old[0] : old[1]], after["text"][new[0] : new[1]]
        if now != original:
            assert outputs is not None and now in outputs[original]


@settings(max_examples=300, deadline=None)
@given(
    posts=st.lists(posts_with_evidence(), max_size=4, unique_by=lambda post: post["post_id"]),
    prob=st.floats(0, 0.5),
    methods=st.lists(st.sampled_from(list(AUGMENTATION_METHODS)), min_size=1, unique=True),
    seed=st.integers(0, 2**31),
    epoch=st.integers(0, 50),
)
def test_only_evidence_changes_and_spans_follow_it(
    posts: list[dict], prob: float, methods: list[str], seed: int, epoch: int
) -> None:
    frozen = copy.deepcopy(posts)
    recorder = Recorder()
    augmented, stats = augment_posts(posts, prob, methods, seed, epoch, rewrite=recorder)
    assert posts == frozen  # inputs untouched
    assert [post["post_id"] for post in augmented] == [post["post_id"] for post in posts]
    for before, after in zip(posts, augmented, strict=True):
        assert_consistent(before, after, recorder.outputs)
    assert stats["sentences_rewritten"] == sum(stats["by_method"].values())
    assert stats["sentences_selected"] == (
        stats["sentences_rewritten"] + stats["sentences_unchanged"]
    )
    assert len(stats["examples"]) == min(3, stats["sentences_rewritten"])


@settings(max_examples=60, deadline=None)
@given(posts=st.lists(posts_with_evidence(), max_size=4), seed=st.integers(0, 99))
def test_prob_zero_returns_identical_posts_without_rewriting(posts: list[dict], seed: int) -> None:
    def refuse(*args: Any) -> str:
        raise AssertionError("prob=0 must not rewrite")

    augmented, stats = augment_posts(posts, 0, DEFAULT_METHODS, seed, 1, rewrite=refuse)
    assert augmented == posts and augmented is not posts
    assert stats["sentences_rewritten"] == stats["posts_augmented"] == 0


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    posts=st.lists(posts_with_evidence(), min_size=2, max_size=6, unique_by=lambda p: p["post_id"]),
    seed=st.integers(0, 99),
    shuffle_seed=st.integers(0, 99),
)
def test_same_seed_and_epoch_give_the_same_posts_in_any_order(
    posts: list[dict], seed: int, shuffle_seed: int
) -> None:
    shuffled = list(posts)
    random.Random(shuffle_seed).shuffle(shuffled)
    first, first_stats = augment_posts(
        posts, 0.5, list(AUGMENTATION_METHODS), seed, 3, rewrite=fake_rewrite
    )
    again, again_stats = augment_posts(
        shuffled, 0.5, list(AUGMENTATION_METHODS), seed, 3, rewrite=fake_rewrite
    )
    assert sorted(first, key=lambda p: p["post_id"]) == sorted(again, key=lambda p: p["post_id"])
    assert first_stats == again_stats


@settings(max_examples=60, deadline=None)
@given(posts=st.lists(posts_with_evidence(), max_size=4, unique_by=lambda p: p["post_id"]))
def test_a_higher_prob_rewrites_a_superset_in_the_same_way(posts: list[dict]) -> None:
    calls: dict[float, set[tuple[str, str, int]]] = {0.2: set(), 0.45: set()}
    for prob, seen in calls.items():

        def record(sentence: str, method: str, seed: int, seen: set = seen) -> str | None:
            seen.add((sentence, method, seed))
            return fake_rewrite(sentence, method, seed)

        augment_posts(posts, prob, ["swap", "delete", "insert"], 5, 1, rewrite=record)
    assert calls[0.2] <= calls[0.45]
    # and the methods list does not change which sentences are drawn
    other: set[str] = set()
    augment_posts(posts, 0.2, ["char_perturb"], 5, 1, rewrite=lambda s, m, n: other.add(s))
    assert other == {sentence for sentence, _, _ in calls[0.2]}


def test_bad_spans_are_reported_not_rewritten_silently() -> None:
    post = {"post_id": "p1", "text": "short", "evidence": [[[2, 9]]] + [[]] * 8}
    with pytest.raises(DataError, match=r"p1.*\[2, 9\] outside its text"):
        augment_posts([post], 0.5, ["swap"], 1, 1, rewrite=fake_rewrite)


@pytest.mark.parametrize("method", sorted(DOWNLOAD_METHODS))
def test_download_methods_are_rejected_with_a_clear_message(method: str) -> None:
    problems = augmentation_config_problems(0.2, ["synonym", method])
    assert len(problems) == 1
    assert "train.augmentation_methods" in problems[0] and "needs a download" in problems[0]
    assert method in problems[0] and "synonym, insert, swap, delete, char_perturb" in problems[0]
    with pytest.raises(ValueError, match="needs a download"):
        augment_posts([], 0.2, [method], 1, 1)


def test_search_space_choices_are_checked_under_their_own_key() -> None:
    key = "search_space.augmentation_methods"
    problems = augmentation_config_problems(0.5, "synonym+clare", methods_key=key)
    assert len(problems) == 1 and problems[0].startswith(f"config key '{key}': 'clare' needs")


@pytest.mark.parametrize(
    ("prob", "methods", "expected"),
    [
        (0.0, list(DEFAULT_METHODS), None),
        (0.5, "synonym+char_perturb", None),
        (0.0, [], None),
        (0.6, ["swap"], "train.augmentation_prob"),
        (-0.1, ["swap"], "train.augmentation_prob"),
        (True, ["swap"], "train.augmentation_prob"),
        ("0.1", ["swap"], "train.augmentation_prob"),
        (0.1, [], "empty"),
        (0.1, ["synonyms"], "unknown method 'synonyms'"),
        (0.1, ["swap", "swap"], "more than once"),
        (0.1, 7, "expected a list"),
    ],
)
def test_config_problems_name_the_key(prob: Any, methods: Any, expected: str | None) -> None:
    problems = augmentation_config_problems(prob, methods)
    if expected is None:
        assert problems == []
    else:
        assert any(expected in problem for problem in problems), problems
        assert all(problem.startswith("config key 'train.augmentation_") for problem in problems)


@pytest.mark.parametrize("split", ["validation", "test", "val", "Train"])
def test_only_the_train_split_is_augmented(split: str) -> None:
    with pytest.raises(ValueError, match=f"refusing to augment the '{split}' split"):
        augment_split(split, [], 0.3, DEFAULT_METHODS, 1, 1, rewrite=fake_rewrite)


@given(post=posts_with_evidence(post_id="p1"))
@settings(max_examples=30, deadline=None)
def test_train_split_is_augmented_like_augment_posts(post: dict) -> None:
    direct = augment_posts([post], 0.5, ["swap"], 4, 2, rewrite=fake_rewrite)
    assert augment_split("train", [post], 0.5, ["swap"], 4, 2, rewrite=fake_rewrite) == direct


def test_a_failing_augmenter_keeps_the_sentence_and_says_so(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from leanhpo.data import augment

    class Broken:
        def augment(self, text: str) -> list[str]:
            raise IndexError("list index out of range")

    monkeypatch.setitem(augment._AUGMENTERS, "swap", Broken())
    sentences = [f"Sentence number {i} is evidence." for i in range(12)]
    text = " ".join(sentences)
    spans = [[text.index(sentence), text.index(sentence) + len(sentence)] for sentence in sentences]
    post = {"post_id": "p1", "text": text, "evidence": [spans] + [[]] * (N_SYMPTOMS - 1)}
    augmented, stats = augment_posts([post], 0.5, ["swap"], 1, 1)
    assert augmented == [post]
    assert stats["sentences_unchanged"] == stats["sentences_selected"] > 0
    assert "TextAttack swap failed" in caplog.text and "list index out of range" in caplog.text


# --- with TextAttack ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sample_posts(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    paths = generate_sample(tmp_path_factory.mktemp("augment_sample"), 80, seed=5)
    posts, _ = load_redsm5(paths["posts_csv"], paths["annotations_csv"])
    return posts


@needs_nltk
@pytest.mark.parametrize("method", list(AUGMENTATION_METHODS))
def test_each_offline_method_rewrites_evidence_on_the_sample(
    sample_posts: list[dict], method: str
) -> None:
    recorder = Recorder(augment_sentence)
    augmented, stats = augment_posts(sample_posts, 0.5, [method], 11, 1, rewrite=recorder)
    assert stats["by_method"][method] >= 20, stats
    assert stats["posts_augmented"] == sum(
        a != b for a, b in zip(augmented, sample_posts, strict=True)
    )
    for before, after in zip(sample_posts, augmented, strict=True):
        assert_consistent(before, after, recorder.outputs)
    example = stats["examples"][0]
    assert example["method"] == method and example["original"] != example["augmented"]


@needs_nltk
def test_textattack_runs_are_repeatable_and_leave_global_rngs_alone(
    sample_posts: list[dict],
) -> None:
    random.seed(123)
    np.random.seed(123)
    expected = (random.random(), np.random.random())
    random.seed(123)
    np.random.seed(123)
    first = augment_posts(sample_posts, 0.3, list(AUGMENTATION_METHODS), 7, 2)
    assert (random.random(), np.random.random()) == expected  # the trainer's streams go on
    assert (
        augment_posts(list(reversed(sample_posts)), 0.3, list(AUGMENTATION_METHODS), 7, 2)[1]
        == first[1]
    )
    assert augment_posts(sample_posts, 0.3, list(AUGMENTATION_METHODS), 7, 2) == first
    other_epoch = augment_posts(sample_posts, 0.3, list(AUGMENTATION_METHODS), 7, 3)
    assert other_epoch[0] != first[0]


@needs_nltk
@settings(max_examples=25, deadline=None)
@given(
    posts=st.lists(posts_with_evidence(), max_size=3, unique_by=lambda post: post["post_id"]),
    method=st.sampled_from(list(AUGMENTATION_METHODS)),
    seed=st.integers(0, 2**31),
)
def test_textattack_output_lands_exactly_in_the_spans(
    posts: list[dict], method: str, seed: int
) -> None:
    recorder = Recorder(augment_sentence)
    augmented, _ = augment_posts(posts, 0.5, [method], seed, 0, rewrite=recorder)
    for before, after in zip(posts, augmented, strict=True):
        assert_consistent(before, after, recorder.outputs)


PROBE = """
import hashlib, json, logging, sys
probe = logging.getLogger("leanhpo.probe")
from leanhpo.data import generate_sample, load_redsm5
from leanhpo.data.augment import AUGMENTATION_METHODS, augment_posts
paths = generate_sample(sys.argv[1], 30, seed=2)
posts, _ = load_redsm5(paths["posts_csv"], paths["annotations_csv"])
result = augment_posts(posts, 0.5, list(AUGMENTATION_METHODS), 9, 1)
print(json.dumps({"disabled": probe.disabled, "result": result}, sort_keys=True))
"""


@needs_nltk
@pytest.mark.slow
def test_same_output_in_another_process_and_loggers_stay_enabled(tmp_path: Path) -> None:
    # String hashing differs per process, and some TextAttack candidates come from sets.
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    run = subprocess.run(
        [sys.executable, "-c", PROBE, str(tmp_path / "data")],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    there = json.loads(run.stdout.strip().splitlines()[-1])
    assert there["disabled"] is False  # textattack's logging setup would disable it
    paths = generate_sample(tmp_path / "here", 30, seed=2)
    posts, _ = load_redsm5(paths["posts_csv"], paths["annotations_csv"])
    here = augment_posts(posts, 0.5, list(AUGMENTATION_METHODS), 9, 1)
    assert json.loads(json.dumps(here)) == there["result"]


def test_missing_corpora_give_a_fix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import nltk

    from leanhpo.data import augment

    monkeypatch.setattr(nltk.data, "path", [str(tmp_path)])
    monkeypatch.setattr(augment, "default_dest", lambda: tmp_path)
    with pytest.raises(DataError, match="make nltk-data"):
        augment.check_nltk_corpora()


def test_workflow_refuses_to_start_when_a_trial_could_need_missing_corpora(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Checked when the workflow starts, not when the first trial samples augmentation."""
    import nltk

    from leanhpo.config import validate_config
    from leanhpo.data import augment
    from leanhpo.workflow import augmentation_possible, environment_problems

    monkeypatch.setattr(nltk.data, "path", [str(tmp_path)])
    monkeypatch.setattr(augment, "default_dest", lambda: tmp_path)
    off = validate_config({"train": {"augmentation_prob": 0.0}})
    fixed = validate_config({"train": {"augmentation_prob": 0.1}})
    categorical = {"type": "categorical", "choices": [0.0, 0.2]}
    searched = validate_config({"search_space": {"augmentation_prob": categorical}})
    numeric = {"type": "float", "low": 0.0, "high": 0.0}
    never = validate_config({"search_space": {"augmentation_prob": numeric}})
    assert [augmentation_possible(c) for c in (off, fixed, searched, never)] == [
        False,
        True,
        True,
        False,
    ]
    assert environment_problems(off) == environment_problems(never) == []
    for config in (fixed, searched):
        (problem,) = environment_problems(config)
        assert "make nltk-data" in problem
