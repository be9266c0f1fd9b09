"""The multi-task model: one shared encoder, a criteria head and an evidence head.

Both input formats share one shape convention, which keeps losses and decoding format-free:
every example has `n_outputs` outputs (9 in multi_label, 1 in binary_pairs), so criteria logits
are [B, n_outputs] and evidence scores carry n_outputs as their second axis. Token 0 (CLS) is
the null span. The evidence head owns its loss and decoding (see `models.evidence`), so callers
stay head-agnostic.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from leanhpo.metric_names import SYMPTOMS
from leanhpo.models.coupling import COUPLINGS, Coupling
from leanhpo.models.crf_head import BioCrfHead
from leanhpo.models.criteria_heads import CRITERIA_HEADS
from leanhpo.models.evidence import (
    MASK_VALUE,
    NULL_INDEX,
    Candidates,
    EvidenceHead,
    TokenSpans,
)
from leanhpo.models.pooling import Pooler, WindowPool
from leanhpo.models.sentence_head import SentenceRerankerHead
from leanhpo.models.span_heads import BiaffineHead, StartEndLinearHead, StartEndMLPHead

__all__ = ["MASK_VALUE", "NULL_INDEX", "HeadSettings", "MultiTaskModel"]

EVIDENCE_HEADS: dict[str, type[EvidenceHead]] = {
    "start_end_linear": StartEndLinearHead,
    "start_end_mlp": StartEndMLPHead,
    "biaffine": BiaffineHead,
    "bio_crf": BioCrfHead,
    "sentence_reranker": SentenceRerankerHead,
}


@dataclass(frozen=True)
class HeadSettings:
    """The shape-defining choices; stored in every checkpoint and checked on load."""

    input_format: str
    pooling: str
    criteria_head: str
    evidence_head: str
    dropout: float
    head_hidden_size: int = 256
    dropout_samples: int = 5
    coupling: str = "independent"
    coupling_pooling: str = "mean"
    coupling_method: str = "concat"
    window_pooling: str = "mean"  # how a unit's windows are pooled (model.long_posts windows)

    @property
    def n_outputs(self) -> int:
        return len(SYMPTOMS) if self.input_format == "multi_label" else 1


def _lookup(table: dict[str, Any], kind: str, name: str) -> Any:
    if name not in table:
        raise ValueError(f"unknown {kind} {name!r}; known: {', '.join(table)}")
    return table[name]


class MultiTaskModel(nn.Module):
    def __init__(self, encoder: nn.Module, settings: HeadSettings) -> None:
        super().__init__()
        hidden_size = int(encoder.config.hidden_size)  # type: ignore[union-attr,arg-type]
        n_outputs, dropout = settings.n_outputs, settings.dropout
        evidence_head = _lookup(EVIDENCE_HEADS, "evidence head", settings.evidence_head)(
            hidden_size, n_outputs, dropout, settings.head_hidden_size
        )
        if settings.coupling not in COUPLINGS:
            raise ValueError(f"unknown coupling {settings.coupling!r}; known: {COUPLINGS}")
        coupling = None
        if settings.coupling == "coupled":
            coupling = Coupling(
                settings.coupling_method,
                settings.coupling_pooling,
                evidence_head.feature_size,
                hidden_size,
            )
        criteria_in = coupling.output_size if coupling is not None else hidden_size
        self.settings = settings
        # Registration order fixes the state-dict order (and so the architecture signature).
        self.encoder = encoder
        self.pooler = Pooler(settings.pooling, hidden_size)
        self.criteria_head = _lookup(CRITERIA_HEADS, "criteria head", settings.criteria_head)(
            criteria_in, n_outputs, dropout, settings.head_hidden_size, settings.dropout_samples
        )
        self.evidence_head: EvidenceHead = evidence_head
        self.coupling = coupling
        self.window_pool = WindowPool(settings.window_pooling, criteria_in)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        span_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        sentence_spans: torch.Tensor | None = None,
        window_owner: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """`criteria_logits` [U, n_outputs] plus the evidence head's float score tensors [W, ...].

        Rows are windows; `window_owner` [W] gives each window's unit (post or pair), and the
        criteria are predicted once per unit from its pooled windows (None: a unit per window).
        """
        inputs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            inputs["token_type_ids"] = token_type_ids
        # Only last_2_layer_mix needs every layer; the others skip keeping them.
        states = self.pooler.needs_hidden_states
        encoded = self.encoder(**inputs, output_hidden_states=states)
        hidden = encoded.last_hidden_state
        outputs: dict[str, torch.Tensor] = self.evidence_head(hidden, span_mask, sentence_spans)
        features = outputs.pop("evidence_features")
        pooled = self.pooler(hidden, attention_mask, encoded.hidden_states if states else None)
        if self.coupling is not None:
            pooled = self.coupling(pooled, features, span_mask)
        if window_owner is not None:
            pooled = self.window_pool(pooled, window_owner)
        outputs["criteria_logits"] = self.criteria_head(pooled).float()
        return outputs

    def evidence_loss(
        self, outputs: dict[str, torch.Tensor], batch: dict[str, Any]
    ) -> torch.Tensor:
        return self.evidence_head.loss(outputs, batch)

    def evidence_loss_denominator(self, batch: dict[str, Any]) -> int:
        """How many terms `evidence_loss` averages over in `batch` (see `models.evidence`)."""
        return self.evidence_head.loss_denominator(batch)

    def decode_evidence(
        self,
        outputs: dict[str, torch.Tensor],
        batch: dict[str, Any],
        max_answer_tokens: int,
        null_threshold: float,
    ) -> TokenSpans:
        return self.evidence_head.decode(outputs, batch, max_answer_tokens, null_threshold)

    def evidence_candidates(
        self, outputs: dict[str, torch.Tensor], batch: dict[str, Any], max_answer_tokens: int
    ) -> Candidates:
        """Best span and null margin per example and output, before any threshold."""
        return self.evidence_head.candidates(outputs, batch, max_answer_tokens)

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
