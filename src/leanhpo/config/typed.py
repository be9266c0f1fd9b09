"""Typed, frozen views of a validated config, built once and passed down.

The dict form (`Config.to_dict()`) is what is logged to MLflow and stored in every checkpoint;
the dataclasses are what code reads, so a typo in a key is a mypy error, not a silent default.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from leanhpo.config.introduced import with_earlier_values
from leanhpo.config.validate import parse_size, validate_config
from leanhpo.logs import mask_value


@dataclass(frozen=True)
class StudyConfig:
    name: str
    n_trials: int
    seed: int
    storage: str
    metric: str
    parallel: bool
    storage_timeout_s: float
    lease_grace_s: float
    sampler: str
    n_startup_trials: int | None
    enqueue: list[dict[str, Any]]
    pruner: str = "none"
    pruner_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    confirm: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclass(frozen=True)
class TrackingConfig:
    uri: str
    experiment: str
    write_timeout_s: float
    register_model: str | None = None
    final_drain_s: float = 60.0


@dataclass(frozen=True)
class DataConfig:
    source: str
    path: str | None
    id: str
    revision: str
    sample_posts: int
    sample_profile: str
    # train/validation/test ratios and seed, group_by, min_positives, near_duplicate_jaccard
    split: dict[str, Any]


@dataclass(frozen=True)
class ModelConfig:
    id: str
    revision: str
    max_length: int
    long_posts: str
    window_stride: int
    max_windows: int
    window_pooling: str
    input_format: str
    pooling: str
    criteria_head: str
    evidence_head: str
    head_hidden_size: int
    dropout_samples: int
    coupling: str
    coupling_pooling: str
    coupling_method: str
    dropout: float
    max_answer_tokens: int | str  # a number of tokens, or 'auto' until a trial resolves it
    null_threshold: float | str  # a number, or 'auto' (calibrated on validation)
    decision_threshold: float | str  # a probability in (0, 1), or 'auto' (per symptom, validation)
    evidence_for: str  # present (evidence only for symptoms decided present) | all


@dataclass(frozen=True)
class TrainConfig:
    epochs: int
    batch_size: int
    eval_batch_size: int
    # rows per forward/backward (micro-batches): a number, 'auto' (from the memory the job has,
    # resolved per trial by leanhpo.trial.memory) or None (no cap)
    max_batch_rows: int | str | None
    learning_rate: float
    head_learning_rate: float
    weight_decay: float
    warmup_ratio: float
    max_grad_norm: float
    loss: str
    focal_gamma: float
    hybrid_alpha: float
    label_smoothing: float
    augmentation_prob: float
    augmentation_methods: list[str] | str
    class_weights: list[float] | None
    lambda_criteria: float
    lambda_evidence: float
    device: str
    amp: bool | str  # true (bf16 on CUDA only), false or "bf16" (every device): training.compute
    checkpointing: bool
    deterministic: bool = True


@dataclass(frozen=True)
class RetentionConfig:
    keep_last_n: int
    keep_best_k: int
    keep_best_k_max: int
    max_total_size: str
    min_free_disk_percent: float
    keep_best_trials: int
    weights_only: bool = True

    @property
    def max_total_bytes(self) -> int:
        return parse_size(self.max_total_size)


@dataclass(frozen=True)
class EvaluationConfig:
    """The `evaluation` section. Not a field of `Config`: a Config is what every trial stores
    and logs, and nothing here changes a trial; only the study evaluation reads it."""

    bootstrap_samples: int
    ci_level: float
    per_trial_test: bool = False

    @classmethod
    def from_dict(cls, raw: dict[str, Any] | None) -> EvaluationConfig:
        """From a whole config (validated here, so a missing section gets its defaults)."""
        return cls(**validate_config(raw)["evaluation"])


@dataclass(frozen=True)
class Config:
    study: StudyConfig
    tracking: TrackingConfig
    data: DataConfig
    model: ModelConfig
    train: TrainConfig
    retention: RetentionConfig
    search_space: dict[str, Any]

    @classmethod
    def from_dict(cls, raw: dict[str, Any] | None) -> Config:
        """Validate `raw` (filling defaults) and build the typed view."""
        data = validate_config(raw)
        return cls(
            study=StudyConfig(**data["study"]),
            tracking=TrackingConfig(**data["tracking"]),
            data=DataConfig(**data["data"]),
            model=ModelConfig(**data["model"]),
            train=TrainConfig(**data["train"]),
            retention=RetentionConfig(**data["retention"]),
            search_space=data["search_space"],
        )

    @classmethod
    def from_stored(cls, raw: dict[str, Any]) -> Config:
        """A config stored by a trial, a checkpoint or an export, possibly by an older leanhpo:
        a key added since takes the value that did what that leanhpo did
        (config/introduced.py), not today's default, so a model is used as it was selected."""
        return cls.from_dict(with_earlier_values(raw))

    def to_dict(self) -> dict[str, Any]:
        """The dict form, secrets masked (a password in study.storage or tracking.uri, tokens):
        it is what is logged and stored (state.json, reports, checkpoints), and nothing that
        reads it back needs a secret: jobs get the URLs from their Snakemake params, passwords
        as ${...} references filled in only to connect (leanhpo.urls)."""
        masked: dict[str, Any] = mask_value(dataclasses.asdict(self))
        return masked
