"""Load the two ReDSM5 CSV files into one record per post, repairing dirt visibly.

The published files have a misspelled label, a non-symptom label and evidence sentences that
are not exact substrings of their post. Each of these is repaired or dropped here and counted
in a cleaning report, because a silent fix would change the dataset without anyone knowing.

A sentence is located in its post in the order of the post's sentence ids: each annotated
sentence is searched from just after the one before it (by `sentence_id`), so a sentence whose
text occurs twice in the post lands on the occurrence its id points at, not on the first one
(5 such sentences in the real data). The report counts those placed at a later occurrence.
"""

import bisect
import csv
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from leanhpo.data.errors import DataError
from leanhpo.data.symptoms import LABEL_REPAIRS, NON_SYMPTOM_LABELS, SYMPTOM_INDEX, SYMPTOMS

POSTS_FILE = "redsm5_posts.csv"
ANNOTATIONS_FILE = "redsm5_annotations.csv"
POSTS_COLUMNS: tuple[str, ...] = ("post_id", "text")
ANNOTATION_COLUMNS: tuple[str, ...] = (
    "post_id",
    "sentence_id",
    "sentence_text",
    "DSM5_symptom",
    "status",
    "explanation",
)
DROP_REASONS: tuple[str, ...] = (
    "duplicate_row",
    "non_symptom_label",
    "unknown_post_id",
    "post_without_text",
    "invalid_status",
    "empty_post_id",
    "duplicate_post_id",
    "empty_post_text",
)
EXAMPLES_PER_REASON = 3
# `<post_id>_<n>`: the n-th sentence of the post, in the sample and the real data.
SENTENCE_NUMBER = re.compile(r"_(\d+)$")
ROW_MEANING = {"posts": "one row per post", "annotations": "one row per annotated sentence"}
EXAMPLE_MAX_CHARS = 100
VALID_STATUSES = (0, 1)


@dataclass
class _NormalisedText:
    """A post with whitespace runs collapsed, and where each kept character came from."""

    text: str
    folded: str
    origin: list[int]


def load_redsm5(posts_csv: Path, annotations_csv: Path) -> tuple[list[dict], dict]:
    """Return `(posts, cleaning_report)`; posts are sorted by post_id for determinism."""
    posts_csv, annotations_csv = Path(posts_csv), Path(annotations_csv)
    post_rows = _read_csv(posts_csv, POSTS_COLUMNS, "posts")
    annotation_rows = _read_csv(annotations_csv, ANNOTATION_COLUMNS, "annotations")
    _check_labels(annotation_rows, annotations_csv)
    report = _new_report(len(post_rows), len(annotation_rows))
    texts, textless_ids = _collect_posts(post_rows, report)
    posts = {post_id: _new_post(post_id, texts[post_id]) for post_id in sorted(texts)}
    located = _locate_in_order(annotation_rows, posts)
    seen: set[tuple[str, ...]] = set()
    for row_number, row in enumerate(annotation_rows, start=1):
        key = tuple(row[column] for column in ANNOTATION_COLUMNS)
        if key in seen:
            _drop(report, "duplicate_row", f"row {row_number}: {row['sentence_id']}")
            continue
        seen.add(key)
        _apply_row(row, row_number, posts, textless_ids, located, report)
    return [_finish_post(post) for post in posts.values()], report


def _read_csv(path: Path, expected: tuple[str, ...], kind: str) -> list[dict[str, str]]:
    """Read a CSV (UTF-8, optional BOM) and keep the expected columns, or say what is wrong."""
    if not path.is_file():
        raise DataError(
            f"Tried to read the ReDSM5 {kind} file {path}, but it does not exist"
            f"{_folder_listing(path.parent)}. Expected a CSV with columns {list(expected)}. "
            f"Fix: put {POSTS_FILE} and {ANNOTATIONS_FILE} in one folder and set data.path to "
            "it (data.source: local), or use data.source: sample."
        )
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            reader = csv.DictReader(handle)
            if reader.fieldnames is None:  # not one line: a copy or download cut short
                raise DataError(_empty_file_message(path, expected, kind))
            found = [name.strip() for name in reader.fieldnames]
            reader.fieldnames = found
            missing = [column for column in expected if column not in found]
            if missing:
                raise DataError(
                    f"Tried to read the ReDSM5 {kind} file {path}: it lacks the columns "
                    f"{missing}. Found columns {found}; expected {list(expected)}. Fix: use the "
                    "original ReDSM5 CSV files, or rename the header row to the expected names."
                )
            return [{column: row.get(column) or "" for column in expected} for row in reader]
    except UnicodeDecodeError as error:
        raise DataError(
            f"Tried to read the ReDSM5 {kind} file {path} as UTF-8, but byte {error.start} is "
            "not valid UTF-8. Fix: re-save the file as UTF-8."
        ) from error
    except csv.Error as error:
        raise DataError(
            f"Tried to parse the ReDSM5 {kind} file {path} as CSV and failed: {error}. "
            "Fix: check the quoting around that line, or re-export the file as standard CSV."
        ) from error


def _empty_file_message(path: Path, expected: tuple[str, ...], kind: str) -> str:
    return (
        f"Tried to read the ReDSM5 {kind} file {path}, but it is empty "
        f"({path.stat().st_size} bytes). It should be a CSV with the header row "
        f"{','.join(expected)} and {ROW_MEANING[kind]}. Fix: copy the file again from "
        "https://huggingface.co/datasets/irlab-udc/redsm5 (an interrupted copy or download "
        "leaves an empty file), or point data.path at the folder with the complete files."
    )


def _folder_listing(folder: Path) -> str:
    """A short 'folder holds ...' clause for missing-file errors."""
    if not folder.is_dir():
        return f" (the folder {folder} does not exist either)"
    names = sorted(child.name for child in folder.iterdir())
    shown = ", ".join(names[:10]) + (", ..." if len(names) > 10 else "")
    return f" (the folder {folder} holds: {shown or 'nothing'})"


def _check_labels(rows: list[dict[str, str]], path: Path) -> None:
    """Refuse labels that are neither symptoms nor known dirt: they may be a new label scheme."""
    known = set(SYMPTOMS) | set(LABEL_REPAIRS) | set(NON_SYMPTOM_LABELS)
    unknown = Counter(row["DSM5_symptom"].strip() for row in rows)
    for label in known:
        unknown.pop(label, None)
    if unknown:
        listed = ", ".join(f"{label!r} ({count} rows)" for label, count in sorted(unknown.items()))
        raise DataError(
            f"Tried to read the DSM5_symptom column of {path} and found unknown labels: {listed}. "
            f"Valid labels are {list(SYMPTOMS)}; {sorted(LABEL_REPAIRS)} are repaired and "
            f"{sorted(NON_SYMPTOM_LABELS)} dropped. Fix: correct those rows, or add the typo to "
            "LABEL_REPAIRS in leanhpo/data/symptoms.py if it is a known misspelling."
        )


def _new_report(n_posts: int, n_annotations: int) -> dict[str, Any]:
    """Every counter starts at zero so the report has the same shape for every dataset."""
    return {
        "rows_read": {"posts": n_posts, "annotations": n_annotations},
        "repaired": {
            "label_typo": {f"{typo}->{label}": 0 for typo, label in sorted(LABEL_REPAIRS.items())},
            "whitespace_offsets": 0,
            "case_offsets": 0,
        },
        "dropped": dict.fromkeys(DROP_REASONS, 0),
        "unlocated_evidence": 0,
        "evidence_at_later_occurrence": 0,
        "examples": {},
    }


def _note(report: dict[str, Any], reason: str, example: str) -> None:
    """Keep the first few examples per reason so a user can find the rows in the CSV."""
    examples = report["examples"].setdefault(reason, [])
    if len(examples) < EXAMPLES_PER_REASON:
        short = (
            example if len(example) <= EXAMPLE_MAX_CHARS else example[:EXAMPLE_MAX_CHARS] + "..."
        )
        examples.append(short)


def _drop(report: dict[str, Any], reason: str, example: str) -> None:
    report["dropped"][reason] += 1
    _note(report, reason, example)


def _collect_posts(
    rows: list[dict[str, str]], report: dict[str, Any]
) -> tuple[dict[str, str], set[str]]:
    """Map post_id to text; posts without id or text are dropped, first of duplicates kept."""
    texts: dict[str, str] = {}
    textless: set[str] = set()
    for row_number, row in enumerate(rows, start=1):
        post_id = row["post_id"].strip()
        if not post_id:
            _drop(report, "empty_post_id", f"posts row {row_number}")
        elif post_id in texts or post_id in textless:
            _drop(report, "duplicate_post_id", f"posts row {row_number}: {post_id}")
        elif not row["text"].strip():
            textless.add(post_id)
            _drop(report, "empty_post_text", f"posts row {row_number}: {post_id}")
        else:
            texts[post_id] = row["text"]
    return texts, textless


def _new_post(post_id: str, text: str) -> dict[str, Any]:
    n_symptoms = len(SYMPTOMS)
    return {
        "post_id": post_id,
        "text": text,
        "labels": [0] * n_symptoms,
        "evidence": [[] for _ in range(n_symptoms)],
        "unlocated": [0] * n_symptoms,
        "negations": [0] * n_symptoms,
    }


def _apply_row(
    row: dict[str, str],
    row_number: int,
    posts: dict[str, dict[str, Any]],
    textless_ids: set[str],
    located: dict[tuple[str, str, str], "_Located"],
    report: dict[str, Any],
) -> None:
    """Fold one annotation row into its post, or drop it with a counted reason."""
    where = f"row {row_number}: {row['sentence_id'] or row['post_id']}"
    label = row["DSM5_symptom"].strip()
    if label in NON_SYMPTOM_LABELS:
        _drop(report, "non_symptom_label", f"{where} {label}")
        return
    if label in LABEL_REPAIRS:
        report["repaired"]["label_typo"][f"{label}->{LABEL_REPAIRS[label]}"] += 1
        _note(report, "label_typo", f"{where} {label}->{LABEL_REPAIRS[label]}")
        label = LABEL_REPAIRS[label]
    post_id = row["post_id"].strip()
    if post_id not in posts:
        reason = "post_without_text" if post_id in textless_ids else "unknown_post_id"
        _drop(report, reason, f"{where} post_id={post_id!r}")
        return
    status = _parse_status(row["status"])
    if status is None:
        _drop(report, "invalid_status", f"{where} status={row['status']!r}")
        return
    post, symptom = posts[post_id], SYMPTOM_INDEX[label]
    if status == 0:
        post["negations"][symptom] += 1
        return
    post["labels"][symptom] = 1
    found = located[(post_id, row["sentence_id"], row["sentence_text"])]
    span, method = found.span, found.method
    if found.later_occurrence:
        report["evidence_at_later_occurrence"] += 1
        _note(report, "evidence_at_later_occurrence", f"{where} {row['sentence_text']!r}")
    if span is None:
        post["unlocated"][symptom] += 1
        report["unlocated_evidence"] += 1
        _note(report, "unlocated_evidence", f"{where} {row['sentence_text']!r}")
        return
    post["evidence"][symptom].append(span)
    if method != "exact":
        key = f"{method}_offsets"
        report["repaired"][key] += 1
        _note(report, key, f"{where} {row['sentence_text']!r}")


def _parse_status(value: str) -> int | None:
    """0 or 1, accepting '1', ' 1 ' and '1.0'; anything else is invalid."""
    text = value.strip()
    try:
        status = int(text)
    except ValueError:
        try:
            number = float(text)
        except ValueError:
            return None
        if not number.is_integer():
            return None
        status = int(number)
    return status if status in VALID_STATUSES else None


def _fold(text: str) -> str:
    """Lower-case character by character so that offsets keep mapping one to one."""
    return "".join(char.lower() if len(char.lower()) == 1 else char for char in text)


def _normalise_with_origin(text: str) -> _NormalisedText:
    """Collapse whitespace runs to one space and strip, remembering original offsets."""
    chars: list[str] = []
    origin: list[int] = []
    pending_space = -1
    for index, char in enumerate(text):
        if char.isspace():
            if chars and pending_space < 0:
                pending_space = index
            continue
        if pending_space >= 0:
            chars.append(" ")
            origin.append(pending_space)
            pending_space = -1
        chars.append(char)
        origin.append(index)
    collapsed = "".join(chars)
    return _NormalisedText(text=collapsed, folded=_fold(collapsed), origin=origin)


@dataclass(frozen=True)
class _Located:
    span: list[int] | None
    method: str
    later_occurrence: bool  # placed past the first occurrence of its text, by sentence order


def _sentence_order(sentence_id: str, appearance: int) -> tuple[float, int]:
    """Sort key: the sentence's number in its post (`<post_id>_<n>`), then first appearance;
    ids without a number keep the order of the annotation rows, after the numbered ones."""
    match = SENTENCE_NUMBER.search(sentence_id.strip())
    return (int(match.group(1)) if match else float("inf"), appearance)


def _locate_in_order(
    rows: list[dict[str, str]], posts: dict[str, dict[str, Any]]
) -> dict[tuple[str, str, str], _Located]:
    """(post_id, sentence_id, sentence_text) -> where that sentence is in its post.

    Every annotated sentence of a post (any label or status: each is a sentence of the post)
    is located in sentence-id order, searching from just after the start of the sentence
    before it; where the text is not found there (ids out of order, or an unlocatable
    neighbour), from the start of the post, as a lone sentence would be."""
    sentences: dict[str, dict[tuple[str, str], int]] = {}
    for row in rows:
        post_id = row["post_id"].strip()
        if post_id in posts:
            by_id = sentences.setdefault(post_id, {})
            by_id.setdefault((row["sentence_id"], row["sentence_text"]), len(by_id))
    located: dict[tuple[str, str, str], _Located] = {}
    for post_id, by_id in sentences.items():
        text = posts[post_id]["text"]
        normalised = _normalise_with_origin(text)
        cursor = 0
        for (sentence_id, sentence), _appearance in sorted(
            by_id.items(), key=lambda item: _sentence_order(item[0][0], item[1])
        ):
            span, method = _locate(sentence, text, normalised, cursor)
            if span is not None:
                cursor = span[0] + 1
                first, _ = _locate(sentence, text, normalised, 0)
                later = first is not None and first[0] < span[0]
            else:
                later = False
            located[(post_id, sentence_id, sentence)] = _Located(span, method, later)
    return located


def _locate(
    sentence: str, text: str, normalised: _NormalisedText, after: int = 0
) -> tuple[list[int] | None, str]:
    """Find the sentence in the post: exact, then whitespace-normalised, then ignoring case;
    the first occurrence that starts at or after character `after`, else the first of all.

    The two fallbacks search the normalised post and map the hit back to offsets in the
    ORIGINAL text, so `text[start:end]` is always a real slice of the post.
    """
    for start_at in (after, 0) if after else (0,):
        found = _find(sentence, text, normalised, start_at)
        if found[0] is not None:
            return found
    return None, "unlocated"


def _find(
    sentence: str, text: str, normalised: _NormalisedText, after: int
) -> tuple[list[int] | None, str]:
    if sentence and sentence == sentence.strip():
        start = text.find(sentence, after)
        if start >= 0:
            return [start, start + len(sentence)], "exact"
    target = " ".join(sentence.split())
    if not target:
        return None, "unlocated"
    origin_start = bisect.bisect_left(normalised.origin, after)  # first kept char >= after
    for method, haystack, needle in (
        ("whitespace", normalised.text, target),
        ("case", normalised.folded, _fold(target)),
    ):
        start = haystack.find(needle, origin_start)
        if start >= 0:
            end = start + len(needle)
            return [normalised.origin[start], normalised.origin[end - 1] + 1], method
    return None, "unlocated"


def _finish_post(post: dict[str, Any]) -> dict[str, Any]:
    """Sort and deduplicate spans so equal data always serialises to equal bytes."""
    post["evidence"] = [
        [list(span) for span in sorted({tuple(span) for span in spans})]
        for spans in post["evidence"]
    ]
    return post
