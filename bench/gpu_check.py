"""Everything a GPU must show, in one run: `python bench/gpu_check.py` (under 8 minutes on one
H100-class GPU; docs/benchmarks.md, "The GPU check").

    .venv/bin/python bench/gpu_check.py [--device cuda|cpu] [--smoke] [--steps study,...]
        [--out bench/results/gpu_check.json] [--keep DIR]

Steps (bench/gpu_check_steps.py), each timed, each failing alone without stopping the others:

- study: a 2-trial MiniLM study (bf16 autocast, train.deterministic true, long posts read as
  windows) trained uninterrupted, and the same study's first trial again in a second process
  that is killed with SIGKILL in the middle of its second epoch and resumed: every metric of
  every epoch, and the weights of every checkpoint, must be identical. Then the test evaluation
  and the export of the first study.
- checkpoint: CheckpointStore save and verified load of a real trial state (weights on the
  device, AdamW state after a step) against torch.save / torch.load of the same GPU tensors.
- throughput: training posts/s and tokens/s (windows), train.deterministic on and off, each run
  twice from the same seed: deterministic runs must end with identical weights.
- parity: predict with the export on the device (must reproduce the study report's test
  metrics exactly), on the CPU in the recorded precision and on the CPU in fp32: decisions and
  evidence spans that differ, and macro-F1 each way.

Without CUDA (and without --device cpu) it prints "no CUDA" and exits 0 at once. `--device cpu
--smoke` runs every step on the CPU at toy size (tiny model, few posts, 1-2 epochs); a test
runs it. Prints a table and writes the results as JSON (no absolute paths); exits 1 when a
step failed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import benchenv

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "gpu_check.json"
STEPS = ("study", "checkpoint", "throughput", "parity")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--smoke", action="store_true", help="toy sizes: tiny model, few posts")
    parser.add_argument("--steps", default=",".join(STEPS), help="comma-separated subset")
    parser.add_argument("--out", type=Path, default=RESULTS, help="JSON results file")
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it")
    args = parser.parse_args(argv)
    args.steps = [s for s in args.steps.split(",") if s]
    unknown = sorted(set(args.steps) - set(STEPS))
    if unknown:
        parser.error(f"unknown steps {unknown}; known: {', '.join(STEPS)}")
    return args


def run_steps(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    # leanhpo and the steps import after the "no CUDA" exit, which must cost nothing.
    import gpu_check_steps
    import gpu_check_study

    functions = {
        "study": gpu_check_study.study_step,
        "checkpoint": gpu_check_steps.checkpoint_step,
        "throughput": gpu_check_steps.throughput_step,
        "parity": gpu_check_study.parity_step,
    }
    check = gpu_check_steps.Check(device=args.device, smoke=args.smoke, work=work)
    results: dict[str, Any] = {}
    for name in args.steps:
        started = time.perf_counter()
        try:
            result = functions[name](check)
        except Exception as error:  # one step's failure must not hide the others' results
            result = {"ok": False, "error": f"{type(error).__name__}: {error}"}
            result["traceback"] = traceback.format_exc(limit=8).replace(str(work), "<work>")
        result["seconds"] = round(time.perf_counter() - started, 1)
        results[name] = result
        print(f"gpu_check: {name}: {'ok' if result['ok'] else 'FAILED'} ({result['seconds']} s)")
    return {"environment": check.environment(), "steps": results}


def command(args: argparse.Namespace) -> str:
    words = ["python bench/gpu_check.py", "--device", args.device]
    words += ["--smoke"] if args.smoke else []
    words += [] if args.steps == list(STEPS) else ["--steps", ",".join(args.steps)]
    return " ".join([*words, "--out", benchenv.relative_path(args.out)])


def table(steps: dict[str, Any]) -> str:
    lines = ["| step | ok | seconds | figures |", "|---|---|---|---|"]
    for name, result in steps.items():
        figures = result.get("summary") or result.get("error", "")
        lines.append(
            f"| {name} | {'yes' if result['ok'] else 'NO'} | {result['seconds']} | {figures} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    # tqdm reads it when first imported (torch imports it): batch bars would bury the table.
    os.environ.setdefault("TQDM_DISABLE", "1")
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print(
            f"no CUDA: torch {torch.__version__} sees no GPU; nothing to check (see --device cpu)"
        )
        return 0
    # cuBLAS reads its workspace size at its first call: set it before anything touches CUDA.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    started = time.perf_counter()
    work = args.keep or Path(tempfile.mkdtemp(prefix="leanhpo-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        found = run_steps(args, work.resolve())
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    ok = all(result["ok"] for result in found["steps"].values())
    record = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": command(args),
        "mode": "smoke" if args.smoke else "full",
        "ok": ok,
        "seconds": round(time.perf_counter() - started, 1),
        "machine": platform.machine(),
        **found,
    }
    text = json.dumps(record, indent=2, default=str).replace(str(work.resolve()), "<work>")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")
    print(table(found["steps"]))
    print(
        f"gpu_check: {'all steps passed' if ok else 'FAILED'} in {record['seconds']} s; "
        f"wrote {benchenv.relative_path(args.out)}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
