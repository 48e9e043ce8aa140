"""Reading a config file's text, with errors that name the file (and line) a user can act on."""

from __future__ import annotations

from pathlib import Path

import yaml

from modelyard.errors import ConfigError


def read_text(path: Path, what: str, expected: str) -> str:
    """The text of ``path``; ConfigError naming it when it is missing, a folder, unreadable, or
    not text (``what``: "config", "overlay", ...; ``expected``: what it should hold)."""
    try:
        return path.read_text(encoding="utf-8")
    except IsADirectoryError:
        raise ConfigError(f"{what} {path} is a folder; expected a file: {expected}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{what} {path} is not a text file (byte {exc.start} is not UTF-8); expected {expected}"
        ) from None


def yaml_problem(exc: yaml.YAMLError, source: str) -> str:
    """A YAML syntax error as ``file:line:column: not valid YAML: what``."""
    mark = getattr(exc, "problem_mark", None)
    where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark is not None else source
    problem = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    context_mark = getattr(exc, "context_mark", None)
    if context and context_mark is not None:
        problem += f" ({context} at line {context_mark.line + 1})"
    return f"{where}: not valid YAML: {problem}"
