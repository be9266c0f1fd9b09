"""One epoch of training and one evaluation pass. No file I/O, no tracking, no Optuna."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler
from tqdm import tqdm
from transformers import get_linear_schedule_with_warmup

from leanhpo.config import ModelConfig, TrainConfig
from leanhpo.exit_codes import EXIT_BAD_INPUT
from leanhpo.metric_names import DECISION_THRESHOLD_KEYS, SYMPTOMS
from leanhpo.models import MultiTaskModel, criteria_loss
from leanhpo.training.calibrate import calibrate_null_threshold, tune_decision_thresholds
from leanhpo.training.decode import char_span
from leanhpo.training.features import EncodedSplit, collate
from leanhpo.training.metrics import (
    DEFAULT_THRESHOLD,
    EvidenceExample,
    criteria_metrics,
    evidence_metrics,
    threshold_vector,
)
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


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager[Any]:
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
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
    split: EncodedSplit, batch_size: int, pad_token_id: int, shuffle_seed: int | None
) -> DataLoader[Any]:
    """Training order (seeded, length-grouped) or evaluation order (as given); `batch_size`
    counts units (posts or pairs), each with all its windows.

    The loader owns its generator, so its order never depends on the global RNG.
    """
    generator = torch.Generator().manual_seed(shuffle_seed if shuffle_seed is not None else 0)
    collate_fn = partial(collate, pad_token_id=pad_token_id)
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


def _to(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def _losses(
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
    model.train()
    sums = {"train_loss": 0.0, "train_criteria_loss": 0.0, "train_evidence_loss": 0.0}
    steps = 0
    for batch in tqdm(loader, desc=progress, leave=False, mininterval=5.0):
        done = training_progress(scheduler, len(loader), train.epochs)
        optimizer.zero_grad(set_to_none=True)
        for part in split_batch(batch, train.max_batch_rows, model.evidence_loss_denominator):
            with autocast(device, train.amp):
                _, total, crit, evid = _losses(
                    model, _to(part.batch, device), train, class_weights, done
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


@dataclass
class Evaluation:
    losses: dict[str, float]
    probabilities: np.ndarray  # [n_posts, 9]
    labels: np.ndarray  # [n_posts, 9]
    candidates: list[EvidenceExample]  # every pair with its BEST span (no null threshold)
    margins: list[float]  # per pair: null score - best span score (inf: no span possible)
    pair_posts: np.ndarray | None = None  # per pair: its post's row in probabilities/labels

    def evidence(self, null_threshold: float) -> list[EvidenceExample]:
        """The pairs as decoded under `null_threshold` (null where the margin exceeds it)."""
        return [
            replace(pair, pred_span=None) if margin > null_threshold else pair
            for pair, margin in zip(self.candidates, self.margins, strict=True)
        ]

    def calibrated_null_threshold(self) -> float:
        return calibrate_null_threshold(self.candidates, self.margins)

    def tuned_decision_thresholds(self) -> np.ndarray:
        return tune_decision_thresholds(self.labels, self.probabilities)

    def metrics(
        self,
        prefix: str,
        null_threshold: float,
        decision_thresholds: float | np.ndarray = DEFAULT_THRESHOLD,
    ) -> dict[str, float | None]:
        """Flat metrics with `prefix` (e.g. 'val_'); None where a value is undefined.

        Evidence is decoded under `null_threshold`, which is reported as
        `<prefix>evidence_null_threshold`; symptoms are decided at `decision_thresholds` (one
        for all, or one per symptom), reported as `<prefix>criteria_threshold_<S>`.
        """
        decision = threshold_vector(decision_thresholds)
        flat: dict[str, float | None] = {f"{prefix}{k}": v for k, v in self.losses.items()}
        for key, value in criteria_metrics(self.labels, self.probabilities, decision).items():
            flat[f"{prefix}criteria_{key}"] = value
        for key, value in zip(DECISION_THRESHOLD_KEYS, decision, strict=True):
            flat[f"{prefix}{key}"] = float(value)
        for key, value in evidence_metrics(self.evidence(null_threshold)).items():
            flat[f"{prefix}evidence_{key}"] = value
        flat[f"{prefix}evidence_null_threshold"] = null_threshold
        return flat


def resolve_null_threshold(model_cfg: ModelConfig, validation: Evaluation) -> float:
    """`model.null_threshold`, or with `auto` the one calibrated on this validation pass."""
    if model_cfg.null_threshold == "auto":
        return validation.calibrated_null_threshold()
    return float(model_cfg.null_threshold)


def resolve_decision_thresholds(model_cfg: ModelConfig, validation: Evaluation) -> np.ndarray:
    """Per symptom: `model.decision_threshold`, or with `auto` the cut that maximises the
    symptom's F1 on this validation pass."""
    if model_cfg.decision_threshold == "auto":
        return validation.tuned_decision_thresholds()
    return threshold_vector(float(model_cfg.decision_threshold))


@torch.no_grad()
def evaluate(
    model: MultiTaskModel,
    split: EncodedSplit,
    model_cfg: ModelConfig,
    train: TrainConfig,
    device: torch.device,
    pad_token_id: int,
    class_weights: torch.Tensor | None = None,
    progress: str = "eval",
) -> Evaluation:
    """One pass: criteria probabilities, losses and each pair's best span with its null margin
    (the null threshold is applied afterwards, so it can be calibrated without a second pass)."""
    model.eval()
    n_posts = len(split.posts)
    probabilities = np.zeros((n_posts, len(SYMPTOMS)), dtype=np.float64)
    predicted: dict[tuple[int, int], tuple[tuple[int, int] | None, float]] = {}
    sums = {"loss": 0.0, "criteria_loss": 0.0, "evidence_loss": 0.0}
    batches = 0
    loader = make_loader(split, train.eval_batch_size, pad_token_id, shuffle_seed=None)
    cursor = 0
    for batch in tqdm(loader, desc=progress, leave=False, mininterval=5.0):
        rows = split.examples[cursor : cursor + len(batch["input_ids"])]  # windows
        cursor += len(rows)
        owners = batch["window_owner"].tolist()
        batch = _to(batch, device)
        with autocast(device, train.amp):
            outputs, total, crit, evid = _losses(model, batch, train, class_weights)
        batches += 1
        for key, value in zip(sums, (total, crit, evid), strict=True):
            sums[key] += float(value)
        probs = torch.sigmoid(outputs["criteria_logits"]).cpu().numpy()  # per unit
        candidates = model.evidence_candidates(outputs, batch, model_cfg.max_answer_tokens)
        for row, example in enumerate(rows):
            for out, symptom in enumerate(example.symptom_indices):
                pair = (example.post_index, symptom)
                probabilities[pair] = probs[owners[row], out]
                span, margin = candidates[row][out]
                # A unit's evidence is its most confident window's: the smallest null margin
                # (a span seen by two overlapping windows is one prediction).
                if pair not in predicted or margin < predicted[pair][1]:
                    predicted[pair] = (char_span(example.offsets, span), margin)
    labels = np.array([p["labels"] for p in split.posts], dtype=np.int64).reshape(n_posts, -1)
    pairs, margins = evidence_pairs(split, predicted)
    losses = {k: v / max(batches, 1) for k, v in sums.items()}
    pair_posts = np.repeat(np.arange(n_posts), len(SYMPTOMS))  # evidence_pairs: post by post
    return Evaluation(losses, probabilities, labels, pairs, margins, pair_posts)


def evidence_pairs(
    split: EncodedSplit, predicted: dict[tuple[int, int], tuple[tuple[int, int] | None, float]]
) -> tuple[list[EvidenceExample], list[float]]:
    """Every (post, symptom) pair of the split with its predicted span and null margin (a pair
    missing from `predicted` is null); pairs whose evidence lies outside the window are
    marked excluded."""
    reached = {
        (ex.post_index, symptom)
        for ex in split.examples
        for out, symptom in enumerate(ex.symptom_indices)
        if ex.start_positions[out] >= 0
    }  # a positive pair some window can learn (its gold span, or null beside it elsewhere)
    excluded = {
        (ex.post_index, symptom)
        for ex in split.examples
        for out, symptom in enumerate(ex.symptom_indices)
        if ex.labels[out] and (ex.post_index, symptom) not in reached
    }
    examples, margins = [], []
    for post_index, post in enumerate(split.posts):
        for symptom in range(len(SYMPTOMS)):
            gold = (
                tuple(tuple(span) for span in post["evidence"][symptom])
                if post["labels"][symptom]
                else ()
            )
            span, margin = predicted.get((post_index, symptom), (None, float("inf")))
            examples.append(
                EvidenceExample(
                    text=post["text"],
                    gold_spans=gold,
                    pred_span=span,
                    excluded=(post_index, symptom) in excluded,
                )
            )
            margins.append(margin)
    return examples, margins
