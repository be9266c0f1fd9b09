"""train.deterministic and train.amp: the kernel settings and precision they stand for.

No GPU here: the settings for CUDA are computed and applied as flags (torch sets them without a
device), and the encoder is built with the attention implementation they choose.
"""

from __future__ import annotations

import os

import pytest
import torch
from conftest import tiny_config_dict

from leanhpo.config import Config
from leanhpo.training.compute import (
    CUBLAS_ENV,
    NondeterministicKernelError,
    apply_kernel_settings,
    compute_precision,
    describe_compute,
    deterministic_kernels_only,
    kernel_settings,
)
from leanhpo.training.loop import autocast
from leanhpo.training.setup import build_network, prepare_device
from leanhpo.trial.fingerprint import fingerprint
from leanhpo.workflow.params import as_params


@pytest.fixture
def restore_flags(monkeypatch):
    """The process-wide flags as they were, whatever a test applied."""
    monkeypatch.delenv(CUBLAS_ENV, raising=False)
    saved = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
        torch.backends.cuda.flash_sdp_enabled(),
        torch.backends.cuda.mem_efficient_sdp_enabled(),
        torch.backends.cuda.cudnn_sdp_enabled(),
        torch.backends.cuda.math_sdp_enabled(),
    )
    yield
    torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[2], saved[3]
    torch.backends.cuda.enable_flash_sdp(saved[4])
    torch.backends.cuda.enable_mem_efficient_sdp(saved[5])
    torch.backends.cuda.enable_cudnn_sdp(saved[6])
    torch.backends.cuda.enable_math_sdp(saved[7])


def _sdp_enabled() -> dict[str, bool]:
    return {
        "flash": torch.backends.cuda.flash_sdp_enabled(),
        "mem_efficient": torch.backends.cuda.mem_efficient_sdp_enabled(),
        "cudnn": torch.backends.cuda.cudnn_sdp_enabled(),
        "math": torch.backends.cuda.math_sdp_enabled(),
    }


def test_deterministic_on_cuda_sets_what_it_claims(restore_flags):
    settings = kernel_settings(True, "cuda")
    assert settings.attn_implementation == "eager"
    apply_kernel_settings(settings)
    assert os.environ[CUBLAS_ENV] == ":4096:8"
    assert torch.are_deterministic_algorithms_enabled()
    assert not torch.is_deterministic_algorithms_warn_only_enabled()  # an error, not a warning
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    assert _sdp_enabled() == {"flash": False, "mem_efficient": False, "cudnn": False, "math": True}


def test_deterministic_off_on_cuda_allows_the_fast_kernels(restore_flags):
    apply_kernel_settings(kernel_settings(True, "cuda"))
    settings = kernel_settings(False, "cuda")
    apply_kernel_settings(settings)
    assert settings.attn_implementation is None  # transformers' default: SDPA
    assert not torch.are_deterministic_algorithms_enabled()
    assert all(_sdp_enabled().values())


def test_on_the_cpu_the_kernels_stay_as_they_were(restore_flags):
    settings = kernel_settings(True, "cpu")
    apply_kernel_settings(settings)
    # SDPA and every backend, as before the key: CPU numbers are unchanged by it.
    assert settings.attn_implementation is None and all(_sdp_enabled().values())
    assert CUBLAS_ENV not in os.environ
    assert torch.are_deterministic_algorithms_enabled()
    assert not torch.is_deterministic_algorithms_warn_only_enabled()


def test_a_users_deterministic_cublas_value_is_kept(restore_flags, monkeypatch):
    monkeypatch.setenv(CUBLAS_ENV, ":16:8")
    apply_kernel_settings(kernel_settings(True, "cuda"))
    assert os.environ[CUBLAS_ENV] == ":16:8"
    monkeypatch.setenv(CUBLAS_ENV, ":0:0")  # not deterministic: replaced
    apply_kernel_settings(kernel_settings(True, "cuda"))
    assert os.environ[CUBLAS_ENV] == ":4096:8"


def test_the_network_is_built_with_the_settings_of_its_device(tmp_path, restore_flags):
    config = Config.from_dict(tiny_config_dict(tmp_path))
    assert prepare_device(config).device_type == "cpu"
    network = build_network(config, seed=0)
    assert network.model.encoder.config._attn_implementation == "sdpa"
    assert torch.are_deterministic_algorithms_enabled()
    eager = kernel_settings(True, "cuda").attn_implementation
    from leanhpo.models import load_encoder

    encoder, _, _ = load_encoder("tiny", seed=0, attention=eager)
    assert encoder.config._attn_implementation == "eager"


@pytest.mark.parametrize(
    ("amp", "device", "precision"),
    [
        (True, "cuda", "bf16"),
        (True, "cpu", "fp32"),  # the default config on the CPU stays fp32
        ("bf16", "cpu", "bf16"),
        ("bf16", "cuda", "bf16"),
        (False, "cuda", "fp32"),
        (False, "cpu", "fp32"),
    ],
)
def test_train_amp_means_a_precision_per_device(amp, device, precision):
    assert compute_precision(amp, device) == precision
    assert describe_compute(device, amp, True)["precision"] == precision


def test_bf16_autocasts_on_the_cpu_only_when_asked():
    layer = torch.nn.Linear(4, 4)
    cpu = torch.device("cpu")
    with autocast(cpu, True):
        assert layer(torch.ones(1, 4)).dtype == torch.float32
    with autocast(cpu, "bf16"):
        assert layer(torch.ones(1, 4)).dtype == torch.bfloat16


def test_deterministic_false_is_fingerprinted_and_no_rerun_trigger(tmp_path):
    config = tiny_config_dict(tmp_path)
    off = tiny_config_dict(tmp_path, train={"deterministic": False})
    assert fingerprint(config, "data") != fingerprint(off, "data")
    # true is the behaviour of studies started before the key: their fingerprint is unchanged.
    before = tiny_config_dict(tmp_path)
    del before["train"]["deterministic"]
    assert fingerprint(config, "data") == fingerprint(before, "data")
    assert "train__deterministic" not in as_params({"train": config["train"]})
    note = describe_compute("cuda", True, False)["note"]
    assert "not bitwise identical" in note


def test_an_op_without_a_deterministic_kernel_is_named_with_the_way_out(restore_flags):
    apply_kernel_settings(kernel_settings(True, "cpu"))
    index, values = torch.tensor([0, 0]), torch.tensor([1.0, 2.0])
    expected = pytest.raises(
        NondeterministicKernelError, match=r"^put_ has no deterministic kernel"
    )
    with expected, deterministic_kernels_only():
        torch.zeros(3).put_(index, values)  # torch has no deterministic put_ on any device
    with pytest.raises(ValueError), deterministic_kernels_only():
        raise ValueError("other errors pass unchanged")


@pytest.mark.slow
def test_such_an_op_fails_the_trial_and_the_study_goes_on(tmp_path, monkeypatch, restore_flags):
    from studyhelper import Study

    from leanhpo.training import loop

    def put_loss(logits, *args, **kwargs):
        torch.zeros(3).put_(torch.tensor([0, 0]), torch.tensor([1.0, 2.0]))
        return logits.sum()

    study = Study(tmp_path, train={"epochs": 1})
    monkeypatch.setattr(loop, "criteria_loss", put_loss)
    failed = study.run(0)
    assert failed["status"] == "failed"
    assert failed["failure"]["reason"] == "nondeterministic_kernel"
    assert "train.deterministic: false" in failed["failure"]["message"]
