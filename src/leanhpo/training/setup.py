"""Build the pieces of a training run from a resolved config: seeds, model, data, optimiser.

Shared by trials and by the final test evaluation, so that both build the same network from
the same config. Posts come in as lists (already read by the caller); nothing here reads files.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from leanhpo.config import Config
from leanhpo.models import EncoderInfo, HeadSettings, MultiTaskModel, load_encoder
from leanhpo.models.losses import CLASS_WEIGHTED_LOSSES, positive_class_weights
from leanhpo.training.compute import KernelSettings, apply_kernel_settings, kernel_settings
from leanhpo.training.features import EncodedSplit, Windowing, encode_posts, train_prevalence
from leanhpo.training.loop import make_loader, make_optimizer, make_scheduler, pick_device


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and every CUDA device). The kernels that make a seeded
    run repeatable are `prepare_device`'s."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def prepare_device(config: Config, requested: str | None = None) -> KernelSettings:
    """Pick the device (`requested`, else train.device) and apply train.deterministic's kernel
    settings there, before anything touches CUDA (training.compute). Returns the settings; the
    device is `torch.device(settings.device_type)`."""
    device = pick_device(requested or config.train.device)
    settings = kernel_settings(config.train.deterministic, device.type)
    apply_kernel_settings(settings)
    return settings


def head_settings(config: Config) -> HeadSettings:
    model = config.model
    return HeadSettings(
        input_format=model.input_format,
        pooling=model.pooling,
        criteria_head=model.criteria_head,
        evidence_head=model.evidence_head,
        dropout=model.dropout,
        head_hidden_size=model.head_hidden_size,
        dropout_samples=model.dropout_samples,
        coupling=model.coupling,
        coupling_pooling=model.coupling_pooling,
        coupling_method=model.coupling_method,
        window_pooling=model.window_pooling,
    )


@dataclass
class Network:
    model: MultiTaskModel
    tokenizer: Any
    encoder_info: EncoderInfo
    device: torch.device

    @property
    def pad_token_id(self) -> int:
        return int(self.tokenizer.pad_token_id or 0)


def build_network(config: Config, seed: int) -> Network:
    """Encoder plus heads, initialised under `seed`, moved to the configured device."""
    kernels = prepare_device(config)
    seed_everything(seed)
    encoder, tokenizer, info = load_encoder(
        config.model.id, config.model.revision, seed=seed, attention=kernels.attn_implementation
    )
    if config.model.max_length > info.max_positions:
        raise ValueError(
            f"model.max_length={config.model.max_length} exceeds the {info.max_positions} positions "
            f"of encoder {config.model.id!r}; lower model.max_length"
        )
    device = torch.device(kernels.device_type)
    model = MultiTaskModel(encoder, head_settings(config)).to(device)
    return Network(model=model, tokenizer=tokenizer, encoder_info=info, device=device)


def windowing(config: Config) -> Windowing:
    model = config.model
    return Windowing(model.max_length, model.long_posts, model.window_stride, model.max_windows)


def encode(network: Network, config: Config, posts: list[dict[str, Any]]) -> EncodedSplit:
    return encode_posts(posts, network.tokenizer, config.model.input_format, windowing(config))


def class_weights(
    config: Config, train_posts: list[dict[str, Any]], device: torch.device
) -> torch.Tensor | None:
    """The pos_weight per symptom of weighted_bce and the focal family: from config, else from
    training prevalence; None for plain bce."""
    if config.train.loss not in CLASS_WEIGHTED_LOSSES:
        return None
    if config.train.class_weights is not None:
        return torch.tensor(config.train.class_weights, dtype=torch.float, device=device)
    prevalence = torch.tensor(train_prevalence(train_posts), dtype=torch.float)
    return positive_class_weights(prevalence).to(device)


@dataclass
class Optimisation:
    optimizer: torch.optim.AdamW
    scheduler: torch.optim.lr_scheduler.LambdaLR
    steps_per_epoch: int
    class_weights: torch.Tensor | None


def build_optimisation(network: Network, config: Config, train_split: EncodedSplit) -> Optimisation:
    steps_per_epoch = len(
        make_loader(train_split, config.train.batch_size, network.pad_token_id, 0)
    )
    optimizer = make_optimizer(network.model, config.train)
    scheduler = make_scheduler(
        optimizer, steps_per_epoch * config.train.epochs, config.train.warmup_ratio
    )
    weights = class_weights(config, train_split.posts, network.device)
    return Optimisation(optimizer, scheduler, steps_per_epoch, weights)
