"""Features: sentence candidates and targets, truncation accounting, batches."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from leanhpo.metric_names import SYMPTOMS
from leanhpo.models import IGNORE_INDEX, NULL_INDEX, load_encoder
from leanhpo.training.features import collate, encode_posts, sentence_char_spans

SLEEP = SYMPTOMS.index("SLEEP_ISSUES")
FATIGUE = SYMPTOMS.index("FATIGUE")


@pytest.fixture(scope="module")
def tokenizer():
    return load_encoder("tiny", seed=0)[1]


def _post(text: str, evidence: dict[int, list[str]]) -> dict:
    labels, spans = [0] * len(SYMPTOMS), [[] for _ in SYMPTOMS]
    for symptom, sentences in evidence.items():
        labels[symptom] = 1
        spans[symptom] = [[text.index(s), text.index(s) + len(s)] for s in sentences]
    return {"post_id": "p", "text": text, "labels": labels, "evidence": spans}


def _check_partition(text: str, spans: list[tuple[int, int]]) -> None:
    """Sorted, disjoint, stripped, and every non-space character lies in one sentence."""
    covered: set[int] = set()
    for (start, end), following in zip(spans, [*spans[1:], (len(text), 0)], strict=False):
        assert start < end <= following[0]
        assert text[start:end] == text[start:end].strip()
        covered |= set(range(start, end))
    assert all(i in covered for i, char in enumerate(text) if not char.isspace())


def test_sentences_split_the_text_and_find_the_sample_evidence(sample_posts):
    exact = total = 0
    for post in sample_posts["train"]:
        spans = sentence_char_spans(post["text"])
        _check_partition(post["text"], spans)
        for symptom_spans in post["evidence"]:
            for start, end in symptom_spans:
                total += 1
                exact += (start, end) in spans
    assert total and exact == total  # the generator writes whole sentences; Punkt finds them
    text = "no punctuation here\nnext line. And another one!  Last"
    pieces = [text[a:b] for a, b in sentence_char_spans(text)]
    assert pieces == ["no punctuation here", "next line.", "And another one!", "Last"]


@settings(max_examples=60, deadline=None)
@given(text=st.text(alphabet="ab .!?\n", min_size=1, max_size=80))
def test_sentences_partition_any_text(text):
    _check_partition(text, sentence_char_spans(text))


def test_sentence_candidates_ignore_the_annotations(sample_posts, tokenizer):
    """The reranker's inputs never carry gold information: the same post with its evidence
    removed gets the same candidate sentences."""
    posts = [p for p in sample_posts["train"] if any(p["evidence"])][:5]
    blind = [{**p, "evidence": [[] for _ in p["evidence"]]} for p in posts]
    with_gold = encode_posts(posts, tokenizer, "multi_label", 128)
    without = encode_posts(blind, tokenizer, "multi_label", 128)
    for a, b in zip(with_gold.examples, without.examples, strict=True):
        assert a.sentence_spans == b.sentence_spans


def test_the_module_says_what_the_code_does_about_sentence_candidates():
    """Issue 25: the module docstring said the candidates include the annotated sentences; the
    code (tested above) builds them from the text alone."""
    from leanhpo.training import features

    doc = " ".join((features.__doc__ or "").split())
    assert "annotated evidence sentences" not in doc
    assert "come from the text alone" in doc and "The annotations never shape them" in doc


@pytest.mark.parametrize("input_format", ["multi_label", "binary_pairs"])
def test_sentence_spans_and_targets_point_at_the_gold_sentence(
    sample_posts, tokenizer, input_format
):
    posts = [p for p in sample_posts["train"] if any(p["labels"])]
    split = encode_posts(posts, tokenizer, input_format, 128)
    checked = 0
    for example in split.examples:
        spans = example.sentence_spans
        assert spans and all(0 < s <= e for s, e in spans)
        assert all(example.span_mask[s] and example.span_mask[e] for s, e in spans)
        assert all(a[1] < b[0] for a, b in itertools.pairwise(spans))
        for out, target in enumerate(example.sentence_targets):
            start, end = example.start_positions[out], example.end_positions[out]
            if start == IGNORE_INDEX:
                assert target == IGNORE_INDEX
            elif start == NULL_INDEX:
                assert target == 0
            else:
                assert spans[target - 1] == (start, end)
                checked += 1
    assert checked > 5


def test_overlapping_evidence_targets_the_sentence_that_overlaps_most(tokenizer):
    text = "Hello there. I am always tired and I cannot sleep at night. Bye now."
    post = _post(text, {SLEEP: ["I cannot sleep at night."], FATIGUE: ["I am always tired"]})
    # two evidence spans inside one Punkt sentence: both target that (longer) sentence
    example = encode_posts([post], tokenizer, "multi_label", 64).examples[0]
    sleep_target = example.sentence_targets[SLEEP]
    assert example.sentence_targets[FATIGUE] == sleep_target > 0
    start, end = example.sentence_spans[sleep_target - 1]
    assert start == example.start_positions[FATIGUE] < example.start_positions[SLEEP]
    assert end == example.end_positions[SLEEP]
    # evidence inside another symptom's evidence: it targets the sentence that holds it
    inner = _post(text, {SLEEP: ["I am always tired and I cannot sleep at night."]})
    inner["evidence"][FATIGUE] = [[text.index("always"), text.index("always") + 6]]
    inner["labels"][FATIGUE] = 1
    example = encode_posts([inner], tokenizer, "multi_label", 64).examples[0]
    assert example.sentence_targets[FATIGUE] == example.sentence_targets[SLEEP] > 0


def test_truncation_drops_late_sentences_and_excludes_their_evidence(tokenizer):
    filler = "I went to the shops today and bought some bread. " * 12
    evidence = "I can't sleep at night anymore."
    post = _post(filler + evidence, {SLEEP: [evidence]})
    split = encode_posts([post], tokenizer, "multi_label", 48)
    example = split.examples[0]
    last_token = max(i for i, keep in enumerate(example.span_mask) if keep)
    assert all(e <= last_token for _, e in example.sentence_spans)
    assert len(example.sentence_spans) < 13
    assert example.sentence_targets[SLEEP] == IGNORE_INDEX  # excluded, never null
    assert example.sentence_targets[FATIGUE] == 0
    assert split.stats["evidence_pairs_outside_window"] == 1


def test_collate_pads_sentences_as_empty_rows(sample_posts, tokenizer):
    split = encode_posts(sample_posts["train"][:6], tokenizer, "binary_pairs", 64)
    batch = collate(split.examples[:12], 0)
    widest = max(len(e.sentence_spans) for e in split.examples[:12])
    assert batch["sentence_spans"].shape == (12, widest, 2)
    assert batch["sentence_targets"].shape == (12, 1)
    for row, example in enumerate(split.examples[:12]):
        padding = batch["sentence_spans"][row, len(example.sentence_spans) :]
        assert (padding[:, 1] < padding[:, 0]).all()
    empty = collate([split.examples[0]], 0)
    assert empty["sentence_spans"].shape[1] >= 1
    assert torch.equal(
        batch["sentence_spans"][0, : len(split.examples[0].sentence_spans)],
        torch.tensor(split.examples[0].sentence_spans),
    )
