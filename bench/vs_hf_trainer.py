"""Training throughput of our trainer against Hugging Face `transformers.Trainer` on the same
encoder, data, batch size, sequence length and length grouping.

    .venv/bin/python bench/vs_hf_trainer.py [--steps 8] [--warmup 8] [--rounds 3]
        [--batch-size 16] [--max-length 256] [--sample-posts 160] [--threads 2]
        [--out bench/results/vs_hf_trainer.json]

Both sides train MiniLM from the folder our `minilm` alias resolves to
(`leanhpo.models.encoder.minilm_path()`) on the training split of the bundled sample data
(config.yaml's `data`, prepared once into a temporary folder), tokenised once by our encoder
(`model.long_posts: truncate`, so both read the same first `--max-length` tokens of every post),
fp32 on the CPU with `torch.set_num_threads(--threads)`, AdamW with linear warmup and decay,
gradient clipping at 1.0, no evaluation.

- ours: `leanhpo.training.loop.train_one_epoch` on `make_loader` (seeded, length-grouped
  batches), as a trial runs it, with config.yaml's model/train keys overridden to the plainest
  multi_label network: CLS pooling, linear criteria head, BCE. The config has no criteria-only
  setting, so ours also runs its evidence head (start_end_linear) and loss (`lambda_evidence`
  0.25): the full multi-task step.
- HF: `AutoModelForSequenceClassification(num_labels=9, problem_type=
  "multi_label_classification")` under `Trainer` with `group_by_length=True`, `report_to=[]`,
  `save_strategy="no"`, `eval_strategy="no"`, `disable_tqdm=True`, `dataloader_num_workers=0`,
  `use_cpu=True`, `DataCollatorWithPadding`; the dataset holds our token ids.

Each side runs `--warmup + --steps` optimizer steps from a freshly loaded model (model load and
Trainer construction are not timed). The time of each step's end is taken in the step callback
(`on_step` / `TrainerCallback.on_step_end`), and throughput is the posts of steps
warmup+1..warmup+steps over the time from the end of step `warmup` to the end of the last step
(data loading and collation included on both sides). The sides alternate, ours first,
`--rounds` times; the ratio divides the summed posts by the summed seconds of each side. With
the defaults (128 training posts, batch 16: 8 steps an epoch) the warm-up is epoch 1 and the
timed steps are exactly epoch 2, so both sides time the same posts. The groupers differ: ours
sorts windows of 8 batches (here the whole split), HF's `LengthGroupedSampler` megabatches of
min(50, n / (4 x batch)) batches (here 2), so HF pads more; padded tokens/s is printed too. Prints a table and
writes bench/results/vs_hf_trainer.json.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

os.environ.setdefault("TQDM_DISABLE", "1")

import benchenv
import torch
import yaml
from torch.utils.data import DataLoader
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from leanhpo.config import Config, deep_merge
from leanhpo.data import load_split, prepare_dataset
from leanhpo.models.encoder import minilm_path
from leanhpo.training.features import EncodedSplit
from leanhpo.training.loop import epoch_shuffle_seed, make_loader, train_one_epoch
from leanhpo.training.setup import build_network, build_optimisation, encode

REPO = Path(__file__).resolve().parents[1]
SEED = 42
LEARNING_RATE = 5.0e-5
WEIGHT_DECAY = 0.01
WARMUP_RATIO = 0.1
NUM_LABELS = 9


def make_config(args: argparse.Namespace, epochs: int) -> Config:
    base = yaml.safe_load((REPO / "config.yaml").read_text())
    overrides = {
        "data": {"source": "sample", "sample_posts": args.sample_posts},
        "model": {
            "id": "minilm",
            "max_length": args.max_length,
            "long_posts": "truncate",
            "input_format": "multi_label",
            "pooling": "cls",
            "criteria_head": "linear",
            "evidence_head": "start_end_linear",
            "coupling": "independent",
        },
        "train": {
            "epochs": epochs,
            "batch_size": args.batch_size,
            "learning_rate": LEARNING_RATE,
            "head_learning_rate": LEARNING_RATE,
            "weight_decay": WEIGHT_DECAY,
            "warmup_ratio": WARMUP_RATIO,
            "max_grad_norm": 1.0,
            "loss": "bce",
            "augmentation_prob": 0.0,
            "max_batch_rows": None,  # whole batches, as the Trainer runs them
            "device": "cpu",
            "amp": False,
        },
    }
    return Config.from_dict(deep_merge(base, overrides))


def summarise(
    marks: list[float], posts: list[int], tokens: list[int], warmup: int, steps: int
) -> dict[str, Any]:
    """Throughput over steps warmup+1 .. warmup+steps; `marks` are step ends, so the first
    timed step starts at the end of step `warmup` (hence warmup >= 1)."""
    if len(marks) < warmup + steps:
        raise SystemExit(f"only {len(marks)} steps ran, {warmup + steps} needed")
    timed = marks[warmup - 1 : warmup + steps]
    seconds = timed[-1] - timed[0]
    timed_posts = sum(posts[warmup : warmup + steps])
    timed_tokens = sum(tokens[warmup : warmup + steps])
    return {
        "steps": steps,
        "posts": timed_posts,
        "seconds": seconds,
        "posts_per_s": timed_posts / seconds,
        "padded_tokens_per_post": timed_tokens / timed_posts,
        "padded_tokens_per_s": timed_tokens / seconds,
        "step_seconds": [round(b - a, 3) for a, b in itertools.pairwise(timed)],
        "load_average": round(os.getloadavg()[0], 2),
        "torch_threads": torch.get_num_threads(),
    }


class Counted:
    """A loader that records each batch's posts and padded tokens as it hands it out."""

    def __init__(self, loader: DataLoader[Any], posts: list[int], tokens: list[int]) -> None:
        self.loader, self.posts, self.tokens = loader, posts, tokens

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        for batch in self.loader:
            self.posts.append(len(batch["labels"]))
            self.tokens.append(batch["input_ids"].numel())
            yield batch


def run_ours(args: argparse.Namespace, train_posts: list[dict[str, Any]]) -> dict[str, Any]:
    total = args.warmup + args.steps
    steps_per_epoch = -(-len(train_posts) // args.batch_size)
    epochs = -(-total // steps_per_epoch)
    config = make_config(args, epochs)
    network = build_network(config, SEED)
    split = encode(network, config, train_posts)
    optimisation = build_optimisation(network, config, split)
    marks: list[float] = []
    posts: list[int] = []
    tokens: list[int] = []
    for epoch in range(1, epochs + 1):
        loader = make_loader(
            split, config.train.batch_size, network.pad_token_id, epoch_shuffle_seed(SEED, epoch)
        )
        train_one_epoch(
            network.model,
            cast("DataLoader[Any]", Counted(loader, posts, tokens)),
            optimisation.optimizer,
            optimisation.scheduler,
            config.train,
            network.device,
            optimisation.class_weights,
            on_step=lambda _: marks.append(time.perf_counter()),
        )
    result = summarise(marks, posts, tokens, args.warmup, args.steps)
    result["parameters"] = sum(p.numel() for p in network.model.parameters())
    return result


def hf_dataset(split: EncodedSplit) -> list[dict[str, Any]]:
    rows = []
    for example in split.examples:
        row: dict[str, Any] = {
            "input_ids": example.input_ids,
            "attention_mask": example.attention_mask,
            "labels": [float(v) for v in split.posts[example.post_index]["labels"]],
        }
        if example.token_type_ids is not None:
            row["token_type_ids"] = example.token_type_ids
        rows.append(row)
    return rows


class StepMarks(TrainerCallback):
    def __init__(self) -> None:
        self.marks: list[float] = []

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.marks.append(time.perf_counter())


def run_hf(args: argparse.Namespace, dataset: list[dict[str, Any]], tmp: Path) -> dict[str, Any]:
    torch.use_deterministic_algorithms(False)  # ours turns it on in build_network; HF's default
    path = str(minilm_path())
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModelForSequenceClassification.from_pretrained(
        path,
        num_labels=NUM_LABELS,
        problem_type="multi_label_classification",
        local_files_only=True,
    )
    padder = DataCollatorWithPadding(tokenizer)
    posts: list[int] = []
    tokens: list[int] = []

    def collate(features: list[dict[str, Any]]) -> Any:
        batch = padder(features)
        posts.append(len(batch["labels"]))
        tokens.append(batch["input_ids"].numel())
        return batch

    training = TrainingArguments(
        output_dir=str(tmp / "hf"),
        per_device_train_batch_size=args.batch_size,
        max_steps=args.warmup + args.steps,
        learning_rate=LEARNING_RATE,
        weight_decay=WEIGHT_DECAY,
        warmup_ratio=WARMUP_RATIO,
        max_grad_norm=1.0,
        lr_scheduler_type="linear",
        optim="adamw_torch",
        group_by_length=True,
        report_to=[],
        save_strategy="no",
        eval_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
        dataloader_num_workers=0,
        dataloader_pin_memory=False,
        remove_unused_columns=False,
        use_cpu=True,
        fp16=False,
        bf16=False,
        seed=SEED,
        data_seed=SEED,
    )
    marks = StepMarks()
    trainer = Trainer(
        model=model,
        args=training,
        train_dataset=cast("Any", dataset),
        data_collator=collate,
        callbacks=[marks],
    )
    trainer.train()
    result = summarise(marks.marks, posts, tokens, args.warmup, args.steps)
    result["parameters"] = sum(p.numel() for p in model.parameters())
    return result


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--steps", type=int, default=8, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=8, help="untimed steps first (>= 1)")
    parser.add_argument("--rounds", type=int, default=3, help="ours, HF alternations")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--sample-posts", type=int, default=160)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--out", type=Path, default=REPO / "bench" / "results" / "vs_hf_trainer.json"
    )
    args = parser.parse_args()
    if args.steps < 1 or args.warmup < 1:
        parser.error("--steps and --warmup must be at least 1")
    return args


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    env = benchenv.environment()
    runs: dict[str, list[dict[str, Any]]] = {"ours": [], "hf": []}
    with tempfile.TemporaryDirectory(prefix="leanhpo-bench-hf-") as name:
        tmp = Path(name)
        prepare_dataset(make_config(args, 1).to_dict()["data"], tmp / "data")
        train_posts = load_split(tmp / "data", "train")
        config = make_config(args, 1)
        network = build_network(config, SEED)
        dataset = hf_dataset(encode(network, config, train_posts))
        del network
        for round_ in range(args.rounds):
            for side in ("ours", "hf"):
                gc.collect()
                run = run_ours(args, train_posts) if side == "ours" else run_hf(args, dataset, tmp)
                runs[side].append(run)
                print(
                    f"round {round_ + 1} {side}: {run['posts_per_s']:.2f} posts/s, "
                    f"{run['padded_tokens_per_post']:.0f} padded tokens/post "
                    f"(load {run['load_average']})",
                    flush=True,
                )
    totals = {
        side: sum(r["posts"] for r in rs) / sum(r["seconds"] for r in rs)
        for side, rs in runs.items()
    }
    token_rates = {
        side: sum(r["padded_tokens_per_s"] * r["seconds"] for r in rs)
        / sum(r["seconds"] for r in rs)
        for side, rs in runs.items()
    }
    env["load_average_end"] = os.getloadavg()
    result = {
        "environment": env,
        "settings": vars(args)
        | {"out": benchenv.relative_path(args.out), "train_posts": len(train_posts)},
        "criteria_only": False,
        "runs": runs,
        "posts_per_s": totals,
        "ratio_ours_over_hf": totals["ours"] / totals["hf"],
        "padded_tokens_per_s": token_rates,
        "ratio_ours_over_hf_padded_tokens_per_s": token_rates["ours"] / token_rates["hf"],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        "| side | runs (posts/s) | padded tokens/post | posts/s (pooled) | padded tokens/s |\n"
        "|---|---|---|---|---|"
    )
    for side, label in (("ours", "ours (train_one_epoch)"), ("hf", "HF Trainer")):
        each = ", ".join(f"{r['posts_per_s']:.2f}" for r in runs[side])
        pad = ", ".join(f"{r['padded_tokens_per_post']:.0f}" for r in runs[side])
        print(f"| {label} | {each} | {pad} | {totals[side]:.2f} | {token_rates[side]:.0f} |")
    print(f"ours / HF: {result['ratio_ours_over_hf']:.3f}x posts/s (goal >= 1.0), ", end="")
    print(f"{result['ratio_ours_over_hf_padded_tokens_per_s']:.3f}x padded tokens/s")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
