"""Stripping one MiniLM checkpoint to weights only, against saving it, in the same run.

    .venv/bin/python bench/strip.py [--dir /work/bench-tmp] [--repeats 5]

The state is the real trial state of bench/checkpoint.py (MiniLM weights plus AdamW state
after one step, and the RNG state). Each repeat saves it with CheckpointStore (full, timed),
strips it (timed: the new manifest, its rename and the unlinks, all fsynced), then loads the
stripped checkpoint (timed, verified). `sync` runs before every timed operation. Prints the
medians and writes bench/results/strip.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from functools import partial
from pathlib import Path

import benchenv
from checkpoint import minilm_state  # bench/checkpoint.py, beside this file

from leanhpo.checkpoints import CheckpointStore

RESULTS = Path(__file__).resolve().parent / "results" / "strip.json"


def timed(operation):  # type: ignore[no-untyped-def]
    os.sync()
    started = time.perf_counter()
    result = operation()
    return time.perf_counter() - started, result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", type=Path, default=Path("/work"))
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    env = benchenv.environment()
    state, _ = minilm_state()
    rows = []
    for repeat in range(args.repeats):
        with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
            store = CheckpointStore(Path(tmp) / "checkpoints")
            save_s, saved = timed(partial(store.save, 1, state["groups"], state["meta"]))
            strip_s, freed = timed(partial(store.strip, 1))
            load_s, loaded = timed(partial(store.load, 1))
            assert set(loaded.groups) == {"model"} and loaded.info.saved_sha256 == saved.sha256
            rows.append(
                {
                    "repeat": repeat,
                    "save_s": save_s,
                    "strip_s": strip_s,
                    "load_weights_only_s": load_s,
                    "full_bytes": saved.bytes,
                    "weights_only_bytes": loaded.info.bytes,
                    "freed_bytes": freed,
                }
            )
    median = {k: statistics.median(r[k] for r in rows) for k in rows[0] if k != "repeat"}
    result = {
        "environment": env,
        "repeats": rows,
        "median": median,
        "strip_vs_save": median["strip_s"] / median["save_s"],
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2))
    print(
        f"full {median['full_bytes'] / 1e6:.1f} MB -> weights only "
        f"{median['weights_only_bytes'] / 1e6:.1f} MB "
        f"({100 * median['weights_only_bytes'] / median['full_bytes']:.1f}%)"
    )
    print(
        f"save {median['save_s'] * 1000:.0f} ms, strip {median['strip_s'] * 1000:.1f} ms "
        f"({result['strip_vs_save']:.3f}x the save), load weights only "
        f"{median['load_weights_only_s'] * 1000:.0f} ms"
    )


if __name__ == "__main__":
    main()
