"""bench/benchenv.py, the environment block every bench result records (issue 27, item 6): its
keys, results free of the absolute paths of the machine they ran on, and no bench script that
writes results without it."""

from __future__ import annotations

import importlib.util
import json
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO

BENCH = REPO / "bench"
# An absolute POSIX path inside a string ("... folder /work/x"), or a Windows drive.
ABSOLUTE = re.compile(r"(?:^|[\s(=,'\"])/[\w.-]+/|^[A-Za-z]:[\\/]")
# What marks a script that writes a result file.
WRITES_RESULTS = re.compile(r"""["']results["']|bench/results""")


def _benchenv() -> Any:
    # Loaded from its file: putting bench/ on sys.path would let bench/memory.py and friends
    # shadow other top-level names for the rest of the session.
    spec = importlib.util.spec_from_file_location("benchenv", BENCH / "benchenv.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _strings(value: Any, where: str) -> Iterator[tuple[str, str]]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _strings(item, f"{where}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _strings(item, f"{where}[{index}]")
    elif isinstance(value, str):
        yield where, value


def test_the_block_has_the_common_keys():
    block = _benchenv().environment({"safetensors": "x", "cpu_count": -1})
    for key in ("date", "cpu", "memory_gib", "load_average_start", "python", "device", "gpu"):
        assert key in block
    for package in ("numpy", "torch", "transformers", "optuna", "mlflow"):
        assert block[package] is None or isinstance(block[package], str)
    assert block["python"].count(".") == 2
    assert block["device"] in ("cpu", "cuda")
    assert block["git"] is None or set(block["git"]) == {"commit", "dirty"}
    assert block["safetensors"] == "x" and block["cpu_count"] == -1  # the extra wins
    json.dumps(block)  # a result file can hold it


def test_paths_are_shown_relative_to_the_repository(tmp_path):
    benchenv = _benchenv()
    assert benchenv.relative_path(BENCH / "results" / "x.json") == "bench/results/x.json"
    assert benchenv.relative_path(REPO) == "."
    # Neither in the repository nor under the temporary folder, wherever the clone lies (a CI
    # clone may itself be under /tmp, so not beside the repository).
    outside = Path("/leanhpo-bench-x")
    assert benchenv.relative_path(outside) == "<outside>/leanhpo-bench-x"
    under_tmp = Path(tempfile.gettempdir()) / "run-1" / "study"
    assert benchenv.relative_path(under_tmp) == "<tmp>/run-1/study"
    assert benchenv.relative_path(outside, temporary=True) == "<tmp>/leanhpo-bench-x"
    text = benchenv.hide_folder(f"working folder {outside}/trial_0003", outside)
    assert text == "working folder <tmp>/leanhpo-bench-x/trial_0003"


@pytest.mark.parametrize("result", sorted(BENCH.glob("results/*.json")), ids=lambda p: p.name)
def test_no_result_holds_an_absolute_path(result: Path):
    found = [
        f"{where}: {text[:120]}"
        for where, text in _strings(json.loads(result.read_text()), result.name)
        if ABSOLUTE.search(text)
    ]
    assert not found, found


def test_every_script_that_writes_results_uses_benchenv():
    scripts = [p for p in sorted(BENCH.glob("*.py")) if p.name != "benchenv.py"]
    writers = [p for p in scripts if WRITES_RESULTS.search(p.read_text())]
    assert len(writers) >= 20  # the pattern still finds them
    missing = [p.name for p in writers if not re.search(r"^import benchenv$", p.read_text(), re.M)]
    assert not missing, f"these write bench results without benchenv: {missing}"
