"""The multi-task model: one shared encoder, a criteria head and an evidence head.

Both input formats share one shape convention, which keeps losses and decoding format-free:
every example has `n_outputs` outputs (9 in multi_label, 1 in binary_pairs), so criteria logits
are [B, n_outputs] and span logits are [B, n_outputs, T]. Token 0 (CLS) is the null span.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from leanhpo.metric_names import SYMPTOMS

# Large but finite, so that masked logits stay finite under bf16 autocast as well.
MASK_VALUE = -1.0e4
NULL_INDEX = 0


@dataclass(frozen=True)
class HeadSettings:
    """The shape-defining choices; stored in every checkpoint and checked on load."""

    input_format: str
    pooling: str
    criteria_head: str
    evidence_head: str
    dropout: float

    @property
    def n_outputs(self) -> int:
        return len(SYMPTOMS) if self.input_format == "multi_label" else 1


class Pooler(nn.Module):
    """`cls` takes token 0; `mean` averages the tokens the attention mask keeps."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        if kind not in ("cls", "mean"):
            raise ValueError(f"unknown pooling {kind!r}")
        self.kind = kind

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if self.kind == "cls":
            return hidden[:, 0]
        weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)


class LinearCriteriaHead(nn.Module):
    def __init__(self, hidden_size: int, n_outputs: int, dropout: float) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden_size, n_outputs)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.classifier(self.dropout(pooled))
        return logits


class StartEndLinearHead(nn.Module):
    """Per output, one start and one end logit for every token."""

    def __init__(self, hidden_size: int, n_outputs: int, dropout: float) -> None:
        super().__init__()
        self.n_outputs = n_outputs
        self.dropout = nn.Dropout(dropout)
        self.projection = nn.Linear(hidden_size, 2 * n_outputs)

    def forward(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.projection(self.dropout(hidden))  # [B, T, 2 * n_outputs]
        start, end = logits.split(self.n_outputs, dim=-1)
        return start.transpose(1, 2), end.transpose(1, 2)


CRITERIA_HEADS = {"linear": LinearCriteriaHead}
EVIDENCE_HEADS = {"start_end_linear": StartEndLinearHead}


class MultiTaskModel(nn.Module):
    def __init__(self, encoder: nn.Module, settings: HeadSettings) -> None:
        super().__init__()
        hidden_size = int(encoder.config.hidden_size)  # type: ignore[union-attr,arg-type]
        self.settings = settings
        self.encoder = encoder
        self.pooler = Pooler(settings.pooling)
        self.criteria_head = CRITERIA_HEADS[settings.criteria_head](
            hidden_size, settings.n_outputs, settings.dropout
        )
        self.evidence_head = EVIDENCE_HEADS[settings.evidence_head](
            hidden_size, settings.n_outputs, settings.dropout
        )

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        span_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        inputs: dict[str, torch.Tensor] = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            inputs["token_type_ids"] = token_type_ids
        hidden = self.encoder(**inputs).last_hidden_state
        criteria_logits = self.criteria_head(self.pooler(hidden, attention_mask))
        start, end = self.evidence_head(hidden)
        allowed = span_mask.unsqueeze(1)  # [B, 1, T]; the null index is always allowed
        start = start.float().masked_fill(~allowed, MASK_VALUE)
        end = end.float().masked_fill(~allowed, MASK_VALUE)
        return {
            "criteria_logits": criteria_logits.float(),
            "start_logits": start,
            "end_logits": end,
        }

    def head_parameters(self) -> list[nn.Parameter]:
        return [p for name, p in self.named_parameters() if not name.startswith("encoder.")]

    def encoder_parameters(self) -> list[nn.Parameter]:
        return [p for name, p in self.named_parameters() if name.startswith("encoder.")]


def architecture_signature(model: nn.Module) -> str:
    """A hash of every tensor's name, shape and dtype: equal iff a state dict fits the model."""
    items = [[name, list(t.shape), str(t.dtype)] for name, t in model.state_dict().items()]
    return hashlib.sha256(json.dumps(items).encode()).hexdigest()


def compatibility_metadata(
    model: MultiTaskModel, encoder_id: str, code_version: str
) -> dict[str, Any]:
    return {
        "code_version": code_version,
        "encoder_id": encoder_id,
        "architecture_signature": architecture_signature(model),
        "heads": asdict(model.settings),
    }
