"""Turn a configured source into the prepared splits that every trial reads.

Runs once per study (the `prepare_dataset` rule). The fingerprint it records identifies the
exact prepared data, so two trials, or two machines, can prove they trained on the same posts.
"""

import hashlib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from leanhpo.commands import current_invocation
from leanhpo.data.errors import DataError
from leanhpo.data.redsm5 import load_redsm5
from leanhpo.data.sources import materialize_source
from leanhpo.data.splits import SPLIT_NAMES, EmptySplitError, split_dataset
from leanhpo.data.symptoms import SYMPTOMS
from leanhpo.fsutil import atomic_write_text, sha256_file
from leanhpo.reports import validate_report

RAW_FOLDER = "raw"
REPORT_FILE = "data_report.json"
REPORT_SCHEMA = "data_report.schema.json"
SPLIT_FILE_SUFFIX = ".jsonl"


def prepare_dataset(
    data_cfg: dict[str, Any], out_dir: Path, notify: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Materialise, clean, split and write the data; return (and write) the data report.

    The report is written last, so its presence means the splits beside it are complete. Each
    symptom short of `data.split.min_positives` in validation or test is named on stderr and,
    when given, to `notify` (the workflow passes the terminal, as stderr goes to the rule's log).
    """
    out_dir = Path(out_dir)
    source = materialize_source(data_cfg, out_dir / RAW_FOLDER)
    posts, cleaning = load_redsm5(source["posts_csv"], source["annotations_csv"])
    split_cfg = data_cfg.get("split") or {}
    seed: Any = split_cfg.get("seed")  # checked by split_dataset
    try:
        outcome = split_dataset(posts, split_cfg)
    except EmptySplitError as error:
        if error.n_posts >= len(SPLIT_NAMES):
            raise  # enough posts for some ratios: the ratios are to blame, as it says
        raise DataError(too_few_posts_message(source, len(posts), cleaning)) from None
    splits = outcome.splits
    fingerprint = hashlib.sha256()
    for name in SPLIT_NAMES:
        payload = _jsonl(splits[name]).encode("utf-8")
        # Name and length go into the hash too, so moving a post from the end of one split to
        # the start of the next changes the fingerprint even though the bytes concatenate alike.
        fingerprint.update(f"{name}\n{len(payload)}\n".encode())
        fingerprint.update(payload)
        atomic_write_text(out_dir / f"{name}{SPLIT_FILE_SUFFIX}", payload.decode("utf-8"))
    report = {
        "source": source["source"],
        "dataset_id": source["dataset_id"],
        "revision": source["revision"],
        "resolved_revision": source["resolved_revision"],
        "fingerprint": fingerprint.hexdigest(),
        "raw_sha256": {
            Path(source[key]).name: sha256_file(Path(source[key]))
            for key in ("posts_csv", "annotations_csv")
        },
        "n_posts": len(posts),
        "splits": {name: _split_stats(splits[name]) for name in SPLIT_NAMES},
        "cleaning": cleaning,
        "split_ratios": {name: float(split_cfg[name]) for name in SPLIT_NAMES},
        "split_seed": seed,
        "split": outcome.report,
    }
    validate_report(report, REPORT_SCHEMA)
    text = json.dumps(report, indent=2, sort_keys=True) + "\n"
    atomic_write_text(out_dir / REPORT_FILE, text)
    for warning in outcome.warnings:
        print(warning, file=sys.stderr, flush=True)
        if notify is not None:
            notify(warning)
    return report


def too_few_posts_message(source: dict[str, Any], kept: int, cleaning: dict[str, Any]) -> str:
    """Name the files and what cleaning dropped: with fewer posts than splits, no ratio helps."""
    posts_csv, annotations_csv = source["posts_csv"], source["annotations_csv"]
    read = cleaning["rows_read"]
    dropped = {reason: n for reason, n in cleaning["dropped"].items() if n}
    if dropped:
        listed = "; ".join(
            f"{reason.replace('_', ' ')}: {n} row(s)"
            + (
                f" (e.g. {', '.join(cleaning['examples'].get(reason, []))})"
                if reason in cleaning["examples"]
                else ""
            )
            for reason, n in dropped.items()
        )
        what = f"Cleaning dropped {sum(dropped.values())} row(s): {listed}."
    else:
        what = "Cleaning dropped no rows."
    empty = f" {posts_csv} has a header and no rows." if not read["posts"] else ""
    return (
        f"Tried to prepare the dataset from {posts_csv} ({read['posts']} post rows) and "
        f"{annotations_csv} ({read['annotations']} annotation rows); {kept} post(s) are left "
        f"after cleaning, too few for the {len(SPLIT_NAMES)} non-empty splits "
        f"{'/'.join(SPLIT_NAMES)} (at least {len(SPLIT_NAMES)} posts).{empty} {what} "
        f"Full counts: {json.dumps({k: cleaning[k] for k in ('rows_read', 'dropped')})}. "
        "Fix: add posts to the posts file and correct the rows named above (post_id, text, "
        "and status 0 or 1), then rerun."
    )


def read_data_report(out_dir: Path) -> dict[str, Any]:
    """The data report of prepared splits, or an error that names the step that writes it."""
    path = Path(out_dir) / REPORT_FILE
    if not path.is_file():
        raise DataError(
            f"Tried to read the data report {path}, but it does not exist: the data of this "
            f"study has not been prepared. Fix: run `{current_invocation().snakemake('--cores', 'all')}`, "
            "which runs every step in order (or `python -m leanhpo prepare-data` with the same "
            "config files)."
        )
    with path.open(encoding="utf-8") as handle:
        report: dict[str, Any] = json.load(handle)
    return report


def load_split(out_dir: Path, split: str) -> list[dict]:
    """Read one prepared split back, one post per line."""
    if split not in SPLIT_NAMES:
        raise DataError(
            f"Tried to load the split {split!r}; valid splits are {list(SPLIT_NAMES)}. "
            "Fix: ask for one of those."
        )
    path = Path(out_dir) / f"{split}{SPLIT_FILE_SUFFIX}"
    if not path.is_file():
        raise DataError(
            f"Tried to read the prepared split {path}, but it does not exist. Fix: run the "
            "prepare_dataset step first (`snakemake --cores 1` runs it), or check the folder."
        )
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def _jsonl(posts: list[dict]) -> str:
    """Canonical JSON lines: sorted keys, fixed separators, so equal data gives equal bytes."""
    return "".join(json.dumps(post, sort_keys=True, ensure_ascii=False) + "\n" for post in posts)


def _split_stats(posts: list[dict]) -> dict[str, Any]:
    """Per-split counts, so a skewed or empty symptom in a split shows up in the report."""
    positives = dict.fromkeys(SYMPTOMS, 0)
    spans = dict.fromkeys(SYMPTOMS, 0)
    without = 0
    for post in posts:
        if not any(post["labels"]):
            without += 1
        for index, symptom in enumerate(SYMPTOMS):
            positives[symptom] += post["labels"][index]
            spans[symptom] += len(post["evidence"][index])
    return {
        "posts": len(posts),
        "positive_posts_per_symptom": positives,
        "evidence_spans_per_symptom": spans,
        "posts_without_symptom": without,
    }
