"""Predict throughput of an export on CPU, and the export's size against one checkpoint.

    .venv/bin/python bench/predict.py [--posts 200] [--model minilm] [--modes truncate,windows]
        [--batch-size N] [--threads N] [--repeats 3] [--out bench/results/predict.json]

The network is ``config.yaml``'s (MiniLM, its heads) with model.long_posts set per mode,
freshly initialised under a fixed seed: an untrained export costs exactly what a trained one
does (same tensors, same code path), without running a study first. Per mode it is exported
with ``leanhpo.export.write_export``, loaded back with ``load_exported`` (every file's SHA-256
checked; timed) and ``predict_texts`` runs on the first ``--posts`` posts of the bundled
long-tailed sample (all splits), after an untimed warm-up on 4 posts, ``--repeats`` times; the
fastest run counts (as timeit does: the slower ones lost time to other users of the CPUs).
Posts per second count the whole of predict: tokenising, windows, encoder, heads and evidence
decoding.

For the size, one checkpoint of the same network is written as a trial writes it (weights,
AdamW state after one training step, RNG, meta), next to the export. Prints a markdown table
and writes ``bench/results/predict.json``. Smoke test: ``--model tiny --posts 8``. Run on an
idle machine or pass ``--threads`` below the free cores (see bench/heads.py).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, cast

os.environ.setdefault("TQDM_DISABLE", "1")  # evaluate's progress bars would flood stdout

import benchenv
import torch
import yaml
from torch.utils.data import DataLoader

from leanhpo.checkpoints import CheckpointStore
from leanhpo.config import Config, deep_merge
from leanhpo.data import load_split, prepare_dataset
from leanhpo.export import load_exported, model_card, predict_texts, verify_folder, write_export
from leanhpo.training.loop import make_loader, train_one_epoch
from leanhpo.training.setup import Network, build_network, build_optimisation, encode
from leanhpo.trial.memory import replay_config
from leanhpo.trial.state import pack

REPO = Path(__file__).resolve().parents[1]
CONFIG_FILE = REPO / "config.yaml"
RESULTS = REPO / "bench" / "results" / "predict.json"
SEED = 42
WARMUP_POSTS = 4


def make_config(base: dict[str, Any], args: argparse.Namespace, long_posts: str) -> Config:
    run = {
        "data": {"source": "sample", "sample_posts": max(args.posts, 60)},
        # No trial resolves `auto` here: the value predict's figures were measured with.
        "model": {"id": args.model, "long_posts": long_posts, "max_answer_tokens": 96},
        "train": {"device": "cpu"},
    }
    if args.batch_size:
        run["train"]["eval_batch_size"] = args.batch_size
    return Config.from_dict(deep_merge(base, run))


def sample_posts(config: Config, count: int) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="leanhpo-bench-predict-") as tmp:
        prepare_dataset(config.to_dict()["data"], Path(tmp))
        posts = [
            p for split in ("train", "validation", "test") for p in load_split(Path(tmp), split)
        ]
    return posts[:count]


def folder_bytes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.is_file()}


def checkpoint_bytes(network: Network, config: Config, posts: list[dict], root: Path) -> int:
    """One checkpoint as a trial writes it: AdamW holds its state after one step."""
    split = encode(network, config, posts[: config.train.batch_size])
    optimisation = build_optimisation(network, config, split)
    config = replay_config(network, optimisation, config, split, None)  # auto rows, as a trial
    loader = make_loader(split, config.train.batch_size, network.pad_token_id, SEED)
    train_one_epoch(
        network.model,
        cast("DataLoader[Any]", list(loader)[:1]),
        optimisation.optimizer,
        optimisation.scheduler,
        config.train,
        network.device,
        optimisation.class_weights,
    )
    groups, meta = pack(network, optimisation, {"config": config.to_dict(), "epoch": 1})
    return CheckpointStore(root).save(1, groups, meta).bytes


def measure(config: Config, posts: list[dict], folder: Path, repeats: int) -> dict[str, Any]:
    network = build_network(config, SEED)
    info = {"config": config.to_dict(), "decision_threshold": 0.5, "null_threshold": 0.0}
    info["seed"] = SEED
    write_export(network, info, model_card(info), folder)
    del network
    start = time.perf_counter()
    verify_folder(folder)
    verify_seconds = time.perf_counter() - start
    start = time.perf_counter()
    model = load_exported(folder, "cpu")
    load_seconds = time.perf_counter() - start
    texts = [p["text"] for p in posts]
    predict_texts(model, texts[:WARMUP_POSTS])
    split = encode(model.network, model.config, posts)
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        rows = predict_texts(model, texts)
        timings.append(time.perf_counter() - start)
    seconds = min(timings)  # as timeit: the other runs lost time to other users of the CPUs
    return {
        "long_posts": config.model.long_posts,
        "posts": len(rows),
        "windows": len(split.examples),
        "tokens": sum(len(e.input_ids) for e in split.examples),
        "seconds": round(seconds, 2),
        "seconds_per_repeat": [round(t, 2) for t in timings],
        "posts_per_s": round(len(rows) / seconds, 2),
        "verify_seconds": round(verify_seconds, 3),
        "load_seconds": round(load_seconds, 3),
        "eval_batch_size": config.train.eval_batch_size,
        "export_bytes": sum(folder_bytes(folder).values()),
        "files": folder_bytes(folder),
        "load_average_1min": round(os.getloadavg()[0], 2),
    }


def environment(args: argparse.Namespace) -> dict[str, Any]:
    return benchenv.environment(
        {
            "command": "python bench/predict.py " + " ".join(args.argv),
            "torch_threads": torch.get_num_threads(),
            "model": args.model,
            "seed": SEED,
        }
    )


def table(rows: list[dict[str, Any]], checkpoint: int) -> str:
    lines = [
        "| long_posts | posts | windows | tokens | posts/s | load, SHA-256 included (s) | export MB "
        "| checkpoint MB | export / checkpoint |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['long_posts']} | {row['posts']} | {row['windows']} | {row['tokens']:,} "
            f"| {row['posts_per_s']:.2f} | {row['load_seconds']:.2f} "
            f"| {row['export_bytes'] / 1e6:.1f} | {checkpoint / 1e6:.1f} "
            f"| {row['export_bytes'] / checkpoint:.2f} |"
        )
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--posts", type=int, default=200)
    parser.add_argument("--model", default="minilm", help="minilm, or tiny for a smoke test")
    parser.add_argument("--modes", default="truncate,windows", help="model.long_posts values")
    parser.add_argument("--batch-size", type=int, help="eval_batch_size (default: config.yaml)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's own)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs; the fastest counts")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    args.argv = sys.argv[1:]
    return args


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    base = yaml.safe_load(CONFIG_FILE.read_text())
    modes = [m for m in args.modes.split(",") if m]
    env = environment(args)
    print(json.dumps(env), flush=True)
    posts = sample_posts(make_config(base, args, modes[0]), args.posts)
    rows = []
    with tempfile.TemporaryDirectory(prefix="leanhpo-bench-predict-") as tmp:
        for mode in modes:
            config = make_config(base, args, mode)
            rows.append(measure(config, posts, Path(tmp) / mode, args.repeats))
            print(f"  {mode}: {rows[-1]['posts_per_s']:.2f} posts/s", flush=True)
        config = make_config(base, args, modes[0])
        checkpoint = checkpoint_bytes(
            build_network(config, SEED), config, posts, Path(tmp) / "ckpt"
        )
    env["load_average_end"] = os.getloadavg()
    report = {"environment": env, "checkpoint_bytes": checkpoint, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(table(rows, checkpoint))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
