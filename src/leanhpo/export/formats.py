"""Predict's input and output files.

Input: CSV with a `text` column and an optional `post_id` column; JSON Lines of objects with
`text` and an optional `post_id` (a `.json` file may also hold one JSON array of them); or
plain text, one post per line. The format comes from the extension (`.csv`; `.jsonl`/`.json`;
anything else, and `-` for stdin, is text) unless given. Everything is read and checked before
the model runs, so a bad row stops the command before any output exists; every message names
the file and the row. A post without a `post_id` gets its 1-based position in the input.

Output: JSON Lines, to a file written under a temporary name and renamed when complete (a
failure leaves no file), or to stdout.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from leanhpo.export.errors import ExportError
from leanhpo.fsutil import atomic_file

FORMATS = ("csv", "jsonl", "text")
EXTENSIONS = {".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl"}
STDIO = "-"
CONTENT = {  # what an input of each format holds, for the message about an empty one
    "csv": "a CSV with a header row naming a `text` column (and optionally `post_id`), then "
    "one row per post",
    "jsonl": "one JSON object per line, with `text` (and optionally `post_id`)",
    "text": "one post per line",
}


@dataclass(frozen=True)
class InputPosts:
    texts: list[str]
    post_ids: list[str]
    source: str
    format: str


def input_format(source: str, given: str | None = None) -> str:
    if given is not None:
        if given not in FORMATS:
            raise ExportError(f"unknown input format {given!r}; use one of {', '.join(FORMATS)}")
        return given
    if source == STDIO:
        return "text"
    return EXTENSIONS.get(Path(source).suffix.lower(), "text")


def read_posts(source: str, given_format: str | None = None) -> InputPosts:
    """Read and check every post of `source` (a path, or `-` for stdin)."""
    fmt = input_format(source, given_format)
    name = "<stdin>" if source == STDIO else source
    data = _read_bytes(source)
    text = _decode(data, name)
    if not text.strip():
        what = "is empty (0 bytes)" if not data else f"holds no text ({len(data)} bytes)"
        raise ExportError(f"{name} {what}; as {fmt} input it should hold {CONTENT[fmt]}")
    parse = {"csv": _csv_posts, "jsonl": _json_posts, "text": _text_posts}[fmt]
    rows = parse(text, name)
    if not rows:
        raise ExportError(f"{name} holds no posts")
    post_ids = [post_id or str(index + 1) for index, (post_id, _) in enumerate(rows)]
    return InputPosts([t for _, t in rows], post_ids, name, fmt)


def _read_bytes(source: str) -> bytes:
    if source == STDIO:
        return sys.stdin.buffer.read()
    path = Path(source)
    if not path.exists():
        raise ExportError(f"input file {path} does not exist")
    if not path.is_file():
        raise ExportError(f"input {path} is not a file")
    return path.read_bytes()


def _decode(data: bytes, name: str) -> str:
    try:
        return data.decode("utf-8-sig")  # -sig: drop the byte order mark spreadsheets write
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise ExportError(
            f"{name}: line {line} (byte {error.start}) is not valid UTF-8; save the file as "
            "UTF-8 (e.g. `iconv -f latin1 -t utf-8`)"
        ) from None


def _checked(text: Any, where: str) -> str:
    if not isinstance(text, str):
        raise ExportError(f"{where}: `text` must be a string, got {type(text).__name__}")
    if not text.strip():
        raise ExportError(f"{where}: the text is empty")
    return text


def _text_posts(text: str, name: str) -> list[tuple[str | None, str]]:
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the final newline ends the last post; it does not start an empty one
    return [
        (None, _checked(line.removesuffix("\r"), f"{name}: line {number}"))
        for number, line in enumerate(lines, start=1)
    ]


def _csv_posts(text: str, name: str) -> list[tuple[str | None, str]]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        columns = reader.fieldnames
        if not columns or "text" not in columns:
            raise ExportError(
                f"{name}: the CSV has no `text` column (its header is {columns or 'empty'}); "
                "name the column of post texts `text`"
            )
        rows = []
        for number, row in enumerate(reader, start=1):
            where = f"{name}: row {number} (line {reader.line_num})"
            rows.append((_post_id(row.get("post_id"), where), _checked(row.get("text"), where)))
    except csv.Error as error:
        raise ExportError(f"{name}: line {reader.line_num} is not valid CSV: {error}") from None
    return rows


def _json_posts(text: str, name: str) -> list[tuple[str | None, str]]:
    if text.lstrip().startswith("["):  # a .json file holding one array
        try:
            items = json.loads(text)
        except ValueError as error:
            raise ExportError(f"{name} is not valid JSON: {error}") from None
        return [_json_post(item, f"{name}: item {n}") for n, item in enumerate(items, start=1)]
    rows = []
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        where = f"{name}: line {number}"
        try:
            item = json.loads(line)
        except ValueError as error:
            raise ExportError(f"{where} is not valid JSON: {error}") from None
        rows.append(_json_post(item, where))
    return rows


def _json_post(item: Any, where: str) -> tuple[str | None, str]:
    if not isinstance(item, dict):
        raise ExportError(f"{where}: expected an object with `text`, got {type(item).__name__}")
    if "text" not in item:
        raise ExportError(f"{where}: the object has no `text` (its keys: {sorted(item)})")
    return _post_id(item.get("post_id"), where), _checked(item["text"], where)


def _post_id(value: Any, where: str) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ExportError(f"{where}: `post_id` must be a string or an integer, got {value!r}")
    return str(value)


def write_predictions(chunks: Iterable[list[dict[str, Any]]], output: str) -> int:
    """Write the predictions as JSON Lines to `output` (a path, or `-` for stdout); returns how
    many. A file appears only once complete: a failure half-way leaves nothing."""
    if output == STDIO:
        count = 0
        for chunk in chunks:
            sys.stdout.write("".join(_line(row) for row in chunk))
            sys.stdout.flush()
            count += len(chunk)
        return count
    path = Path(output)
    if path.is_dir():
        raise ExportError(f"output {path} is a folder; name a file (or - for stdout)")
    count = 0
    with atomic_file(path, "w") as handle:
        for chunk in chunks:
            handle.write("".join(_line(row) for row in chunk))
            count += len(chunk)
    return count


def _line(row: dict[str, Any]) -> str:
    return json.dumps(row, ensure_ascii=False, allow_nan=False) + "\n"
