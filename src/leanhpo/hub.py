"""What the dataset and model loaders share about the Hugging Face hub: when to stay offline,
and the retry policy after a cache miss (SPEC 3: backoff 1, 2, 4, 8 and 16 s).

The cache is always tried first, without network. After a miss, one network attempt is made
at once, then up to five retries follow the waits below.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_chain, wait_fixed

HUB_RETRY_WAITS: tuple[float, ...] = (1, 2, 4, 8, 16)
# Catalog aliases of hub models (SPEC 3); minilm and tiny are built in, see models/encoder.py.
HUB_ALIASES = {
    "bert-base": "google-bert/bert-base-uncased",
    "roberta-base": "FacebookAI/roberta-base",
    "mental-bert": "mental/mental-bert-base-uncased",
    "psychbert": "mnaylor/psychbert-cased",
    "clinicalbert": "emilyalsentzer/Bio_ClinicalBERT",
}
TRUE_ENV_VALUES = ("1", "ON", "YES", "TRUE")


def hub_offline() -> bool:
    """True when HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE asks for no network at all."""
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(name, "").strip().upper() in TRUE_ENV_VALUES:
            return True
    return False


def hub_retrying(
    is_transient: Callable[[BaseException], bool], waits: Sequence[float] | None = None
) -> Retrying:
    """A tenacity policy: retry transient errors with `waits` between attempts, then re-raise."""
    waits = tuple(HUB_RETRY_WAITS if waits is None else waits)
    return Retrying(
        wait=wait_chain(*[wait_fixed(seconds) for seconds in waits]),
        stop=stop_after_attempt(len(waits) + 1),
        retry=retry_if_exception(is_transient),
        reraise=True,
    )
