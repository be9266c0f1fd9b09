"""Peak memory against rows per pass, and the throughput cost of the bound (issue 29).

    .venv/bin/python bench/memory.py [--posts 160] [--max-length 128] [--batch-size 8]
        [--batches 2] [--settings null 32 8 auto] [--repeat-baseline]
        [--out bench/results/memory.json]

The default long-tailed sample (160 posts, lengths like the real ReDSM5), MiniLM with windows
(stride 64, max_windows 64), config.yaml's model and train values otherwise, on the CPU. The
timed batches are those of the seeded training order of epoch 1 (batch 8 posts): its largest
batch (the one a trial with `train.max_batch_rows: null` must hold in one pass) and the batches
spread evenly over the rest by size, the same for every setting. Each setting runs them through
the trial's own `train_one_epoch` (micro-batches of whole posts, one optimiser step per batch)
in a fresh process, so no allocator keeps what an earlier setting freed:
- `null`: no cap, every batch one pass (the baseline; with --repeat-baseline it runs first and
  again last, and the ratios are against the mean of the two, so drift on a shared machine
  shows);
- a number: at most that many rows a pass;
- `auto`: what a trial does (trial/memory.plan_memory: the row cost measured on the model, the
  rows from the memory free now, the guard's hooks attached).

Per setting: the process's peak RSS (VmHWM, reset after an untimed warm-up step that allocates
the gradients and AdamW's moments), that peak above the RSS before the timed batches, and posts
per second over the timed batches. The whole epoch's passes per setting are counted from the
order (no training). The guard's cost is its memory readings (one before each pass, one after
each encoder layer), timed on their own and set against auto's timed seconds: an end-to-end
comparison would drown in the noise of a shared machine. Prints a table and writes
bench/results/memory.json. At the defaults the baseline's largest pass needs about 10 GB, and
the bench took 11 minutes on 2 cores shared with a test run (load average 8; the 246-row pass
alone takes 1.5 to 2 minutes there); less on an idle machine.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, cast

os.environ.setdefault("TQDM_DISABLE", "1")  # train_one_epoch's progress bar would flood stdout

import benchenv
import torch
import yaml

from leanhpo.config import Config, deep_merge
from leanhpo.data import load_split, prepare_dataset
from leanhpo.memory.attempts import AttemptLog
from leanhpo.memory.limits import MemoryWatch, peak_rss, process_rss, reset_peak_rss
from leanhpo.training.loop import epoch_shuffle_seed, make_loader, train_one_epoch
from leanhpo.training.microbatch import split_batch
from leanhpo.training.setup import build_network, build_optimisation, encode
from leanhpo.trial.memory import plan_memory, trained_config

REPO = Path(__file__).resolve().parents[1]
CONFIG_FILE = REPO / "config.yaml"
RESULTS = REPO / "bench" / "results" / "memory.json"
SEED = 42
MB = 1 << 20


def make_config(args: argparse.Namespace, cap: int | str | None) -> Config:
    run = {
        "data": {"source": "sample", "sample_profile": "long_tailed", "sample_posts": args.posts},
        "model": {"id": args.model, "max_length": args.max_length, "long_posts": "windows"},
        "train": {
            "device": "cpu",
            "epochs": 1,
            "batch_size": args.batch_size,
            "max_batch_rows": cap,
        },
    }
    return Config.from_dict(deep_merge(yaml.safe_load(CONFIG_FILE.read_text()), run))


def parse_cap(text: str) -> int | str | None:
    return None if text == "null" else "auto" if text == "auto" else int(text)


def timed_batches(batches: list[dict[str, torch.Tensor]], count: int) -> list[int]:
    """Indices into the epoch's order: the largest batch and count - 1 spread over the rest."""
    by_size = sorted(range(len(batches)), key=lambda i: -batches[i]["input_ids"].shape[0])
    step = max(1, len(by_size) // max(1, count))
    return sorted(by_size[::step][:count])


def run_setting(args: argparse.Namespace) -> dict[str, Any]:
    """One setting in this process (the child): train the timed batches, measure."""
    cap = parse_cap(args.child)
    config = make_config(args, cap)
    with tempfile.TemporaryDirectory() as folder:
        prepare_dataset(config.to_dict()["data"], Path(folder) / "data")
        posts = load_split(Path(folder) / "data", "train")
        network = build_network(config, SEED)
        split = encode(network, config, posts)
        optimisation = build_optimisation(network, config, split)
        order = list(
            make_loader(split, args.batch_size, network.pad_token_id, epoch_shuffle_seed(SEED, 1))
        )
        picked = [order[i] for i in timed_batches(order, args.batches)]
        rows: int | None = cap if isinstance(cap, int) else None
        guard, plan = None, {}
        if cap == "auto":
            trial = Path(folder) / "study" / "trial_0000"
            trial.mkdir(parents=True)
            log = logging.getLogger("bench.memory")
            rows, guard = plan_memory(
                network, optimisation, config, split, SEED, 0, trial, AttemptLog(trial), log
            )
            budget = guard.budget
            plan = {**budget.cost.to_dict(), "limit_bytes": budget.reading.limit}
            plan.update(limit_source=budget.reading.source, auto_rows=rows)
        train = trained_config(config, rows).train
        model, denominator = network.model, network.model.evidence_loss_denominator
        epoch_passes = sum(len(split_batch(b, rows, denominator)) for b in order)

        def run(batches: list[dict[str, torch.Tensor]]) -> None:
            train_one_epoch(
                model,
                cast(Any, batches),
                optimisation.optimizer,
                optimisation.scheduler,
                train,
                network.device,
                optimisation.class_weights,
            )

        with guard or contextlib.nullcontext():
            run([min(order, key=lambda b: b["input_ids"].shape[0])])  # warm-up: grads, moments
            gc.collect()
            reset_peak_rss()
            before = process_rss()
            if guard is not None:
                guard.start_epoch(1)
            started = time.perf_counter()
            run(picked)
            seconds = time.perf_counter() - started
            peak = peak_rss()
    posts = sum(int(b["labels"].shape[0]) for b in picked)
    return {
        "setting": args.child,
        "rows_per_pass": rows,
        "guard_layers": guard.layers if guard is not None else None,
        "timed_batch_rows": [int(b["input_ids"].shape[0]) for b in picked],
        "timed_passes": sum(len(split_batch(b, rows, denominator)) for b in picked),
        "timed_posts": posts,
        "epoch_batches": len(order),
        "epoch_rows": sum(int(b["input_ids"].shape[0]) for b in order),
        "epoch_passes": epoch_passes,
        "longest_post_windows": max(
            sum(1 for e in split.examples if e.unit == u) for u in {e.unit for e in split.examples}
        ),
        "seconds": round(seconds, 2),
        "posts_per_second": round(posts / seconds, 3),
        "peak_rss_mb": round(peak / MB),
        "rss_before_mb": round(before / MB),
        "pass_peak_mb": round((peak - before) / MB),
        **plan,
    }


def child(args: argparse.Namespace, setting: str) -> dict[str, Any]:
    options = ["--posts", str(args.posts), "--max-length", str(args.max_length)]
    options += ["--batch-size", str(args.batch_size), "--batches", str(args.batches)]
    command = [sys.executable, __file__, "--child", setting, "--model", args.model, *options]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"setting {setting} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    row: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    row["load_average_1min"] = round(os.getloadavg()[0], 2)
    print(f"  {setting}: {json.dumps(row)}", file=sys.stderr, flush=True)
    return row


def guard_check_us(repeats: int = 2000) -> float:
    """Microseconds per memory reading: what the guard adds per encoder layer."""
    watch = MemoryWatch.discover()
    started = time.perf_counter()
    for _ in range(repeats):
        watch.read()
    return round((time.perf_counter() - started) / repeats * 1e6, 1)


def environment(args: argparse.Namespace) -> dict[str, Any]:
    reading = MemoryWatch.discover().read()
    return benchenv.environment(
        {
            "torch_threads": torch.get_num_threads(),
            "memory_limit_source": reading.source,
            "model": args.model,
            "sample_posts": args.posts,
            "max_length": args.max_length,
            "batch_size": args.batch_size,
            "seed": SEED,
        }
    )


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| setting | rows per pass | passes (timed) | passes (epoch) | peak RSS | pass peak "
        "| peak vs null | posts/s | vs null |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        lines.append(
            f"| {row['setting']} | {row['rows_per_pass'] or 'null'} | {row['timed_passes']} "
            f"| {row['epoch_passes']} | {row['peak_rss_mb']:,} MB | {row['pass_peak_mb']:,} MB "
            f"| {row['peak_ratio']:.2f} | {row['posts_per_second']:.2f} "
            f"| {row['throughput_ratio']:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--model", default="minilm", help="minilm, or tiny for a smoke test")
    parser.add_argument("--posts", type=int, default=160, help="long-tailed sample posts")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--batches", type=int, default=2, help="timed batches per setting")
    parser.add_argument("--settings", nargs="+", default=["null", "32", "8", "auto"])
    parser.add_argument("--repeat-baseline", action="store_true", help="null again, last")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_setting(args)))
        return
    env = environment(args)
    settings = [s for s in args.settings if s != "null"]
    rows = [child(args, "null"), *(child(args, s) for s in settings)]
    if args.repeat_baseline:
        rows.append(child(args, "null"))
    baselines = [row for row in rows if row["setting"] == "null"]
    first = baselines[0]
    base_speed = sum(row["posts_per_second"] for row in baselines) / len(baselines)
    check_us = guard_check_us()
    auto = next((r for r in rows if r["setting"] == "auto"), None)
    guard_share = None
    if auto is not None:  # readings per pass: one before it, one after each encoder layer
        readings = auto["timed_passes"] * (1 + auto["guard_layers"])
        guard_share = round(readings * check_us / 1e6 / auto["seconds"], 6)
    for row in rows:
        row["peak_ratio"] = round(row["peak_rss_mb"] / first["peak_rss_mb"], 3)
        row["throughput_ratio"] = round(row["posts_per_second"] / base_speed, 3)
    report = {
        "command": " ".join(["python bench/memory.py", *sys.argv[1:]]).strip(),
        "environment": env,
        "guard_check_us": check_us,
        "guard_share_of_auto_seconds": guard_share,
        "settings": rows,
    }
    text = json.dumps(report, indent=2)
    args.out.write_text(text + "\n")
    print(table(rows))
    print(
        f"guard: {check_us} us per memory reading (one per encoder layer and pass), "
        f"{guard_share:.4%} of auto's timed seconds"
        if guard_share is not None
        else f"guard: {check_us} us per memory reading"
    )


if __name__ == "__main__":
    main()
