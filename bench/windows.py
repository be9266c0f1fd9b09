"""Long posts: truncation against overlapping windows on the long-tailed sample (issue 14).

    .venv/bin/python bench/windows.py [--posts 300] [--model minilm] [--max-length 256]

For each mode: windows (rows) read, tokens read, the share of gold evidence pairs a window
reaches, and training throughput (posts per second over one pass of forward + backward +
optimiser step, batch 8) measured in the same run; the ratio is windows against truncation.
Prints JSON and writes bench/results/windows.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import benchenv
import torch

from leanhpo.config import Config
from leanhpo.data import prepare_dataset
from leanhpo.data.prepare import load_split
from leanhpo.training.features import Windowing, encode_posts
from leanhpo.training.loop import make_loader
from leanhpo.training.setup import build_network

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--posts", type=int, default=300)
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--stride", type=int, default=64)
    parser.add_argument("--max-windows", type=int, default=16)
    options = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    env = benchenv.environment()
    with tempfile.TemporaryDirectory() as folder:
        data = {"source": "sample", "sample_posts": options.posts}
        prepare_dataset(Config.from_dict({"data": data}).to_dict()["data"], Path(folder))
        posts = load_split(Path(folder), "train")
    results = {}
    for mode in ("truncate", "windows"):
        config = Config.from_dict(
            {
                "model": {
                    "id": options.model,
                    "max_length": options.max_length,
                    "long_posts": mode,
                    "window_stride": options.stride,
                    "max_windows": options.max_windows,
                },
                "train": {"device": "cpu"},
            }
        )
        network = build_network(config, seed=0)
        windowing = Windowing(options.max_length, mode, options.stride, options.max_windows)
        split = encode_posts(posts, network.tokenizer, "multi_label", windowing)
        stats = split.stats
        located = stats["evidence_pairs_in_window"] + stats["evidence_pairs_outside_window"]
        optimizer = torch.optim.AdamW(network.model.parameters(), lr=1e-5)
        loader = make_loader(split, 8, network.pad_token_id, shuffle_seed=0)
        network.model.train()
        started = time.perf_counter()
        for batch in loader:
            out = network.model(
                input_ids=batch["input_ids"],
                attention_mask=batch["attention_mask"],
                span_mask=batch["span_mask"],
                token_type_ids=batch.get("token_type_ids"),
                window_owner=batch["window_owner"],
            )
            loss = network.model.evidence_loss(out, batch) + out["criteria_logits"].mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        seconds = time.perf_counter() - started
        results[mode] = {
            "posts": len(posts),
            "windows": len(split.examples),
            "tokens": sum(len(example.input_ids) for example in split.examples),
            "evidence_reached": round(stats["evidence_pairs_in_window"] / max(located, 1), 4),
            "evidence_pairs": located,
            "posts_per_second": round(len(posts) / seconds, 2),
            "seconds": round(seconds, 1),
        }
        print(mode, results[mode], file=sys.stderr)
    truncate, windows = results["truncate"], results["windows"]
    report = {
        "command": "python bench/windows.py " + " ".join(sys.argv[1:]),
        "environment": env,
        "model": options.model,
        "max_length": options.max_length,
        "window_stride": options.stride,
        "max_windows": options.max_windows,
        "modes": results,
        "tokens_ratio": round(windows["tokens"] / truncate["tokens"], 2),
        "time_ratio": round(windows["seconds"] / truncate["seconds"], 2),
    }
    text = json.dumps(report, indent=2)
    print(text)
    (REPO / "bench" / "results" / "windows.json").write_text(text + "\n")


if __name__ == "__main__":
    main()
