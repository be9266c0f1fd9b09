"""The Check of bench/gpu_check.py (its configs and folders) and its checkpoint and throughput
steps; the study and parity steps are in gpu_check_study.py. Each step takes the Check and
returns a dict with `ok`, a one-line `summary` and its figures."""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import benchenv
import torch

from leanhpo.checkpoints import CheckpointStore
from leanhpo.config import Config, deep_merge, load_config_file, validate_config
from leanhpo.data import load_split, prepare_dataset
from leanhpo.training.loop import epoch_shuffle_seed, make_loader, train_one_epoch
from leanhpo.training.setup import build_network, build_optimisation, encode
from leanhpo.trial.memory import replay_config
from leanhpo.trial.state import pack

REPO = Path(__file__).resolve().parents[1]
SEED = 42
# The study's search space without augmentation: it needs the NLTK corpora, which a fresh GPU
# machine may lack, and it has nothing to show on a GPU.
NO_AUGMENTATION = ("augmentation_prob", "augmentation_methods")
FULL = {
    "data": {"sample_posts": 200, "sample_profile": "long_tailed"},  # long posts: windows
    "train": {"epochs": 2},
    "evaluation": {"bootstrap_samples": 200},
}
SMOKE = {
    # Windows of 64 tokens, at most 4 a post: long posts still take several, and stay cheap.
    "model": {
        "id": "tiny",
        "max_length": 64,
        "window_stride": 16,
        "max_windows": 4,
        "decision_threshold": 0.5,
    },
    "data": {
        "sample_posts": 40,
        "sample_profile": "long_tailed",
        "split": {"train": 0.6, "validation": 0.2, "test": 0.2, "seed": 7},
    },
    "train": {"epochs": 2, "batch_size": 8},
    "evaluation": {"bootstrap_samples": 20},
}
SEARCHED_IN_SMOKE = ("learning_rate", "dropout")
SPEED_POSTS = {"full": 128, "smoke": 8}


@dataclass
class Check:
    device: str
    smoke: bool
    work: Path
    found: dict[str, Any] = field(default_factory=dict)  # what a step leaves for a later one

    def config(self, name: str, **overrides: Any) -> dict[str, Any]:
        """config.yaml with the check's sizes, bf16 autocast and deterministic kernels."""
        base = load_config_file(REPO / "config.yaml")
        if self.smoke:
            sizes = deep_merge(SMOKE, {"search_space": dict.fromkeys(base["search_space"])})
            for key in SEARCHED_IN_SMOKE:
                sizes["search_space"][key] = base["search_space"][key]
            enqueue: list[dict[str, Any]] = []
        else:
            sizes = deep_merge(FULL, {"search_space": dict.fromkeys(NO_AUGMENTATION)})
            enqueue = [
                {k: v for k, v in params.items() if k not in NO_AUGMENTATION}
                for params in base["study"]["enqueue"]
            ]
        run = {
            "study": {
                "name": name,
                "n_trials": 2,
                "enqueue": enqueue,
                "storage": f"sqlite:///{self.work}/optuna.db",
            },
            "tracking": {"uri": f"sqlite:///{self.work}/mlflow.db"},
            "train": {"device": self.device, "amp": "bf16", "deterministic": True},
        }
        merged = deep_merge(deep_merge(deep_merge(base, sizes), run), overrides)
        merged["study"]["enqueue"] = enqueue  # a list: deep_merge would keep config.yaml's
        return validate_config(merged)

    def study_dir(self, name: str) -> Path:
        return self.work / "experiments" / name

    def environment(self) -> dict[str, Any]:
        cuda = torch.cuda.is_available()
        return benchenv.environment(
            {
                "device": self.device,  # the one asked for: cpu on a CUDA machine with --device cpu
                "cuda": torch.version.cuda,
                "bf16_on_gpu": bool(cuda and torch.cuda.is_bf16_supported()),
                "cpu_threads": torch.get_num_threads(),
                "cublas_workspace_config": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
            }
        )


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _digest(tensors: dict[str, torch.Tensor]) -> str:
    hasher = hashlib.sha256()
    for name in sorted(tensors):
        hasher.update(name.encode())
        hasher.update(tensors[name].detach().to("cpu").contiguous().view(torch.uint8).numpy())
    return hasher.hexdigest()


# -- checkpoint: CheckpointStore against torch.save / torch.load from GPU tensors -------------


def checkpoint_step(check: Check) -> dict[str, Any]:
    config = Config.from_dict(check.config("gpu_checkpoint"))
    network = build_network(config, SEED)
    posts = _posts(check, config)[: config.train.batch_size]
    split = encode(network, config, posts)
    optimisation = build_optimisation(network, config, split)
    config = replay_config(network, optimisation, config, split, None)  # auto rows, as a trial
    loader = make_loader(split, config.train.batch_size, network.pad_token_id, SEED)
    train_one_epoch(
        network.model,
        loader,
        optimisation.optimizer,
        optimisation.scheduler,
        config.train,
        network.device,
        optimisation.class_weights,
    )  # AdamW state
    live = {"model": network.model.state_dict(), "optimizer": optimisation.optimizer.state_dict()}
    store = CheckpointStore(check.work / "checkpoint" / "store")
    _sync()
    started = time.perf_counter()
    info = store.save(1, *pack(network, optimisation, {"config": config.to_dict(), "epoch": 1}))
    save_s = time.perf_counter() - started
    started = time.perf_counter()
    loaded = store.load(1, map_location=network.device)  # every file verified against its hash
    _sync()
    load_s = time.perf_counter() - started
    path = check.work / "checkpoint" / "torch.pt"
    started = time.perf_counter()
    with open(path, "wb") as handle:
        torch.save(live, handle)
        handle.flush()
        os.fsync(handle.fileno())
    torch_save_s = time.perf_counter() - started
    started = time.perf_counter()
    back = torch.load(path, map_location=network.device, weights_only=True)
    _sync()
    torch_load_s = time.perf_counter() - started
    model = live["model"]
    ours = all(torch.equal(loaded.groups["model"][k], v) for k, v in model.items())
    theirs = all(torch.equal(back["model"][k], v) for k, v in model.items())
    on_device = {str(t.device.type) for t in loaded.groups["model"].values()}
    return {
        "ok": ours and theirs and on_device == {network.device.type},
        "summary": (
            f"{info.bytes / 2**20:.0f} MiB: save {save_s:.2f} s (torch.save {torch_save_s:.2f} s), "
            f"verified load {load_s:.2f} s (torch.load {torch_load_s:.2f} s); weights "
            f"{'identical' if ours else 'DIFFER'}"
        ),
        "bytes": info.bytes,
        "torch_bytes": path.stat().st_size,
        "save_s": round(save_s, 3),
        "load_s": round(load_s, 3),
        "torch_save_s": round(torch_save_s, 3),
        "torch_load_s": round(torch_load_s, 3),
        "loaded_on": sorted(on_device),
        "identical_after_load": ours,
        "identical_after_torch_load": theirs,
    }


def _posts(check: Check, config: Config) -> list[dict[str, Any]]:
    """Training posts of the check's sample data (long-tailed: posts that take windows)."""
    folder = check.work / "speed_data"
    if not (folder / "data_report.json").exists():
        data = deep_merge(
            config.to_dict()["data"], {"sample_profile": "long_tailed", "sample_posts": 200}
        )
        prepare_dataset(data, folder)
    return load_split(folder, "train")


# -- throughput: deterministic kernels on and off ------------------------------------------


def throughput_step(check: Check) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {}
    for deterministic in (True, False):
        config = Config.from_dict(check.config("gpu_speed", train={"deterministic": deterministic}))
        posts = _posts(check, config)[: SPEED_POSTS["smoke" if check.smoke else "full"]]
        first = _timed_epoch(config, posts, None)
        # the repeat trains at the rows the first resolved: the same passes, the same sums
        runs["on" if deterministic else "off"] = [first, _timed_epoch(config, posts, first["rows"])]
    figures = {
        mode: {
            "posts_per_s": round(max(r["posts"] / r["seconds"] for r in pair), 2),
            "tokens_per_s": round(max(r["tokens"] / r["seconds"] for r in pair), 1),
            "seconds": [round(r["seconds"], 3) for r in pair],
            "identical_repeats": pair[0]["weights"] == pair[1]["weights"],
        }
        for mode, pair in runs.items()
    }
    cost = figures["off"]["tokens_per_s"] / figures["on"]["tokens_per_s"]
    first = runs["on"][0]
    return {
        "ok": figures["on"]["identical_repeats"],
        "summary": (
            f"deterministic {figures['on']['posts_per_s']} posts/s, {figures['on']['tokens_per_s']:.0f} "
            f"tokens/s; off {figures['off']['posts_per_s']} posts/s ({cost:.2f}x); deterministic "
            f"repeats {'identical' if figures['on']['identical_repeats'] else 'DIFFER'}, fast "
            f"repeats {'identical' if figures['off']['identical_repeats'] else 'differ'}"
        ),
        "posts": first["posts"],
        "windows": first["windows"],
        "tokens": first["tokens"],
        "deterministic": figures["on"],
        "fast": figures["off"],
        "fast_over_deterministic": round(cost, 3),
    }


def _timed_epoch(config: Config, posts: list[dict[str, Any]], rows: int | None) -> dict[str, Any]:
    """One untimed epoch (kernels warm up), then one timed; the weights' digest after it.
    `train.max_batch_rows: auto` is resolved as a trial resolves it, unless `rows` (those a
    first run resolved) is given."""
    network = build_network(config, SEED)
    split = encode(network, config, posts)
    optimisation = build_optimisation(network, config, split)
    config = replay_config(network, optimisation, config, split, rows)
    seconds = 0.0
    for epoch in (1, 2):
        loader = make_loader(
            split, config.train.batch_size, network.pad_token_id, epoch_shuffle_seed(SEED, epoch)
        )
        _sync()
        started = time.perf_counter()
        train_one_epoch(
            network.model,
            loader,
            optimisation.optimizer,
            optimisation.scheduler,
            config.train,
            network.device,
            optimisation.class_weights,
            progress="speed",
        )
        _sync()
        seconds = time.perf_counter() - started
    return {
        "posts": len(posts),
        "windows": len(split.examples),
        "tokens": sum(len(e.input_ids) for e in split.examples),
        "seconds": seconds,
        "rows": config.train.max_batch_rows,
        "weights": _digest(network.model.state_dict()),
    }
