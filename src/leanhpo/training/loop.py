"""One epoch of training: devices, batching, optimizer, scheduler and the loss step. No file I/O,
no tracking, no Optuna. The evaluation pass is in training/evaluation.py."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch.utils.data import DataLoader, Sampler
from tqdm import tqdm
from transformers import get_linear_schedule_with_warmup

from leanhpo.config import TrainConfig
from leanhpo.exit_codes import EXIT_BAD_INPUT
from leanhpo.models import MultiTaskModel, criteria_loss
from leanhpo.training.compute import compute_precision
from leanhpo.training.features import EncodedSplit, collate
from leanhpo.training.microbatch import split_batch

NO_DECAY = ("bias", "LayerNorm.weight", "layer_norm.weight", "norm.weight")
DATA_ORDER_STRIDE = 1_000_003  # keeps per-epoch shuffle seeds of nearby study seeds apart
GROUP_BATCHES = 8  # batches per length-sorted window


class NonFiniteLossError(RuntimeError):
    """Training diverged (NaN or inf loss): the trial's own fault, so Optuna is told FAIL."""


@dataclass
class EpochResult:
    metrics: dict[str, float]
    steps: int


class DeviceUnavailableError(RuntimeError):
    """The config asks for a GPU this machine does not have: a stop with what to do, not a
    crash (nothing ran, nothing on disk changed)."""

    exit_code = EXIT_BAD_INPUT


def pick_device(requested: str) -> torch.device:
    if requested == "cuda" and not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        raise DeviceUnavailableError(
            f"train.device is 'cuda' but no CUDA device is visible here (torch "
            f"{torch.__version__}, {build}). Run the trials on a GPU machine (on SLURM: "
            "resources.gpu: 1, see docs/scale.md) with a CUDA build of torch, or set "
            "train.device: auto (a GPU when there is one, else the CPU) or cpu"
        )
    if requested in ("cuda", "auto") and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def autocast(device: torch.device, amp: bool | str) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast where train.amp asks for it on this device (training.compute)."""
    if compute_precision(amp, device.type) == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


class LengthGroupedBatches(Sampler[list[int]]):
    """Random batches of similar length, as in HF Trainer's `group_by_length`.

    Shuffle, cut into windows of GROUP_BATCHES batches, sort each window by length, cut it into
    batches, shuffle the batches. Padding (and so compute on CPU) drops by about a quarter on
    Reddit-length posts, while every epoch still sees a different, seeded order.
    """

    def __init__(self, lengths: list[int], batch_size: int, generator: torch.Generator) -> None:
        self.lengths, self.batch_size, self.generator = lengths, batch_size, generator

    def __len__(self) -> int:
        return math.ceil(len(self.lengths) / self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        order = torch.randperm(len(self.lengths), generator=self.generator).tolist()
        window = self.batch_size * GROUP_BATCHES
        batches: list[list[int]] = []
        for start in range(0, len(order), window):
            group = sorted(order[start : start + window], key=lambda i: -self.lengths[i])
            batches += [
                group[i : i + self.batch_size] for i in range(0, len(group), self.batch_size)
            ]
        for index in torch.randperm(len(batches), generator=self.generator).tolist():
            yield batches[index]


class UnitBatches(Sampler[list[int]]):
    """Batches of `batch_size` units (posts or pairs) with all their windows, as example
    indices: a unit's windows are never split across batches, so its criteria are pooled from
    all of them. Units in training order (length-grouped by total tokens) or as given."""

    def __init__(self, units: list[list[int]], unit_batches: Sampler[list[int]] | None, size: int):
        self.units, self.unit_batches, self.size = units, unit_batches, size

    def __len__(self) -> int:
        return math.ceil(len(self.units) / self.size)

    def __iter__(self) -> Iterator[list[int]]:
        if self.unit_batches is None:
            order: Iterator[list[int]] = (
                list(range(i, min(i + self.size, len(self.units))))
                for i in range(0, len(self.units), self.size)
            )
        else:
            order = iter(self.unit_batches)
        for batch in order:
            yield [index for unit in batch for index in self.units[unit]]


def make_loader(
    split: EncodedSplit,
    batch_size: int,
    pad_token_id: int,
    shuffle_seed: int | None,
    collate_fn: Callable[[list[Any]], Any] | None = None,
) -> DataLoader[Any]:
    """Training order (seeded, length-grouped) or evaluation order (as given); `batch_size`
    counts units (posts or pairs), each with all its windows. `collate_fn` replaces the
    collation into tensors (the memory preflight only counts rows).

    The loader owns its generator, so its order never depends on the global RNG.
    """
    generator = torch.Generator().manual_seed(shuffle_seed if shuffle_seed is not None else 0)
    collate_fn = collate_fn or partial(collate, pad_token_id=pad_token_id)
    units = split.units()
    grouped = None
    if shuffle_seed is not None:
        lengths = [sum(len(split.examples[i].input_ids) for i in unit) for unit in units]
        grouped = LengthGroupedBatches(lengths, batch_size, generator)
    return DataLoader(
        split.examples,  # type: ignore[arg-type]
        batch_sampler=UnitBatches(units, grouped, batch_size),
        generator=generator,
        collate_fn=collate_fn,
    )


def rows_cap(train: TrainConfig) -> int | None:
    """`train.max_batch_rows` as the loop uses it: a number or None. `auto` is resolved per
    trial from the memory it has (leanhpo.trial.memory) before training starts."""
    if isinstance(train.max_batch_rows, str):
        raise ValueError(
            f"train.max_batch_rows is {train.max_batch_rows!r}: resolve it to a number of rows "
            "first (leanhpo.trial.memory.resolve_rows), or set a number or null"
        )
    return train.max_batch_rows


def epoch_shuffle_seed(seed: int, epoch: int) -> int:
    """The data order of an epoch depends only on (seed, epoch), so a resumed run sees the same."""
    return seed * DATA_ORDER_STRIDE + epoch


def make_optimizer(model: MultiTaskModel, train: TrainConfig) -> torch.optim.AdamW:
    groups: list[dict[str, Any]] = []
    for params, lr in (
        (model.encoder.named_parameters(prefix="encoder"), train.learning_rate),
        (_head_named_parameters(model), train.head_learning_rate),
    ):
        decay: list[torch.nn.Parameter] = []
        no_decay: list[torch.nn.Parameter] = []
        for name, param in params:
            (no_decay if name.endswith(NO_DECAY) else decay).append(param)
        groups.append({"params": decay, "lr": lr, "weight_decay": train.weight_decay})
        groups.append({"params": no_decay, "lr": lr, "weight_decay": 0.0})
    return torch.optim.AdamW([g for g in groups if g["params"]])


def _head_named_parameters(model: MultiTaskModel) -> Iterator[tuple[str, torch.nn.Parameter]]:
    return ((n, p) for n, p in model.named_parameters() if not n.startswith("encoder."))


def make_scheduler(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_ratio: float
) -> torch.optim.lr_scheduler.LambdaLR:
    warmup = math.ceil(total_steps * warmup_ratio)
    scheduler: torch.optim.lr_scheduler.LambdaLR = get_linear_schedule_with_warmup(
        optimizer, warmup, total_steps
    )
    return scheduler


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def batch_losses(
    model: MultiTaskModel,
    batch: dict[str, torch.Tensor],
    train: TrainConfig,
    class_weights: torch.Tensor | None,
    progress: float = 1.0,
) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor]:
    """Outputs, total, criteria and evidence loss; `progress` (0-1) drives adaptive_focal."""
    outputs = model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        span_mask=batch["span_mask"],
        token_type_ids=batch.get("token_type_ids"),
        sentence_spans=batch.get("sentence_spans"),
        window_owner=batch.get("window_owner"),
    )
    pos_weight = class_weights[batch["symptoms"]] if class_weights is not None else None
    crit = criteria_loss(
        outputs["criteria_logits"],
        batch["labels"],
        train.loss,
        pos_weight,
        gamma=train.focal_gamma,
        alpha=train.hybrid_alpha,
        label_smoothing=train.label_smoothing,
        progress=progress,
    )
    evid = model.evidence_loss(outputs, batch)
    total = train.lambda_criteria * crit + train.lambda_evidence * evid
    return outputs, total, crit, evid


def training_progress(
    scheduler: torch.optim.lr_scheduler.LRScheduler, steps_per_epoch: int, epochs: int
) -> float:
    """Share of the run's optimiser steps done; the scheduler's step count survives a resume."""
    return min(1.0, scheduler.last_epoch / max(1, steps_per_epoch * epochs))


def train_one_epoch(
    model: MultiTaskModel,
    loader: DataLoader[Any],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    train: TrainConfig,
    device: torch.device,
    class_weights: torch.Tensor | None = None,
    progress: str = "train",
    on_step: Callable[[int], None] | None = None,
) -> EpochResult:
    """One optimiser step per batch; a batch of more than `train.max_batch_rows` rows runs as
    micro-batches whose gradients add up to its own (`training.microbatch`)."""
    max_rows = rows_cap(train)
    model.train()
    sums = {"train_loss": 0.0, "train_criteria_loss": 0.0, "train_evidence_loss": 0.0}
    steps = 0
    for batch in tqdm(loader, desc=progress, leave=False, mininterval=5.0):
        done = training_progress(scheduler, len(loader), train.epochs)
        optimizer.zero_grad(set_to_none=True)
        for part in split_batch(batch, max_rows, model.evidence_loss_denominator):
            with autocast(device, train.amp):
                _, total, crit, evid = batch_losses(
                    model, to_device(part.batch, device), train, class_weights, done
                )
            if part.shares is not None:  # a micro-batch: its share of the batch's means
                crit, evid = crit * part.shares[0], evid * part.shares[1]
                total = train.lambda_criteria * crit + train.lambda_evidence * evid
            if not torch.isfinite(total):
                raise NonFiniteLossError(
                    f"non-finite training loss ({total.item()}) at step {steps + 1}"
                )
            total.backward()
            for key, value in zip(sums, (total, crit, evid), strict=True):
                sums[key] += float(value.detach())
        torch.nn.utils.clip_grad_norm_(model.parameters(), train.max_grad_norm)
        optimizer.step()
        scheduler.step()
        steps += 1
        if on_step:
            on_step(steps)
    return EpochResult({k: v / max(steps, 1) for k, v in sums.items()}, steps)
