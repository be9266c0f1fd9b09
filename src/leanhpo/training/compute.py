"""How a network computes on its device: which kernels (train.deterministic) and which precision
(train.amp). Pure settings and torch flags; no I/O.

Determinism on CUDA needs three things torch does not do by default: cuBLAS with a fixed
workspace (CUBLAS_WORKSPACE_CONFIG, read once, when cuBLAS first runs), attention without the
flash and memory-efficient SDPA kernels (their backward adds in a varying order), and
`torch.use_deterministic_algorithms(True)` without warn_only, so that an op with no deterministic
kernel stops the run instead of quietly breaking the promise. On the CPU every kernel torch
picks for this model is deterministic at a fixed thread count, so only the flags change there,
never the numbers.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

CUBLAS_ENV = "CUBLAS_WORKSPACE_CONFIG"
CUBLAS_DETERMINISTIC = ":4096:8"
# The two values NVIDIA documents as deterministic; a user's own choice of either is kept.
CUBLAS_DETERMINISTIC_VALUES = (":4096:8", ":16:8")
ALL_SDP_BACKENDS = ("flash", "mem_efficient", "cudnn", "math")
PRECISIONS = ("bf16", "fp32")
# What torch says when an op has no deterministic kernel under use_deterministic_algorithms(True).
NO_DETERMINISTIC_KERNEL = "does not have a deterministic implementation"
NOT_BITWISE = (
    "train.deterministic is false: fast kernels without a deterministic variant were allowed, "
    "so a resumed trial is not bitwise identical to an uninterrupted one, and a rerun of the "
    "same config gives close but not identical metrics"
)


class NondeterministicKernelError(RuntimeError):
    """An op of this configuration has no deterministic kernel on this device while
    train.deterministic is true: the trial's own fault (trial/job.py records it as failed, as an
    out-of-memory error), with the op named and the way out."""


@contextlib.contextmanager
def deterministic_kernels_only() -> Iterator[None]:
    """Turn torch's error for an op without a deterministic kernel into a
    NondeterministicKernelError that says what to do; other errors pass unchanged."""
    try:
        yield
    except RuntimeError as error:
        if NO_DETERMINISTIC_KERNEL not in str(error):
            raise
        op = str(error).split(NO_DETERMINISTIC_KERNEL, 1)[0].strip()
        raise NondeterministicKernelError(
            f"{op} has no deterministic kernel on this device, and train.deterministic is true. "
            "Avoid the head or option that uses it (see the traceback), or set "
            "train.deterministic: false in a new study (fast kernels; a resumed trial is then not "
            "bitwise identical)"
        ) from error


@dataclass(frozen=True)
class KernelSettings:
    """What `apply_kernel_settings` sets, for one device type and one train.deterministic."""

    deterministic: bool
    device_type: str
    # How the encoder is built: "eager", or None for transformers' default (SDPA where the
    # encoder has it; naming "sdpa" would refuse an encoder without it).
    attn_implementation: str | None
    sdp_backends: tuple[str, ...]  # the scaled_dot_product_attention backends left enabled
    use_deterministic_algorithms: bool
    warn_only: bool
    cublas_workspace_config: str | None  # the value CUBLAS_WORKSPACE_CONFIG must hold, or None
    cudnn_deterministic: bool
    cudnn_benchmark: bool


def kernel_settings(deterministic: bool, device_type: str) -> KernelSettings:
    """The settings of `train.deterministic` on a device type ("cuda" or "cpu")."""
    cuda = device_type == "cuda"
    strict = deterministic and cuda
    return KernelSettings(
        deterministic=deterministic,
        device_type=device_type,
        # Eager attention is plain matmul + softmax: deterministic on CUDA. SDPA stays on the CPU,
        # where its kernels are deterministic and where every earlier result was computed.
        attn_implementation="eager" if strict else None,
        # A backstop for any other SDPA call (a head, a hub encoder without an eager path).
        sdp_backends=("math",) if strict else ALL_SDP_BACKENDS,
        use_deterministic_algorithms=deterministic,
        warn_only=False,
        cublas_workspace_config=CUBLAS_DETERMINISTIC if strict else None,
        cudnn_deterministic=deterministic,
        # Benchmark mode times kernels per input shape and may pick another one next time; our
        # shapes change with every batch, so it would not pay even when determinism is off.
        cudnn_benchmark=False,
    )


def apply_kernel_settings(settings: KernelSettings) -> None:
    """Set the process-wide torch flags and the cuBLAS variable of `settings`.

    Call it before the first CUDA operation of the process: cuBLAS reads its workspace size
    once, at its first call, and torch's own check only reads the variable, so a value set later
    passes the check while cuBLAS keeps its default workspace (not deterministic)."""
    wanted = settings.cublas_workspace_config
    if wanted is not None and os.environ.get(CUBLAS_ENV) not in CUBLAS_DETERMINISTIC_VALUES:
        if torch.cuda.is_initialized():
            warnings.warn(
                f"{CUBLAS_ENV} is set to {wanted} after CUDA started in this process; cuBLAS may "
                "already run with its default workspace, which is not deterministic. Set it in "
                "the environment before the process starts",
                RuntimeWarning,
                stacklevel=2,
            )
        os.environ[CUBLAS_ENV] = wanted
    torch.use_deterministic_algorithms(
        settings.use_deterministic_algorithms, warn_only=settings.warn_only
    )
    torch.backends.cudnn.deterministic = settings.cudnn_deterministic
    torch.backends.cudnn.benchmark = settings.cudnn_benchmark
    enabled = set(settings.sdp_backends)
    torch.backends.cuda.enable_flash_sdp("flash" in enabled)
    torch.backends.cuda.enable_mem_efficient_sdp("mem_efficient" in enabled)
    torch.backends.cuda.enable_cudnn_sdp("cudnn" in enabled)
    torch.backends.cuda.enable_math_sdp("math" in enabled)


def compute_precision(amp: bool | str, device_type: str) -> str:
    """The precision ("bf16" or "fp32") that train.amp means on a device type: true is bf16
    autocast on CUDA and fp32 on the CPU (the default study's figures are CPU fp32); "bf16" is
    bf16 autocast on every device; false is fp32 everywhere."""
    if amp == "bf16" or (amp is True and device_type == "cuda"):
        return "bf16"
    return "fp32"


def amp_for(precision: str) -> bool | str:
    """The train.amp value that computes in `precision` on every device."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    return "bf16" if precision == "bf16" else False


def bf16_supported(device_type: str) -> bool:
    """Whether bf16 autocast runs on this device type (torch has it on every CPU; on CUDA from
    Ampere on, and emulated, slowly, before)."""
    if device_type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    return True


def describe_compute(device_type: str, amp: bool | str, deterministic: bool) -> dict[str, Any]:
    """How scores were computed, as reports, exports and model cards record it."""
    record: dict[str, Any] = {
        "device": device_type,
        "precision": compute_precision(amp, device_type),
        "deterministic": deterministic,
        "torch": torch.__version__,
    }
    if not deterministic:
        record["note"] = NOT_BITWISE
    return record
