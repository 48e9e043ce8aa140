"""Configuration: the YAML schema users write, and its loader."""

from modelyard.config.loader import load_config, parse_config
from modelyard.config.schema import (
    BatchingConfig,
    DeviceConfig,
    DeviceKind,
    ModelConfig,
    Platform,
    ServerConfig,
    TensorConfig,
    VersionPolicy,
)
from modelyard.config.sizes import format_size, parse_size

__all__ = [
    "BatchingConfig",
    "DeviceConfig",
    "DeviceKind",
    "ModelConfig",
    "Platform",
    "ServerConfig",
    "TensorConfig",
    "VersionPolicy",
    "format_size",
    "load_config",
    "parse_config",
    "parse_size",
]
