"""Write a network as an export folder, and load one back, verified, without the hub.

Layout (every file listed with its SHA-256 in manifest.json):

- `config.json`, `model.safetensors`: the fine-tuned encoder, as `save_pretrained` writes it, so
  `transformers.AutoModel.from_pretrained(folder)` loads it;
- the tokenizer files (`tokenizer.json`, `vocab.txt`, ...): `AutoTokenizer.from_pretrained`;
- `heads.safetensors`: every other tensor of the multi-task model (pooler, criteria head,
  evidence head, coupling, window pooling), under its name in the model's state dict;
- `leanhpo_model.json`: the resolved config, symptom order, the per-symptom decision thresholds
  (`decision_thresholds`; exports of older versions hold one `decision_threshold` for all), the
  null threshold, versions, provenance (study, trial, checkpoint, data) and metrics;
- `README.md`: the model card.

Loading verifies every file first, then builds the encoder from the folder itself (the
config's `model.id` is never looked up) and the heads from the config. The heads are hashed
again in the very read that loads them; the encoder's files are read a second time by
transformers (`use_safetensors=True`), so a file swapped between the check and that read would
go unseen: the export is trusted like the folder it lives in. No pickle anywhere.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModel, AutoTokenizer

from leanhpo.checkpoints.manifest import write_hashed
from leanhpo.checkpoints.safetensors_stream import read_tensors, write_file
from leanhpo.config import Config
from leanhpo.export.errors import ExportError
from leanhpo.export.folder import (
    EXPORT_FORMAT,
    PICKLE_SUFFIXES,
    file_digest,
    staged_folder,
    verify_folder,
    write_manifest,
)
from leanhpo.export.precision import PRECISION_CHOICES, choose_precision
from leanhpo.metric_names import SYMPTOMS
from leanhpo.models import EncoderInfo, MultiTaskModel, architecture_signature
from leanhpo.training.setup import Network, head_settings, prepare_device, seed_everything

INFO_NAME = "leanhpo_model.json"
HEADS_NAME = "heads.safetensors"
CARD_NAME = "README.md"
ENCODER_PREFIX = "encoder."
DEVICES = ("auto", "cpu", "cuda")


@dataclass
class ExportedModel:
    """A loaded export: the network in eval mode plus what predict needs to decide."""

    network: Network
    config: Config
    info: dict[str, Any]
    folder: Path
    precision: str  # what predict computes in: bf16 (autocast) or fp32 (export/precision.py)

    @property
    def decision_thresholds(self) -> tuple[float, ...]:
        """Per symptom, in `symptoms` order: present when probability >= it."""
        return read_decision_thresholds(self.info, self.folder / INFO_NAME)

    @property
    def null_threshold(self) -> float:
        return float(self.info["null_threshold"])

    @property
    def symptoms(self) -> tuple[str, ...]:
        return tuple(self.info["symptoms"])


def head_state(model: MultiTaskModel) -> dict[str, torch.Tensor]:
    """Every tensor of the state dict that the encoder's own save_pretrained does not hold."""
    return {
        name: tensor.detach().to("cpu").contiguous()
        for name, tensor in model.state_dict().items()
        if not name.startswith(ENCODER_PREFIX)
    }


def write_export(
    network: Network, info: dict[str, Any], card: str, out_dir: Path
) -> dict[str, Any]:
    """Write `network` and `info` (leanhpo_model.json; must hold the resolved `config`) into
    `out_dir` atomically. Returns the manifest's files."""
    model = network.model
    info = {
        "format": EXPORT_FORMAT,
        **info,
        "symptoms": list(SYMPTOMS),
        "heads": asdict(model.settings),
        "architecture_signature": architecture_signature(model),
    }
    info_bytes = (json.dumps(_finite(info), indent=2, allow_nan=False) + "\n").encode("utf-8")
    with staged_folder(out_dir) as tmp:
        encoder: Any = model.encoder  # a transformers PreTrainedModel
        encoder.save_pretrained(tmp, safe_serialization=True)
        network.tokenizer.save_pretrained(tmp)
        files = {
            path.relative_to(tmp).as_posix(): file_digest(path, sync=True)
            for path in sorted(p for p in tmp.rglob("*") if p.is_file())
        }
        clash = sorted(set(files) & {INFO_NAME, HEADS_NAME, CARD_NAME})
        pickled = sorted(name for name in files if name.endswith(PICKLE_SUFFIXES))
        if clash or pickled or "model.safetensors" not in files:
            raise RuntimeError(
                f"save_pretrained wrote {sorted(files)}: expected model.safetensors and no "
                f"pickle or {clash}"
            )
        streamed = write_file(tmp / HEADS_NAME, head_state(model), metadata={"format": "pt"})
        files[HEADS_NAME] = {"sha256": streamed.sha256, "bytes": streamed.bytes}
        files[INFO_NAME] = write_hashed(tmp / INFO_NAME, info_bytes)
        files[CARD_NAME] = write_hashed(tmp / CARD_NAME, card.encode("utf-8"))
        write_manifest(tmp, files)
    return files


def _finite(value: Any) -> Any:
    """JSON without NaN/inf (a metric snapshot may hold one): they become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def load_exported(
    folder: Path | str, device: str = "auto", precision: str = "auto"
) -> ExportedModel:
    """Verify every file of the export, then rebuild the multi-task model from it on `device`
    (auto: CUDA when visible), to predict in `precision` (auto: the one its test scores were
    computed with; a PrecisionWarning says when it differs). Raises ExportError naming what is
    wrong."""
    folder = Path(folder)
    if device not in DEVICES:
        raise ExportError(f"unknown device {device!r}; use one of {', '.join(DEVICES)}")
    if precision not in PRECISION_CHOICES:
        raise ExportError(
            f"unknown precision {precision!r}; use one of {', '.join(PRECISION_CHOICES)}"
        )
    files = verify_folder(folder)
    for name in (INFO_NAME, HEADS_NAME, "config.json", "model.safetensors"):
        if name not in files:
            raise ExportError(f"{folder} is not a complete export: its manifest lists no {name}")
    info = _read_info(folder)
    try:
        # The encoder is the export's own: its original id (a hub id, or a folder on the
        # machine that trained it) is neither needed nor looked up.
        stored = info["config"]
        config = Config.from_dict({**stored, "model": {**stored["model"], "id": str(folder)}})
        # As build_network does for the study's evaluation: the kernels of train.deterministic
        # on this device (the attention implementation among them); heads' init is overwritten.
        kernels = prepare_device(config, device)
    except Exception as error:
        raise ExportError(f"{folder / INFO_NAME}: {error}") from error
    target = torch.device(kernels.device_type)
    seed_everything(int(info.get("seed", 0)))
    encoder, tokenizer = _encoder(folder, kernels.attn_implementation)
    model = MultiTaskModel(encoder, head_settings(config))
    _load_heads(model, folder, files[HEADS_NAME])
    if architecture_signature(model) != info.get("architecture_signature"):
        raise ExportError(
            f"{folder} was exported by leanhpo {info.get('leanhpo_version')} and does not fit the "
            "model this version builds from its config; use that leanhpo version"
        )
    model.to(target).eval()
    encoder_info = EncoderInfo(
        requested=str(info["config"]["model"]["id"]),
        resolved=str(folder),
        source="export",
        revision=None,
        hidden_size=int(encoder.config.hidden_size),
        max_positions=int(getattr(encoder.config, "max_position_embeddings", 512)),
    )
    network = Network(model=model, tokenizer=tokenizer, encoder_info=encoder_info, device=target)
    chosen = choose_precision(info, config.train.amp, target.type, precision)
    return ExportedModel(network=network, config=config, info=info, folder=folder, precision=chosen)


def read_decision_thresholds(info: dict[str, Any], where: Path | str) -> tuple[float, ...]:
    """The nine decision thresholds of `info`, in SYMPTOMS order: its `decision_thresholds`
    (symptom -> threshold), or the single `decision_threshold` older exports hold for all."""
    stored = info.get("decision_thresholds")
    if stored is None and "decision_threshold" in info:
        stored = dict.fromkeys(SYMPTOMS, info["decision_threshold"])
    if not isinstance(stored, dict) or set(stored) != set(SYMPTOMS):
        raise ExportError(
            f"{where} lacks decision_thresholds (a threshold for each of {', '.join(SYMPTOMS)}); "
            f"found {stored!r}"
        )
    values = [stored[name] for name in SYMPTOMS]
    if not all(
        isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in values
    ):
        raise ExportError(f"{where}: decision_thresholds must be numbers; found {stored!r}")
    return tuple(float(v) for v in values)


def _read_info(folder: Path) -> dict[str, Any]:
    path = folder / INFO_NAME
    try:
        info = json.loads(path.read_bytes())
    except ValueError as error:
        raise ExportError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(info, dict) or info.get("format") != EXPORT_FORMAT:
        raise ExportError(f"{path} is not in format {EXPORT_FORMAT}")
    missing = [k for k in ("config", "null_threshold") if k not in info]
    if missing:
        raise ExportError(f"{path} lacks {', '.join(missing)}")
    read_decision_thresholds(info, path)
    if tuple(info.get("symptoms", ())) != SYMPTOMS:
        raise ExportError(
            f"{path} orders the symptoms as {info.get('symptoms')}, this leanhpo version as "
            f"{list(SYMPTOMS)}; use the leanhpo version that exported it"
        )
    return info


def _encoder(folder: Path, attention: str | None) -> tuple[Any, Any]:
    options = {} if attention is None else {"attn_implementation": attention}
    try:
        encoder = AutoModel.from_pretrained(
            str(folder), local_files_only=True, use_safetensors=True, **options
        )
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as error:
        raise ExportError(f"cannot load the encoder or tokenizer in {folder}: {error}") from error
    return encoder, tokenizer


def _load_heads(model: MultiTaskModel, folder: Path, entry: dict[str, Any]) -> None:
    """The heads from the very bytes that are hashed on the way (no second read to trust)."""
    path = folder / HEADS_NAME
    try:
        with open(path, "rb", buffering=0) as handle:
            result = read_tensors(handle.fileno(), entry["bytes"])
    except (OSError, EOFError) as error:
        raise ExportError(f"cannot read {path}: {error}") from error
    if result.sha256 != entry["sha256"]:
        raise ExportError(f"{path} changed while it was loaded; load the export again")
    if result.error is not None:
        raise ExportError(f"{path} is not a valid safetensors file: {result.error}")
    expected = set(head_state(model))
    if set(result.tensors) != expected:
        missing = sorted(expected - set(result.tensors))
        unexpected = sorted(set(result.tensors) - expected)
        raise ExportError(
            f"{path} does not fit the heads its config builds (missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}); use the leanhpo version that exported it"
        )
    try:
        model.load_state_dict(result.tensors, strict=False)
    except RuntimeError as error:  # a shape that differs
        raise ExportError(f"{path} does not fit the heads its config builds: {error}") from error
