"""TensorFlow Serving's config files, read into modelyard's ``ServerConfig``.

- ``models.config`` (``--model_config_file``): a text ``ModelServerConfig`` with a
  ``model_config_list``. Each ``config`` maps onto a ``ModelConfig``: ``name``, ``base_path``,
  ``model_platform``, ``model_version_policy`` (``latest``/``all``/``specific``) and
  ``version_labels``.
- ``--batching_parameters_file``: a text ``BatchingParameters``, mapped onto ``BatchingConfig``.

Both are parsed by protobuf's text-format parser over the messages in ``modelyard.tfproto``
(the project's own ``.proto`` files), so anything TF Serving's parser would reject is rejected
here with its line and column. Settings TF Serving has no field for (device pins, memory,
replicas, per-model batching, signatures) come from an optional YAML overlay
(``modelyard serve --overlay FILE``), never from extra protobuf fields:

    devices: [{name: gpu0, kind: cuda, index: 0}]    # optional, as in modelyard YAML
    headroom_fraction: 0.05                           # optional
    models:                                           # optional: model name -> settings
      resnet: {devices: [gpu0], memory: 4GiB, replicas: 1, batching: {max_batch_size: 16}}
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import yaml
from google.protobuf import text_format
from google.protobuf.message import Message
from pydantic import ValidationError

from modelyard.config.schema import BatchingConfig, Platform, ServerConfig
from modelyard.config.textfiles import read_text, yaml_problem
from modelyard.errors import ConfigError
from modelyard.tfproto.generated import tensorflow_serving_config_pb2 as pb

log = logging.getLogger(__name__)

OVERLAY_MODEL_KEYS = frozenset(
    {"devices", "replicas", "memory", "batching", "inputs", "outputs", "platform"}
)
"""Per-model overlay keys: modelyard settings a models.config cannot express."""
OVERLAY_TOP_KEYS = frozenset({"devices", "headroom_fraction", "models"})

# TF Serving's model_platform strings; modelyard's own platform names are accepted as well,
# so one models.config can list ONNX or torch models beside SavedModels.
_PLATFORMS: dict[str, Platform] = {
    "": Platform.AUTO,
    "tensorflow": Platform.TENSORFLOW,
    **{p.value: p for p in Platform},
}

# BatchingParameters fields with no counterpart in BatchingConfig: accepted, and a warning
# says they have no effect (modelyard's batcher runs on the model's own device worker).
_IGNORED_BATCHING = ("num_batch_threads", "thread_pool_name", "pad_variable_length_inputs")


def looks_like_tf_serving_config(text: str) -> bool:
    """True for a TF Serving text-protobuf config (its first statement is model_config_list)."""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            return stripped.startswith("model_config_list")
    return False


def _parse_text(text: str, message: Message, source: str) -> None:
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as exc:
        line, column = exc.GetLine(), exc.GetColumn()
        where = f"{source}:{line}:{column}" if line is not None else source
        # ParseError's own text repeats "line:column :"; keep only what went wrong.
        detail = str(exc).split(" : ", 1)[-1]
        raise ConfigError(f"{where}: {detail}") from None


def parse_tf_serving_config(
    text: str,
    *,
    source: str = "<models.config>",
    base_dir: Path | None = None,
    overlay: dict[str, Any] | None = None,
    overlay_source: str = "<overlay>",
) -> ServerConfig:
    """A ``ServerConfig`` from the text of a ``models.config`` and an optional overlay mapping.

    Relative ``base_path``s are taken from ``base_dir``. Raises ConfigError naming the file and
    line for a text-format error, and naming the model for a missing name or base_path, an
    unknown platform, an empty ``specific`` policy, or an overlay entry for an unknown model.
    """
    message = pb.ModelServerConfig()
    _parse_text(text, message, source)
    if message.WhichOneof("config") == "custom_model_config":
        raise ConfigError(f"{source}: custom_model_config is not supported; use model_config_list")
    models = [
        _model(config, index, source, base_dir)
        for index, config in enumerate(message.model_config_list.config)
    ]
    data: dict[str, Any] = {"models": models}
    if overlay:
        _apply_overlay(data, overlay, overlay_source)
    try:
        return ServerConfig.model_validate(data)
    except ValidationError as exc:
        problems = [
            ".".join(str(p) for p in err["loc"])
            + ": "
            + str(err["msg"]).removeprefix("Value error, ")
            for err in exc.errors()
        ]
        sources = f"{source} with {overlay_source}" if overlay else source
        raise ConfigError(f"invalid config {sources}:\n  " + "\n  ".join(problems)) from None


def _model(config: Any, index: int, source: str, base_dir: Path | None) -> dict[str, Any]:
    what = f"{source}: model_config_list.config[{index}]"
    if not config.name:
        raise ConfigError(f"{what} has no name")
    what = f"{source}: model {config.name!r}"
    if not config.base_path:
        raise ConfigError(f"{what} has no base_path")
    platform = _PLATFORMS.get(config.model_platform)
    if platform is None:
        known = ", ".join(sorted(p for p in _PLATFORMS if p))
        raise ConfigError(
            f"{what} has model_platform {config.model_platform!r}; expected one of {known}"
        )
    base_path = Path(config.base_path)
    if not base_path.is_absolute() and base_dir is not None:
        base_path = base_dir / base_path
    model: dict[str, Any] = {
        "name": config.name,
        "base_path": base_path,
        "platform": platform,
        "version_policy": _version_policy(config, what),
        "version_labels": dict(config.version_labels),
    }
    return model


def _version_policy(config: Any, what: str) -> dict[str, Any]:
    if not config.HasField("model_version_policy"):
        return {"latest": 1}  # TF Serving's default: the latest version only
    policy = config.model_version_policy
    choice = policy.WhichOneof("policy_choice")
    if choice == "all":
        return {"all": True}
    if choice == "specific":
        versions = list(policy.specific.versions)
        if not versions:
            raise ConfigError(f"{what}: model_version_policy specific lists no versions")
        return {"specific": versions}
    # latest, or an empty policy: TF Serving treats num_versions 0 as 1.
    return {"latest": max(1, policy.latest.num_versions)}


def _apply_overlay(data: dict[str, Any], overlay: dict[str, Any], source: str) -> None:
    unknown = sorted(set(overlay) - OVERLAY_TOP_KEYS)
    if unknown:
        raise ConfigError(
            f"{source}: unknown key(s) {', '.join(unknown)}; allowed: "
            + ", ".join(sorted(OVERLAY_TOP_KEYS))
        )
    for key in ("devices", "headroom_fraction"):
        if key in overlay:
            data[key] = overlay[key]
    per_model = overlay.get("models") or {}
    if not isinstance(per_model, dict):
        raise ConfigError(f"{source}: models must map model names to settings")
    by_name = {m["name"]: m for m in data["models"]}
    for name, settings in per_model.items():
        if name not in by_name:
            raise ConfigError(
                f"{source}: model {name!r} is not in the models.config; models: "
                + (", ".join(sorted(by_name)) or "none")
            )
        if not isinstance(settings, dict):
            raise ConfigError(f"{source}: models.{name} must be a mapping of settings")
        bad = sorted(set(settings) - OVERLAY_MODEL_KEYS)
        if bad:
            raise ConfigError(
                f"{source}: models.{name}: unknown key(s) {', '.join(bad)}; an overlay sets "
                f"only {', '.join(sorted(OVERLAY_MODEL_KEYS))} (the rest is the models.config's)"
            )
        by_name[name].update(settings)


def load_overlay(path: Path) -> dict[str, Any]:
    """The YAML overlay at ``path`` as a mapping; ConfigError when unreadable or not a mapping."""
    text = read_text(path, "overlay", "YAML of modelyard-only settings (devices, models, ...)")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(yaml_problem(exc, str(path))) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the overlay must be a mapping (devices, models, ...)")
    return data


def parse_batching_parameters(text: str, *, source: str = "<batching>") -> BatchingConfig:
    """A ``BatchingConfig`` from the text of a TF Serving ``--batching_parameters_file``.

    Unset fields keep modelyard's defaults. ``num_batch_threads``, ``thread_pool_name`` and
    ``pad_variable_length_inputs`` are accepted and ignored with a warning. Raises ConfigError
    naming the file and line for a text-format error or an invalid combination.
    """
    message = pb.BatchingParameters()
    _parse_text(text, message, source)
    values: dict[str, Any] = {}
    for field in ("max_batch_size", "batch_timeout_micros", "max_enqueued_batches"):
        if message.HasField(field):
            values[field] = getattr(message, field).value
    if message.allowed_batch_sizes:
        values["allowed_batch_sizes"] = tuple(message.allowed_batch_sizes)
    ignored = [
        f
        for f in _IGNORED_BATCHING
        if (message.HasField(f) if f != "pad_variable_length_inputs" else getattr(message, f))
    ]
    if ignored:
        log.warning("%s: %s have no effect in modelyard", source, ", ".join(ignored))
    try:
        return BatchingConfig.model_validate(values)
    except ValidationError as exc:
        problems = [str(e["msg"]).removeprefix("Value error, ") for e in exc.errors()]
        raise ConfigError(f"{source}: " + "; ".join(problems)) from None


def with_batching(config: ServerConfig, batching: BatchingConfig) -> ServerConfig:
    """``config`` with ``batching`` on every model that does not set its own (``--enable_batching``
    applies one set of parameters to every model, as in TF Serving; an overlay's wins)."""
    models = tuple(
        m if m.batching is not None else m.model_copy(update={"batching": batching})
        for m in config.models
    )
    return config.model_copy(update={"models": models})


__all__ = [
    "load_overlay",
    "looks_like_tf_serving_config",
    "parse_batching_parameters",
    "parse_tf_serving_config",
    "with_batching",
]
