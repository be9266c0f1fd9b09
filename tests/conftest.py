"""Shared fixtures: a tiny config, prepared sample data, and a hermetic environment."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from services.chromium import chromium  # noqa: F401
from services.fake_hub import fake_hub, fake_hub_repos  # noqa: F401
from services.memory_cgroup import memory_cgroup  # noqa: F401
from services.mlflow_server import (  # noqa: F401
    mlflow_auth_server,
    mlflow_backend_store,
    mlflow_server,
)
from services.postgres import postgres, postgres_cluster  # noqa: F401
from services.slurm import slurm_cluster  # noqa: F401

REPO = Path(__file__).resolve().parents[1]
TINY_CONFIG = REPO / "tests" / "config" / "tiny.yaml"

# No test may reach a network; the hub code paths are tested through local caches.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("NLTK_DATA", str(REPO / ".nltk_data"))  # `make nltk-data` fills it


def tiny_config_dict(tmp: Path, **overrides: Any) -> dict[str, Any]:
    """The validated tiny workflow config with storage and tracking inside `tmp`."""
    from leanhpo.config import deep_merge, validate_config

    with (REPO / "config.yaml").open() as handle:
        base = yaml.safe_load(handle)
    with TINY_CONFIG.open() as handle:
        tiny = yaml.safe_load(handle)
    merged = deep_merge(base, tiny)
    merged = deep_merge(
        merged,
        {
            "study": {"storage": f"sqlite:///{tmp}/optuna.db"},
            "tracking": {"uri": f"sqlite:///{tmp}/mlflow.db"},
        },
    )
    return validate_config(deep_merge(merged, copy.deepcopy(overrides)))


@pytest.fixture
def tiny_config(tmp_path: Path) -> dict[str, Any]:
    return tiny_config_dict(tmp_path)


@pytest.fixture(scope="session")
def sample_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Prepared splits of the tiny config's sample data (60 posts), shared by the session."""
    from leanhpo.data import prepare_dataset

    out = tmp_path_factory.mktemp("data")
    config = tiny_config_dict(out)
    prepare_dataset(config["data"], out)
    return out


@pytest.fixture(scope="session")
def sample_posts(sample_data: Path) -> dict[str, list[dict[str, Any]]]:
    from leanhpo.data import load_split

    return {name: load_split(sample_data, name) for name in ("train", "validation", "test")}
