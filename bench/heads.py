"""Training throughput of every model-zoo option, as a ratio against the plain encoder.

    .venv/bin/python bench/heads.py [--model minilm|tiny] [--steps 8] [--warmup 2]
        [--batch-size 16] [--max-length 256] [--threads N] [--only baseline,biaffine]
        [--out bench/results/heads.json]

One training step is what a trial runs: forward, criteria + evidence loss, backward, gradient
clipping, AdamW step and scheduler step (``leanhpo.training.loop.train_one_epoch`` itself).
The baseline is the encoder with a linear criteria head on CLS pooling, the start_end_linear
evidence head, no coupling, multi_label input and BCE; every other row changes one setting.
Each config is ``config.yaml`` with the row's overrides deep-merged on top and validated. Per
row the network is built fresh under the same seed, the training posts of the bundled sample
data are encoded, and the first warm-up + steps batches of the seeded length-grouped training
loader are taken, so every multi_label row sees the very same batches. The warm-up steps are
not timed; the next ``--steps`` are, with ``time.perf_counter``. The baseline runs first and
again last, and ratios are against the mean of the two, so drift on a shared machine shows.
binary_pairs feeds 9 examples per post, so the ratio column compares POSTS per second (one
multi_label example is one post). Prints a markdown table and writes ``bench/results/heads.json``.
Smoke test: ``--model tiny --steps 2 --warmup 1``. With torch's default of one thread per core,
a step runs 10-60x slower whenever another process takes a core (the threads wait on each
other), so run on an idle machine, or pass ``--threads`` below the free cores.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

os.environ.setdefault("TQDM_DISABLE", "1")  # train_one_epoch's progress bar would flood stdout

import benchenv
import torch
import yaml
from torch.utils.data import DataLoader

from leanhpo.config import Config, deep_merge
from leanhpo.data import SYMPTOMS, load_split, prepare_dataset
from leanhpo.training.features import EncodedSplit
from leanhpo.training.loop import epoch_shuffle_seed, make_loader, train_one_epoch
from leanhpo.training.setup import (
    Network,
    Optimisation,
    build_network,
    build_optimisation,
    encode,
)
from leanhpo.trial.memory import replay_config

REPO = Path(__file__).resolve().parents[1]
CONFIG_FILE = REPO / "config.yaml"
RESULTS = REPO / "bench" / "results" / "heads.json"
SEED = 42
BASELINE: dict[str, Any] = {
    "model": {
        "criteria_head": "linear",
        "pooling": "cls",
        "evidence_head": "start_end_linear",
        "coupling": "independent",
        "coupling_pooling": "mean",
        "coupling_method": "concat",
        "input_format": "multi_label",
    },
    "train": {"loss": "bce"},
}
CRITERIA_HEADS = ("linear", "mlp", "mlp_residual", "gated", "multi_sample_dropout")
POOLINGS = ("cls", "mean", "attention", "last_2_layer_mix")
EVIDENCE_HEADS = ("start_end_linear", "start_end_mlp", "biaffine", "bio_crf", "sentence_reranker")
COUPLING_METHODS = ("concat", "add", "mean", "weighted_sum", "weighted_mean")
COUPLING_POOLINGS = ("mean", "max", "attention")
LOSSES = ("bce", "weighted_bce", "focal", "adaptive_focal", "hybrid")


def variants() -> dict[str, dict[str, Any]]:
    """Row name -> overrides of the baseline's model/train keys, in table order."""
    rows: dict[str, dict[str, Any]] = {}
    for key, values in (
        ("criteria_head", CRITERIA_HEADS),
        ("pooling", POOLINGS),
        ("evidence_head", EVIDENCE_HEADS),
    ):
        rows.update({value: {"model": {key: value}} for value in values})
    pairs = [(method, "mean") for method in COUPLING_METHODS]
    pairs += [("concat", pooling) for pooling in COUPLING_POOLINGS if pooling != "mean"]
    for method, pooling in pairs:
        coupled = {"coupling": "coupled", "coupling_method": method, "coupling_pooling": pooling}
        rows[f"coupled_{method}_{pooling}"] = {"model": coupled}
    rows.update({loss: {"train": {"loss": loss}} for loss in LOSSES})
    rows["binary_pairs"] = {"model": {"input_format": "binary_pairs"}}
    return rows


def changed_setting(overrides: dict[str, Any]) -> str:
    flat = [f"{key}={value}" for part in overrides.values() for key, value in part.items()]
    return ", ".join(flat) or "–"


def make_config(base: dict[str, Any], args: argparse.Namespace, overrides: dict) -> Config:
    """config.yaml + the run's settings + the baseline + the row; from_dict validates it."""
    run = {
        "data": {"source": "sample"},
        "model": {"id": args.model, "max_length": args.max_length},
        "train": {"batch_size": args.batch_size},
    }
    merged = deep_merge(deep_merge(deep_merge(base, run), BASELINE), overrides)
    return Config.from_dict(merged)


class Batches:
    """The encoded training split and its fixed timed batches, once per input format."""

    def __init__(self, posts: list[dict[str, Any]], count: int) -> None:
        self.posts, self.count = posts, count
        self.cache: dict[str, tuple[EncodedSplit, list[dict[str, torch.Tensor]]]] = {}

    def get(self, network: Network, config: Config) -> tuple[EncodedSplit, list[dict]]:
        key = config.model.input_format
        if key not in self.cache:
            split = encode(network, config, self.posts)
            loader = make_loader(
                split, config.train.batch_size, network.pad_token_id, epoch_shuffle_seed(SEED, 0)
            )
            # More warm-up + timed steps than one epoch has batches: go round again.
            batches = list(itertools.islice(itertools.cycle(loader), self.count))
            self.cache[key] = (split, batches)
        return self.cache[key]


def train_steps(
    network: Network,
    optimisation: Optimisation,
    config: Config,
    batches: list[dict],
    on_step: Callable[[int], None] | None = None,
) -> None:
    """Train on `batches` exactly as a trial's epoch does, then wait for the device."""
    train_one_epoch(
        network.model,
        cast("DataLoader[Any]", batches),  # a list has the len() and iteration the loop needs
        optimisation.optimizer,
        optimisation.scheduler,
        config.train,
        network.device,
        optimisation.class_weights,
        on_step=on_step,
    )
    if network.device.type == "cuda":
        torch.cuda.synchronize(network.device)


def measure(config: Config, data: Batches, warmup: int) -> dict[str, Any]:
    network = build_network(config, SEED)
    split, batches = data.get(network, config)
    optimisation = build_optimisation(network, config, split)
    config = replay_config(network, optimisation, config, split, None)  # auto rows, as a trial
    if warmup:
        train_steps(network, optimisation, config, batches[:warmup])
    timed = batches[warmup:]
    marks: list[float] = []
    start = time.perf_counter()
    train_steps(network, optimisation, config, timed, lambda _: marks.append(time.perf_counter()))
    seconds = time.perf_counter() - start
    examples = sum(len(batch["labels"]) for batch in timed)
    posts = examples / (len(SYMPTOMS) if config.model.input_format == "binary_pairs" else 1)
    tokens = sum(batch["input_ids"].numel() for batch in timed)
    return {
        "steps": len(timed),
        "examples": examples,
        "seconds": round(seconds, 4),
        "examples_per_s": examples / seconds,
        "posts_per_s": posts / seconds,
        "padded_tokens_per_example": tokens / examples,
        "step_seconds": [round(b - a, 4) for a, b in itertools.pairwise([start, *marks])],
        "head_parameters": sum(p.numel() for p in network.model.head_parameters()),
        "total_parameters": sum(p.numel() for p in network.model.parameters()),
        "device": str(network.device),
    }


def run_row(
    name: str, overrides: dict, base: dict, args: argparse.Namespace, data: Batches
) -> dict[str, Any]:
    row: dict[str, Any] = {"variant": name, "setting": changed_setting(overrides)}
    try:
        row.update(measure(make_config(base, args, overrides), data, args.warmup))
    except Exception as error:  # one broken head must not lose the other rows' figures
        row["error"] = f"{type(error).__name__}: {error}"
    gc.collect()  # drop this row's network before the next one is built
    row["load_average_1min"] = round(os.getloadavg()[0], 2)  # other users of the CPUs
    shown = f"{row['posts_per_s']:.2f} posts/s" if "error" not in row else row["error"]
    print(f"  {name}: {shown} (load {row['load_average_1min']})", flush=True)
    return row


def add_ratios(rows: list[dict[str, Any]], baseline_posts_per_s: float) -> None:
    for row in rows:
        if "error" not in row:
            row["ratio_vs_baseline"] = row["posts_per_s"] / baseline_posts_per_s


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| variant | changed setting | examples/s | posts/s | ratio vs baseline (posts/s) "
        "| padded tokens/example | head parameters |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['variant']} | {row['setting']} | failed: {row['error']} |||||")
            continue
        lines.append(
            f"| {row['variant']} | {row['setting']} | {row['examples_per_s']:.2f} "
            f"| {row['posts_per_s']:.2f} | {row['ratio_vs_baseline']:.3f} "
            f"| {row['padded_tokens_per_example']:.0f} | {row['head_parameters']:,} |"
        )
    return "\n".join(lines)


def environment(args: argparse.Namespace) -> dict[str, Any]:
    return benchenv.environment(
        {
            "torch_threads": torch.get_num_threads(),
            "model": args.model,
            "batch_size": args.batch_size,
            "max_length": args.max_length,
            "warmup_steps": args.warmup,
            "timed_steps": args.steps,
            "seed": SEED,
        }
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--model", default="minilm", help="minilm, or tiny for a smoke test")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per row")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before them")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's own)")
    parser.add_argument("--only", help="comma-separated rows to run; the baseline always runs")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be at least 1 and --warmup at least 0")
    return args


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows_to_run = variants()
    if args.only:
        wanted = [name for name in args.only.split(",") if name and name != "baseline"]
        unknown = sorted(set(wanted) - set(rows_to_run))
        if unknown:
            raise SystemExit(f"unknown rows {unknown}; known: baseline, {', '.join(rows_to_run)}")
        rows_to_run = {name: rows_to_run[name] for name in wanted}
    base = yaml.safe_load(CONFIG_FILE.read_text())
    env = environment(args)
    print(json.dumps(env), flush=True)
    with tempfile.TemporaryDirectory(prefix="leanhpo-bench-heads-") as tmp:
        prepare_dataset(make_config(base, args, {}).to_dict()["data"], Path(tmp))
        data = Batches(load_split(Path(tmp), "train"), args.warmup + args.steps)
    first = run_row("baseline (start)", {}, base, args, data)
    rows = [run_row(name, over, base, args, data) for name, over in rows_to_run.items()]
    last = run_row("baseline (end)", {}, base, args, data)
    ends = [row for row in (first, last) if "error" not in row]
    if not ends:
        raise SystemExit(f"the baseline failed: {first['error']}")
    baseline = statistics.mean(row["posts_per_s"] for row in ends)
    all_rows = [first, *rows, last]
    add_ratios(all_rows, baseline)
    env["load_average_end"] = os.getloadavg()
    drift = last["posts_per_s"] / first["posts_per_s"] - 1 if len(ends) == 2 else None
    report = {
        "environment": env,
        "baseline": {"overrides": BASELINE, "posts_per_s_mean": baseline, "drift": drift},
        "rows": all_rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(table(all_rows))
    if drift is not None:
        print(f"baseline drift, end vs start: {drift:+.1%}; ratios use the mean of the two")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
