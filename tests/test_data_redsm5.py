"""Loading and cleaning ReDSM5 CSVs: every kind of dirt is repaired or dropped, and counted."""

import csv
from pathlib import Path

import pytest

from leanhpo.data import SYMPTOMS, DataError, load_redsm5
from leanhpo.data.redsm5 import ANNOTATION_COLUMNS

SLEEP = SYMPTOMS.index("SLEEP_ISSUES")
MOOD = SYMPTOMS.index("DEPRESSED_MOOD")
APPETITE = SYMPTOMS.index("APPETITE_CHANGE")

POST_A = "I moved here last year. I feel empty every day. Honestly my appetite is fine."
POST_B = "Hello there.\n\nI  can't   sleep\tat night. Bye, all."


def _write(path: Path, header: list[str], rows: list[list[str]], encoding: str = "utf-8") -> Path:
    with path.open("w", encoding=encoding, newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _row(post_id: str, sentence: str, label: str, status: str = "1") -> list[str]:
    return [post_id, f"{post_id}_0", sentence, label, status, "why"]


def _load(tmp_path: Path, annotations: list[list[str]], posts: list[list[str]] | None = None):
    posts = posts if posts is not None else [["b", POST_B], ["a", POST_A]]
    posts_csv = _write(tmp_path / "redsm5_posts.csv", ["post_id", "text"], posts)
    annotations_csv = _write(
        tmp_path / "redsm5_annotations.csv", list(ANNOTATION_COLUMNS), annotations
    )
    return load_redsm5(posts_csv, annotations_csv)


def test_clean_rows_give_labels_offsets_and_negations(tmp_path: Path) -> None:
    posts, report = _load(
        tmp_path,
        [
            _row("a", "I feel empty every day.", "DEPRESSED_MOOD"),
            _row("a", "Honestly my appetite is fine.", "APPETITE_CHANGE", "0"),
        ],
    )
    assert [post["post_id"] for post in posts] == ["a", "b"]
    post_a = posts[0]
    start = POST_A.index("I feel empty")
    assert post_a["evidence"][MOOD] == [[start, start + len("I feel empty every day.")]]
    assert post_a["labels"] == [1 if i == MOOD else 0 for i in range(len(SYMPTOMS))]
    assert post_a["negations"][APPETITE] == 1 and post_a["labels"][APPETITE] == 0
    assert post_a["unlocated"] == [0] * len(SYMPTOMS)
    assert posts[1]["labels"] == [0] * len(SYMPTOMS)
    assert report["rows_read"] == {"posts": 2, "annotations": 2}
    assert sum(report["dropped"].values()) == 0
    assert report["repaired"]["whitespace_offsets"] == 0


def test_label_typo_is_repaired_and_counted(tmp_path: Path) -> None:
    posts, report = _load(tmp_path, [_row("b", "Hello there.", "LEEP_ISSUES")])
    assert posts[1]["labels"][SLEEP] == 1
    assert report["repaired"]["label_typo"] == {"LEEP_ISSUES->SLEEP_ISSUES": 1}
    assert "LEEP_ISSUES->SLEEP_ISSUES" in report["examples"]["label_typo"][0]


def test_special_case_rows_are_dropped_and_counted(tmp_path: Path) -> None:
    posts, report = _load(tmp_path, [_row("a", "I moved here last year.", "SPECIAL_CASE")])
    assert all(sum(post["labels"]) == 0 for post in posts)
    assert report["dropped"]["non_symptom_label"] == 1
    assert report["examples"]["non_symptom_label"]


def test_unknown_label_raises_with_counts_and_valid_labels(tmp_path: Path) -> None:
    rows = [_row("a", "x", "SADNESS"), _row("b", "y", "SADNESS"), _row("a", "z", "MOOD")]
    with pytest.raises(DataError) as caught:
        _load(tmp_path, rows)
    message = str(caught.value)
    assert "'SADNESS' (2 rows)" in message and "'MOOD' (1 rows)" in message
    assert "redsm5_annotations.csv" in message and "DEPRESSED_MOOD" in message
    assert "Fix:" in message


def test_whitespace_mismatch_maps_to_original_offsets(tmp_path: Path) -> None:
    posts, report = _load(tmp_path, [_row("b", "I can't sleep at night. ", "SLEEP_ISSUES")])
    [[start, end]] = posts[1]["evidence"][SLEEP]
    assert POST_B[start:end] == "I  can't   sleep\tat night."
    assert start == POST_B.index("I  can't")
    assert report["repaired"]["whitespace_offsets"] == 1
    assert report["repaired"]["case_offsets"] == 0


def test_case_mismatch_is_located_and_counted(tmp_path: Path) -> None:
    posts, report = _load(tmp_path, [_row("a", "i FEEL empty  every day.", "DEPRESSED_MOOD")])
    [[start, end]] = posts[0]["evidence"][MOOD]
    assert POST_A[start:end] == "I feel empty every day."
    assert report["repaired"]["case_offsets"] == 1


def test_unlocatable_sentence_keeps_label_and_is_counted(tmp_path: Path) -> None:
    posts, report = _load(tmp_path, [_row("a", "I never wrote this.", "DEPRESSED_MOOD")])
    assert posts[0]["labels"][MOOD] == 1
    assert posts[0]["evidence"][MOOD] == []
    assert posts[0]["unlocated"][MOOD] == 1
    assert report["unlocated_evidence"] == 1
    assert "I never wrote this." in report["examples"]["unlocated_evidence"][0]


def test_bad_rows_are_dropped_with_reasons(tmp_path: Path) -> None:
    good = _row("a", "I feel empty every day.", "DEPRESSED_MOOD")
    rows = [
        good,
        list(good),  # exact duplicate
        _row("zz", "Nope.", "FATIGUE"),  # no such post
        _row("a", "I moved here last year.", "FATIGUE", "2"),
        _row("a", "I moved here last year.", "ANHEDONIA", "yes"),
        _row("a", "I moved here last year.", "WORTHLESSNESS", " 1.0 "),
        _row("c", "Text.", "FATIGUE"),  # post c has empty text
    ]
    posts, report = _load(tmp_path, rows, [["a", POST_A], ["c", "   "], ["a", "dup"]])
    assert [post["post_id"] for post in posts] == ["a"]
    assert posts[0]["evidence"][MOOD] == [[24, 47]]
    assert posts[0]["labels"][SYMPTOMS.index("WORTHLESSNESS")] == 1
    assert posts[0]["labels"][SYMPTOMS.index("FATIGUE")] == 0
    dropped = report["dropped"]
    assert dropped["duplicate_row"] == 1
    assert dropped["unknown_post_id"] == 1
    assert dropped["invalid_status"] == 2
    assert dropped["empty_post_text"] == 1
    assert dropped["post_without_text"] == 1
    assert dropped["duplicate_post_id"] == 1
    assert "status='2'" in report["examples"]["invalid_status"][0]


def test_same_sentence_twice_gives_one_span(tmp_path: Path) -> None:
    rows = [
        _row("a", "I feel empty every day.", "DEPRESSED_MOOD"),
        [*_row("a", "I feel empty every day.", "DEPRESSED_MOOD")[:5], "another reason"],
    ]
    posts, _ = _load(tmp_path, rows)
    assert len(posts[0]["evidence"][MOOD]) == 1


POST_C = "I am so tired. I ate nothing today. My boss yelled. I am so tired. Sleep won't come."
FATIGUE = SYMPTOMS.index("FATIGUE")


def _numbered(post_id: str, number: int, sentence: str, label: str, status: str = "1"):
    return [post_id, f"{post_id}_{number}", sentence, label, status, "why"]


def test_a_sentence_that_occurs_twice_is_located_by_its_sentence_id(tmp_path: Path) -> None:
    """Issue 25: "I am so tired." is sentences 0 and 3 of the post. The annotation of sentence 3
    used to land on the first occurrence; searched in sentence-id order from sentence 2 (an
    annotated neighbour), it lands on its own, and the report counts it."""
    repeated = "I am so tired."
    first, second = POST_C.index(repeated), POST_C.rindex(repeated)
    assert first < second
    posts, report = _load(
        tmp_path,
        [
            # rows out of order on purpose: the sentence ids, not the rows, give the order
            _numbered("c", 3, repeated, "FATIGUE"),
            _numbered("c", 2, "My boss yelled.", "DEPRESSED_MOOD", "0"),
            _numbered("c", 1, "I ate nothing today.", "APPETITE_CHANGE"),
        ],
        posts=[["c", POST_C]],
    )
    (post,) = posts
    assert post["evidence"][FATIGUE] == [[second, second + len(repeated)]]
    start = POST_C.index("I ate nothing")
    assert post["evidence"][APPETITE] == [[start, start + len("I ate nothing today.")]]
    assert report["evidence_at_later_occurrence"] == 1
    assert report["examples"]["evidence_at_later_occurrence"][0].startswith("row 1: c_3")


def test_both_occurrences_of_a_repeated_sentence_get_their_own_span(tmp_path: Path) -> None:
    repeated = "I am so tired."
    posts, report = _load(
        tmp_path,
        [
            _numbered("c", 0, repeated, "FATIGUE"),
            _numbered("c", 3, repeated, "DEPRESSED_MOOD"),
        ],
        posts=[["c", POST_C]],
    )
    first, second = POST_C.index(repeated), POST_C.rindex(repeated)
    assert posts[0]["evidence"][FATIGUE] == [[first, first + len(repeated)]]
    assert posts[0]["evidence"][MOOD] == [[second, second + len(repeated)]]
    assert report["evidence_at_later_occurrence"] == 1
    # a sentence that occurs once is found wherever the order says to look
    out_of_order, _ = _load(
        tmp_path,
        [
            _numbered("c", 4, "Sleep won't come.", "SLEEP_ISSUES"),
            _numbered("c", 5, "I ate nothing today.", "APPETITE_CHANGE"),
        ],
        posts=[["c", POST_C]],
    )
    assert out_of_order[0]["evidence"][APPETITE] == [
        [POST_C.index("I ate"), POST_C.index("I ate") + len("I ate nothing today.")]
    ]


def test_missing_column_names_file_found_and_expected(tmp_path: Path) -> None:
    posts_csv = _write(tmp_path / "redsm5_posts.csv", ["post_id", "text"], [["a", POST_A]])
    header = [column for column in ANNOTATION_COLUMNS if column != "status"]
    annotations_csv = _write(tmp_path / "redsm5_annotations.csv", header, [])
    with pytest.raises(DataError) as caught:
        load_redsm5(posts_csv, annotations_csv)
    message = str(caught.value)
    assert str(annotations_csv) in message
    assert "['status']" in message and "explanation" in message and "Found columns" in message


def test_missing_file_names_the_file_and_folder_contents(tmp_path: Path) -> None:
    annotations_csv = _write(tmp_path / "redsm5_annotations.csv", list(ANNOTATION_COLUMNS), [])
    with pytest.raises(DataError) as caught:
        load_redsm5(tmp_path / "redsm5_posts.csv", annotations_csv)
    message = str(caught.value)
    assert str(tmp_path / "redsm5_posts.csv") in message
    assert "redsm5_annotations.csv" in message and "does not exist" in message


def test_utf8_bom_and_padded_headers_are_accepted(tmp_path: Path) -> None:
    posts_csv = _write(
        tmp_path / "redsm5_posts.csv", ["post_id", " text"], [["a", POST_A]], "utf-8-sig"
    )
    annotations_csv = _write(
        tmp_path / "redsm5_annotations.csv",
        list(ANNOTATION_COLUMNS),
        [_row("a", "I feel empty every day.", "DEPRESSED_MOOD")],
        "utf-8-sig",
    )
    posts, _ = load_redsm5(posts_csv, annotations_csv)
    assert posts[0]["post_id"] == "a" and posts[0]["labels"][MOOD] == 1


def test_non_utf8_file_gives_actionable_error(tmp_path: Path) -> None:
    posts_csv = tmp_path / "redsm5_posts.csv"
    posts_csv.write_bytes(b"post_id,text\na,caf\xe9\n")
    annotations_csv = _write(tmp_path / "redsm5_annotations.csv", list(ANNOTATION_COLUMNS), [])
    with pytest.raises(DataError, match="UTF-8"):
        load_redsm5(posts_csv, annotations_csv)
