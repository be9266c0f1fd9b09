"""model.max_answer_tokens: auto (issue 25, item 6): by default the decoder may predict a span as
long as the longest gold evidence of the training split; resolved by each trial, recorded, and
reused unchanged by everything that decodes later."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import tiny_config_dict

from leanhpo.config import Config, ConfigError, validate_config
from leanhpo.models import load_encoder
from leanhpo.training.answer_length import (
    answer_tokens,
    longest_gold_tokens,
    resolve_answer_tokens,
)

LONG = "I have been lying awake every single night for weeks and weeks now without end."
TEXT = f"Hi. {LONG} Bye."


@pytest.fixture(scope="module")
def tokenizer():
    _, tokenizer, _ = load_encoder("tiny")
    return tokenizer


def _post(spans: list[list[int]]) -> dict:
    evidence: list[list[list[int]]] = [[] for _ in range(9)]
    evidence[3] = spans
    return {"text": TEXT, "labels": [0] * 9, "evidence": evidence}


def test_the_longest_gold_span_is_counted_in_tokens_as_span_targets_are(tokenizer) -> None:
    start = TEXT.index(LONG)
    tokens = tokenizer(LONG, add_special_tokens=False)["input_ids"]
    assert len(tokens) > 12  # longer than the cap a user might set by hand below
    short = [0, len("Hi.")]
    assert longest_gold_tokens(tokenizer, [_post([short])]) == 2  # "hi", "."
    assert longest_gold_tokens(tokenizer, [_post([short, [start, start + len(LONG)]])]) == len(
        tokens
    )
    # A span that starts or ends inside a word covers that word's token: "ave been ... en"
    # covers "have" to "end", every token but "i" and ".".
    inside = [start + 3, start + len(LONG) - 2]
    assert TEXT[inside[0] : inside[1]].startswith("ave been")
    assert longest_gold_tokens(tokenizer, [_post([inside])]) == len(tokens) - 2
    assert longest_gold_tokens(tokenizer, [_post([])]) == 0


def test_auto_is_the_default_and_resolves_to_the_training_splits_longest_span(
    tmp_path: Path, tokenizer
) -> None:
    config = Config.from_dict(tiny_config_dict(tmp_path))
    assert config.model.max_answer_tokens == "auto"
    start = TEXT.index(LONG)
    train = [_post([[start, start + len(LONG)]])]
    resolved = resolve_answer_tokens(config, tokenizer, train)
    expected = len(tokenizer(LONG, add_special_tokens=False)["input_ids"])
    assert resolved.model.max_answer_tokens == answer_tokens(resolved.model) == expected
    assert resolve_answer_tokens(config, tokenizer, [_post([])]).model.max_answer_tokens == 1
    fixed = Config.from_dict(tiny_config_dict(tmp_path, model={"max_answer_tokens": 12}))
    assert resolve_answer_tokens(fixed, tokenizer, train) is fixed  # a number is kept
    with pytest.raises(ValueError, match="must be resolved"):
        answer_tokens(config.model)
    for bad in (0, "longest", 5000):
        with pytest.raises(ConfigError, match=r"model\.max_answer_tokens"):
            validate_config({"model": {"max_answer_tokens": bad}})


@pytest.mark.slow
def test_a_trial_resolves_auto_records_it_and_the_study_decodes_with_it(tmp_path: Path) -> None:
    from studyhelper import exported_study

    from leanhpo.data import load_split
    from leanhpo.export import load_exported

    made = exported_study(tmp_path, {"train": {"epochs": 1}})
    study = made.study
    trial = study.run(0)  # the finished trial's report again
    _, tokenizer, _ = load_encoder("tiny")
    longest = longest_gold_tokens(tokenizer, load_split(study.data, "train"))
    assert longest > 1
    assert trial["resolved_settings"] == {
        "model.max_answer_tokens": {"configured": "auto", "resolved": longest}
    }
    assert trial["config"]["model"]["max_answer_tokens"] == longest
    assert made.report["config"]["model"]["max_answer_tokens"] == longest
    params = study.tracker().client.get_run(trial["mlflow"]["run_id"]).data.params
    assert params["resolved.model.max_answer_tokens"] == str(longest)
    assert load_exported(made.folder, "cpu").config.model.max_answer_tokens == longest


def test_a_study_that_ran_on_the_old_default_is_told_how_to_continue(tmp_path: Path) -> None:
    """The default changed from 96 to auto: a study that ran on 96 is refused like any other
    change of what a trial computes, and the refusal names the value that continues it."""
    import copy

    from leanhpo.trial.fingerprint import (
        StudyConfigMismatchError,
        check_trial_fingerprint,
        fingerprint,
        training_sections,
    )
    from leanhpo.workflow.guard import Change, rerun_refusal

    message = rerun_refusal(
        "demo", {"model.max_answer_tokens": Change(96, "auto", {"run_trial"}, {0})}, False, 3
    )
    assert message is not None and "earlier default of model.max_answer_tokens" in message
    assert "set model.max_answer_tokens: 96" in message
    config = tiny_config_dict(tmp_path)
    older = copy.deepcopy(config)
    older["model"]["max_answer_tokens"] = 96
    state = {"fingerprint": fingerprint(older, "d"), "fingerprint_config": training_sections(older)}
    with pytest.raises(StudyConfigMismatchError, match=r"set model\.max_answer_tokens: 96"):
        check_trial_fingerprint(state, fingerprint(config, "d"), config, "trial_0000")


def test_an_export_of_an_unresolved_config_is_refused(tmp_path: Path) -> None:
    """predict has no training split to resolve `auto` from: the export must hold a number."""
    from leanhpo.export import write_export
    from leanhpo.training.setup import build_network

    config = Config.from_dict(tiny_config_dict(tmp_path))
    info = {"config": config.to_dict(), "decision_threshold": 0.5, "null_threshold": 0.0}
    with pytest.raises(ValueError, match="max_answer_tokens 'auto'"):
        write_export(build_network(config, seed=3), info, "card", tmp_path / "model")
    assert not (tmp_path / "model").exists()
