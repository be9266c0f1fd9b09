"""A local dataset that cleaning leaves too small names its files and what was dropped."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from leanhpo.data import prepare_dataset
from leanhpo.data.errors import DataError
from leanhpo.data.redsm5 import ANNOTATION_COLUMNS, ANNOTATIONS_FILE, POSTS_COLUMNS, POSTS_FILE

SPLIT = {"train": 0.6, "validation": 0.2, "test": 0.2, "seed": 7}


def _folder(tmp_path: Path, posts: list[list[str]], annotations: list[list[str]]) -> Path:
    folder = tmp_path / "redsm5"
    folder.mkdir()
    for name, header, rows in (
        (POSTS_FILE, POSTS_COLUMNS, posts),
        (ANNOTATIONS_FILE, ANNOTATION_COLUMNS, annotations),
    ):
        with (folder / name).open("w", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(header)
            writer.writerows(rows)
    return folder


def _prepare(folder: Path, tmp_path: Path) -> str:
    config = {"source": "local", "path": str(folder), "split": SPLIT}
    with pytest.raises(DataError) as caught:
        prepare_dataset(config, tmp_path / "out")
    return str(caught.value)


def test_posts_file_with_only_a_header_is_named(tmp_path: Path) -> None:
    folder = _folder(tmp_path, [], [])
    message = _prepare(folder, tmp_path)
    assert str(folder / POSTS_FILE) in message and str(folder / ANNOTATIONS_FILE) in message
    assert "has a header and no rows" in message
    assert "0 post(s) are left after cleaning" in message
    assert "raise data.split" not in message  # no ratio can help: not blamed


def test_rows_dropped_by_cleaning_are_counted_with_reasons(tmp_path: Path) -> None:
    posts = [["p1", "I feel sad all day."], ["p2", "   "]]
    annotations = [["p1", "s1", "I feel sad all day.", "DEPRESSED_MOOD", "maybe", ""]]
    message = _prepare(_folder(tmp_path, posts, annotations), tmp_path)
    assert "(2 post rows)" in message and "(1 annotation rows)" in message
    assert "1 post(s) are left after cleaning" in message
    assert "Cleaning dropped 2 row(s)" in message
    assert "invalid status: 1 row(s)" in message and "status='maybe'" in message
    assert "empty post text: 1 row(s)" in message and "p2" in message
    assert '"invalid_status": 1' in message  # the full cleaning counts
    assert "raise data.split" not in message


def test_enough_posts_with_bad_ratios_still_blame_the_ratios(tmp_path: Path) -> None:
    posts = [[f"p{i}", f"post number {i}"] for i in range(5)]
    folder = _folder(tmp_path, posts, [])
    config = {
        "source": "local",
        "path": str(folder),
        "split": {"train": 0.98, "validation": 0.01, "test": 0.01, "seed": 7},
    }
    with pytest.raises(DataError, match=r"raise data\.split"):
        prepare_dataset(config, tmp_path / "out")
