"""Read a config file into a ``ServerConfig``, with errors that name the key and the file line."""

from __future__ import annotations

from pathlib import Path
from typing import Any, get_args

import yaml
from pydantic import BaseModel, ValidationError

from modelyard.config.paging import paging_problems
from modelyard.config.schema import LocatedError, ServerConfig
from modelyard.config.textfiles import read_text, yaml_problem
from modelyard.config.tfserving import (
    load_overlay,
    looks_like_tf_serving_config,
    parse_tf_serving_config,
)
from modelyard.errors import ConfigError


def load_config(path: Path, *, overlay: Path | None = None) -> ServerConfig:
    """Parse and validate ``path``; relative ``base_path``s are taken from the file's folder.

    ``path`` is modelyard YAML or a TF Serving ``models.config``, told apart by content.
    ``overlay`` (a YAML file of modelyard-only settings, see ``modelyard.config.tfserving``)
    applies to a ``models.config`` only. Raises ConfigError with ``file:line: key: problem``
    for every problem found.
    """
    text = read_text(path, "config", "modelyard YAML or a TF Serving models.config")
    if overlay is not None:
        if not looks_like_tf_serving_config(text):
            raise ConfigError(
                f"--overlay applies to a TF Serving models.config; {path} is modelyard YAML, "
                "which takes those settings itself"
            )
        return parse_tf_serving_config(
            text,
            source=str(path),
            base_dir=path.parent,
            overlay=load_overlay(overlay),
            overlay_source=str(overlay),
        )
    return parse_config(text, source=str(path), base_dir=path.parent)


def parse_config(
    text: str, *, source: str = "<config>", base_dir: Path | None = None
) -> ServerConfig:
    """A ``ServerConfig`` from modelyard YAML or a TF Serving ``models.config`` (by content)."""
    if looks_like_tf_serving_config(text):
        return parse_tf_serving_config(text, source=source, base_dir=base_dir)
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(yaml_problem(exc, source)) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping with a 'models' key")
    try:
        config = ServerConfig.model_validate(data)
    except ValidationError as exc:
        lines = [_describe(err, root, source) for err in exc.errors() if not _union_noise(err)]
        raise ConfigError("invalid config:\n  " + "\n  ".join(lines)) from None
    problems = [_at(root, loc, source, message) for loc, message in paging_problems(config)]
    if problems:
        raise ConfigError("invalid config:\n  " + "\n  ".join(problems))
    if base_dir is not None:
        config = _resolve_paths(config, base_dir)
    return config


def _resolve_paths(config: ServerConfig, base_dir: Path) -> ServerConfig:
    models = tuple(
        m
        if m.base_path.is_absolute()
        else m.model_copy(update={"base_path": base_dir / m.base_path})
        for m in config.models
    )
    return config.model_copy(update={"models": models})


def _union_noise(err: Any) -> bool:
    """An error from the ``auto`` branch of ``devices: auto | [...]`` when a list was given:
    the list branch's errors say what is wrong; "Input should be 'auto'" only misleads."""
    loc = tuple(err["loc"])
    return any(isinstance(p, str) and p.startswith("literal[") for p in loc) and not isinstance(
        err.get("input"), str
    )


def _describe(err: Any, root: yaml.Node | None, source: str) -> str:
    loc: tuple[int | str, ...] = tuple(err["loc"])
    located = err.get("ctx", {}).get("error")
    if isinstance(located, LocatedError):
        loc = (*loc, *located.loc)  # a cross-field check that knows where the mistake is
    # pydantic puts the tag of a union member in loc ("tuple[...]"); it is noise to users.
    loc = tuple(p for p in loc if not (isinstance(p, str) and ("[" in p or p == "literal")))
    node, last_key = _find_node(root, loc)
    line = f":{node.start_mark.line + 1}" if node is not None else ""
    path = ".".join(str(p) for p in loc) or "(top level)"
    if err["type"] == "extra_forbidden":
        allowed = _allowed_keys(loc)
        hint = f"; allowed keys: {', '.join(allowed)}" if allowed else ""
        return f"{source}{line}: unknown key {last_key!r} at {path}{hint}"
    message = str(err["msg"]).removeprefix("Value error, ")
    return f"{source}{line}: {path}: {message}"


def _at(root: yaml.Node | None, loc: tuple[int | str, ...], source: str, message: str) -> str:
    """``file:line: key.path: message`` for a problem found after validation."""
    node, _ = _find_node(root, loc)
    line = f":{node.start_mark.line + 1}" if node is not None else ""
    return f"{source}{line}: {'.'.join(str(p) for p in loc)}: {message}"


def _find_node(root: yaml.Node | None, loc: tuple[int | str, ...]) -> tuple[yaml.Node | None, str]:
    """The YAML node at ``loc`` (or the deepest one found), and the last key on the way."""
    node = root
    last_key = ""
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                if key_node.value == part:
                    node, last_key = (key_node if part == loc[-1] else value_node), str(part)
                    break
            else:
                return node, str(part)
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if part >= len(node.value):
                return node, last_key
            node = node.value[part]
        else:
            return node, str(part)
    return node, last_key


def _allowed_keys(loc: tuple[int | str, ...]) -> list[str]:
    """The keys the config model at ``loc[:-1]`` accepts (walks nested pydantic models)."""
    model: type[BaseModel] | None = ServerConfig
    for part in loc[:-1]:
        if model is None:
            return []
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        model = _model_in(field.annotation) if field is not None else None
    if model is None:
        return []
    return sorted(f.alias or name for name, f in model.model_fields.items())


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside an annotation like ``tuple[X, ...] | None``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None
