"""What one more row costs a training pass, measured once per model, width, device and heads.

The probe runs forward/backward passes on copies of the split's widest window: one row to warm
up (the gradients are allocated then), one row again, two rows, and up to MAX_PROBE_ROWS rows
where the headroom allows, and takes the larger slope of the peaks: (peak(n) - peak(1)) / (n - 1).
Peaks are absolute, so memory the allocator kept from an earlier pass does not hide the cost; the
overhead is the peak of one row, less a row, above the memory in use before the first pass. On
the CPU the peak is the process's VmHWM, reset by writing 5 to /proc/self/clear_refs; on CUDA,
torch's max_memory_allocated. Where neither can be reset, an estimate from the encoder's shape
stands in (ESTIMATE_SLACK).

The model is left as it was: no optimiser step, the gradients dropped again, and the RNG state
(dropout draws) restored, so training afterwards is bitwise what it would have been.

The figures are cached in the study folder (`row_costs.json`), keyed by everything that changes
them: a study's trials share the model and max_length, so only a new head combination or device
measures again (a few seconds for MiniLM on 2 cores). The study folder rather than a user cache:
tests and containers stay hermetic, nothing is written outside experiments/, and the figures go
where the study goes.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from leanhpo.config import Config
from leanhpo.fsutil import atomic_write_json, read_json
from leanhpo.memory.budget import RowCost
from leanhpo.memory.limits import MemoryReading, peak_rss, process_rss, reset_peak_rss
from leanhpo.training.compute import compute_precision
from leanhpo.training.features import EncodedSplit, collate
from leanhpo.training.loop import autocast, batch_losses
from leanhpo.training.setup import Network, Optimisation

COST_FILE = "row_costs.json"
MAX_PROBE_ROWS = 8
PROBE_SHARE = 0.25  # of the headroom the largest probe pass may take
# Activation bytes per layer and sequence of a BERT-style block in fp32: 2 * (34 s h + 5 a s^2)
# (Korthikanti et al. 2022 count 16-bit bytes); times this for what the count leaves out
# (embeddings, heads, allocator slack): MiniLM measures 1.4x the count at 256 tokens.
ESTIMATE_SLACK = 1.4


def cost_key(network: Network, config: Config, width: int) -> str:
    device = network.device
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return json.dumps(
        {
            "model": vars(network.encoder_info),
            "width": width,
            "device": name,
            "precision": compute_precision(config.train.amp, device.type),
            # On CUDA, train.deterministic picks eager attention, whose memory grows with s^2.
            "deterministic": config.train.deterministic and device.type == "cuda",
            "torch": torch.__version__,
            # The dropout rate changes no tensor's size; every other head choice may.
            "heads": {k: v for k, v in asdict(network.model.settings).items() if k != "dropout"},
        },
        sort_keys=True,
    )


def row_cost(
    study_dir: Path | None,
    network: Network,
    optimisation: Optimisation,
    config: Config,
    split: EncodedSplit,
    reading: MemoryReading,
) -> RowCost:
    """The cached figure for this model, width, device and heads, or a fresh measurement."""
    widest = max(split.examples, key=lambda example: len(example.input_ids))
    width = len(widest.input_ids)
    key = cost_key(network, config, width)
    path = study_dir / COST_FILE if study_dir is not None else None
    cached = _read(path).get(key) if path is not None else None
    if cached is not None:
        return RowCost(int(cached["per_row"]), width, cached["method"], int(cached["overhead"]))
    cost = measure(network, optimisation, config, split, widest, reading)
    if path is not None:
        costs = _read(path)  # again: another trial may have added its own meanwhile
        costs[key] = {
            "per_row": cost.per_row,
            "overhead": cost.overhead,
            "method": cost.method,
            "measured_at": time.time(),
        }
        atomic_write_json(path, costs)
    return cost


def _read(path: Path | None) -> dict[str, Any]:
    try:
        return dict(read_json(path)) if path is not None and path.exists() else {}
    except (OSError, ValueError):
        return {}


def measure(
    network: Network,
    optimisation: Optimisation,
    config: Config,
    split: EncodedSplit,
    example: Any,
    reading: MemoryReading,
) -> RowCost:
    model, device = network.model, network.device
    width = len(example.input_ids)
    cuda = device.type == "cuda"
    if not cuda and not reset_peak_rss():
        return estimate(model, width)

    def peak(rows: int) -> int:
        batch = collate([example] * rows, network.pad_token_id)
        batch = {k: v.to(device) for k, v in batch.items()}
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        else:
            reset_peak_rss()
        with autocast(device, config.train.amp):
            _, total, _, _ = batch_losses(model, batch, config.train, optimisation.class_weights)
        total.backward()
        found = torch.cuda.max_memory_allocated(device) if cuda else peak_rss()
        model.zero_grad(set_to_none=True)
        return int(found)

    devices = [device] if cuda else []
    was_training = model.training
    with torch.random.fork_rng(devices=devices):
        model.train()
        before = torch.cuda.memory_allocated(device) if cuda else process_rss()
        peak(1)  # allocates the gradients and whatever else a first pass needs once
        one = peak(1)
        per_row = max(1, peak(2) - one)
        # The slope over two rows runs low (allocator granularity): more rows where the
        # headroom allows them, by that first slope.
        rows = int(min(MAX_PROBE_ROWS, reading.headroom * PROBE_SHARE // per_row))
        if rows > 2:
            per_row = max(per_row, (peak(rows) - one) // (rows - 1))
    model.train(was_training)
    method = "measured: CUDA peak" if cuda else "measured: peak RSS"
    return RowCost(per_row, width, method, max(0, one - per_row - before))


def estimate(model: torch.nn.Module, width: int) -> RowCost:
    """The activation count of a BERT-style encoder, where no peak can be measured."""
    config = getattr(getattr(model, "encoder", model), "config", None)
    layers = int(getattr(config, "num_hidden_layers", 12))
    hidden = int(getattr(config, "hidden_size", 768))
    heads = int(getattr(config, "num_attention_heads", 12))
    per_layer = 2 * (34 * width * hidden + 5 * heads * width * width)
    gradients = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    return RowCost(int(ESTIMATE_SLACK * layers * per_layer), width, "estimated", gradients)
