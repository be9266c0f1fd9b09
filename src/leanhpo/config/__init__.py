"""Config: JSON Schema with defaults, semantic checks, search space and typed views."""

from leanhpo.config.search_space import (
    SEARCHABLE,
    active_space,
    apply_params,
    sample_params,
)
from leanhpo.config.typed import (
    Config,
    DataConfig,
    ModelConfig,
    RetentionConfig,
    StudyConfig,
    TrackingConfig,
    TrainConfig,
)
from leanhpo.config.validate import (
    SCHEMA_PATH,
    ConfigError,
    deep_merge,
    load_config_file,
    parse_size,
    validate_config,
)

__all__ = [
    "SCHEMA_PATH",
    "SEARCHABLE",
    "Config",
    "ConfigError",
    "DataConfig",
    "ModelConfig",
    "RetentionConfig",
    "StudyConfig",
    "TrackingConfig",
    "TrainConfig",
    "active_space",
    "apply_params",
    "deep_merge",
    "load_config_file",
    "parse_size",
    "sample_params",
    "validate_config",
]
