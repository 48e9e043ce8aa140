"""Where the models come from, for ``serve`` and ``plan`` alike.

One set of arguments (CONFIG, TF Serving's ``--model_config_file``, ``--model_name`` /
``--model_base_path``, ``--enable_batching`` / ``--batching_parameters_file``, and
``--overlay``), one way to read them (``resolve_config``) and one set of checks before anything
loads (``checked_config``, which runs ``modelyard.repository.preflight``). ``plan`` is
``serve``'s checks without loading because both call ``checked_config``.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from modelyard.cluster.connect import with_ray_address
from modelyard.config import BatchingConfig, ModelConfig, ServerConfig, load_config
from modelyard.config.tfserving import parse_batching_parameters, with_batching
from modelyard.errors import ConfigError
from modelyard.repository.preflight import base_path_problem, preflight


@dataclasses.dataclass(frozen=True, slots=True)
class Checked:
    """A config read from the flags and checked as ``serve`` checks before loading.

    ``source``: what messages name (the config file, or ``--model_base_path``); ``warnings``:
    what ``plan`` prints and ``serve`` logs (folders that are not versions, ...).
    """

    config: ServerConfig
    is_demo: bool
    source: str
    warnings: tuple[str, ...]


def _flag_bool(text: str) -> bool:
    """absl-style boolean flag values: true/false, 1/0."""
    lowered = text.lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def add_config_arguments(
    parser: argparse.ArgumentParser, *, config_help: str
) -> argparse._ArgumentGroup:
    """Add the config-source arguments to ``parser``; returns the TF Serving flag group, for
    ``serve`` to add its other TF Serving flags to."""
    parser.add_argument("config", nargs="?", type=Path, metavar="CONFIG", help=config_help)
    tf = parser.add_argument_group("TensorFlow Serving flags (accepted unchanged)")
    tf.add_argument(
        "--model_config_file",
        "--model-config-file",
        type=Path,
        metavar="FILE",
        help="a TF Serving models.config (the same as giving it as CONFIG)",
    )
    tf.add_argument("--model_name", "--model-name", help="serve one model under this name")
    tf.add_argument(
        "--model_base_path",
        "--model-base-path",
        type=Path,
        metavar="DIR",
        help="the folder of that one model's version folders (1/, 2/, ...)",
    )
    tf.add_argument(
        "--enable_batching",
        "--enable-batching",
        nargs="?",
        const=True,
        default=False,
        type=_flag_bool,
        help="batch requests to every model (TF Serving's flag)",
    )
    tf.add_argument(
        "--batching_parameters_file",
        "--batching-parameters-file",
        type=Path,
        metavar="FILE",
        help="TF Serving BatchingParameters (text protobuf) for --enable_batching",
    )
    parser.add_argument(
        "--overlay",
        type=Path,
        metavar="FILE",
        help="YAML of modelyard-only settings (devices, pins, memory, replicas, batching) "
        "for a TF Serving models.config",
    )
    return tf


def resolve_config(args: argparse.Namespace) -> tuple[ServerConfig, bool]:
    """The config the flags ask for, and whether it is the bundled demo. Raises ConfigError."""
    if args.batching_parameters_file is not None and not args.enable_batching:
        raise ConfigError(
            "--batching_parameters_file needs --enable_batching (as in TF Serving); add "
            "--enable_batching=true"
        )
    batching: BatchingConfig | None = None
    if args.enable_batching:
        batching = BatchingConfig()
        if args.batching_parameters_file is not None:
            batching = _batching_file(args.batching_parameters_file)
    config, is_demo = _base_config(args)
    if batching is not None:
        config = with_batching(config, batching)
    return with_ray_address(config, getattr(args, "ray_address", None)), is_demo


def _batching_file(path: Path) -> BatchingConfig:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            f"--batching_parameters_file: cannot read {path}: {exc.strerror}"
        ) from exc
    except UnicodeDecodeError:
        raise ConfigError(
            f"--batching_parameters_file: {path} is not a text file; expected TF Serving "
            "BatchingParameters in text protobuf"
        ) from None
    return parse_batching_parameters(text, source=str(path))


def checked_config(args: argparse.Namespace, *, placeholders: bool = False) -> Checked:
    """``resolve_config``, then the checks ``serve`` makes before loading (``preflight``).

    ``placeholders``: ``plan`` may plan models not on disk yet that give ``memory:``. Raises
    ConfigError naming the file or flag, what is wrong and what to do.
    """
    config, is_demo = resolve_config(args)
    source = _source(args)
    warnings = preflight(config, source=source, placeholders=placeholders)
    return Checked(config, is_demo, source, warnings)


def _source(args: argparse.Namespace) -> str:
    given = args.config or args.model_config_file
    if given is not None:
        return str(given)
    if args.model_base_path is not None:
        return "--model_base_path"
    return "the demo"


def _base_config(args: argparse.Namespace) -> tuple[ServerConfig, bool]:
    overlay: Path | None = args.overlay
    given = [p for p in (args.config, args.model_config_file) if p is not None]
    if len(given) == 2:
        raise ConfigError(
            f"give a CONFIG ({args.config}) or --model_config_file ({args.model_config_file}), "
            "not both"
        )
    if args.model_base_path is not None or args.model_name is not None:
        if given or overlay is not None:
            raise ConfigError(
                "--model_name/--model_base_path serve one model; they cannot be combined with "
                "a CONFIG, --model_config_file or --overlay"
            )
        if args.model_base_path is None:
            raise ConfigError(
                "--model_name needs --model_base_path (the folder of its version folders)"
            )
        problem = base_path_problem(args.model_base_path, "--model_base_path")
        if problem is not None:
            raise ConfigError(problem)
        name = args.model_name or "default"  # TF Serving's default model name
        try:
            model = ModelConfig(name=name, base_path=args.model_base_path.resolve())
        except ValueError as exc:  # pydantic's ValidationError: a name URLs cannot carry
            raise ConfigError(
                f"--model_name {name!r} is not a model name: use letters, digits, '_', '.' and "
                "'-', starting with a letter or digit"
            ) from exc
        return ServerConfig(models=(model,)), False
    if given:
        return load_config(given[0], overlay=overlay), False
    if overlay is not None:
        raise ConfigError(
            "--overlay needs a TF Serving models.config (CONFIG or --model_config_file)"
        )
    from modelyard.demo import build_demo_repository

    return load_config(build_demo_repository()), True


def watched_files(args: argparse.Namespace) -> list[Path]:
    """The files a config poll watches for changes."""
    files = [p for p in (args.config, args.model_config_file, args.overlay) if p is not None]
    return [Path(p) for p in files]
