"""``modelyard serve``: load the config (or the demo), start REST + gRPC, stop on SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING

from modelyard.cli import exits, sources
from modelyard.cli.plan import render_table
from modelyard.cli.sources import add_config_arguments
from modelyard.config import ServerConfig, parse_size
from modelyard.deadlines import DeadlinePolicy
from modelyard.errors import ModelyardError
from modelyard.management.state import StateStore
from modelyard.observability import logs
from modelyard.observability.logs import LogFormat
from modelyard.planner.footprints import FootprintCache
from modelyard.server.defaults import (
    DEFAULT_GRPC_PORT,
    DEFAULT_MAX_IN_FLIGHT,
    DEFAULT_MAX_REQUEST_BYTES,
    DEFAULT_REQUEST_TIMEOUT_MS,
    DEFAULT_REST_PORT,
)
from modelyard.server.listen import ListenError, Protocol
from modelyard.server.options import ServerOptions

if TYPE_CHECKING:
    from modelyard.server.runtime import Server

log = logging.getLogger("modelyard")

DRAIN_TIMEOUT_S = 30.0
"""After SIGTERM/SIGINT, requests in flight get this long to finish."""
STOP_MARGIN_S = 4.5
"""Beyond the drain, the longest stop may take (unloads, workers exiting) before the workers are
killed and the process exits anyway: shutdown always ends within drain + 5 s."""


IGNORED_TF_SERVING_FLAGS = (
    "tensorflow_intra_op_parallelism",
    "tensorflow_inter_op_parallelism",
    "tensorflow_session_parallelism",
    "enable_model_warmup",
    "rest_api_num_threads",
    "grpc_channel_arguments",
    "grpc_max_threads",
    "per_process_gpu_memory_fraction",
    "monitoring_config_file",
    "platform_config_file",
    "allow_version_labels_for_unavailable_models",
    "flush_filesystem_caches",
    "saved_model_tags",
    "xla_cpu_compilation_enabled",
    "enable_signature_method_name_check",
)
"""TF Serving flags accepted so its command lines run unchanged, with a warning that they do
nothing here (threads, polling and warm-up are modelyard's own business, and GPU memory is
planned rather than fractioned)."""


class _IgnoredFlag(argparse.Action):
    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        ignored: list[str] = getattr(namespace, "ignored_tf_flags", [])
        namespace.ignored_tf_flags = [*ignored, self.dest]


def _milliseconds(text: str) -> int:
    """A deadline flag's value: whole milliseconds, 0 or more (0: no deadline)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected milliseconds (an integer), got {text!r}"
        ) from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected 0 (no deadline) or more ms, got {value}")
    return value


def _port(text: str) -> int:
    """A port flag's value: 0 (any free port) to 65535."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(
            f"expected a port from 0 (any free one) to 65535, got {value}"
        )
    return value


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected 1 or more, got {value}")
    return value


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def _log_level(text: str) -> str:
    level = text.upper()
    if level not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(
            f"expected one of {', '.join(LOG_LEVELS)} (any case), got {text!r}"
        )
    return level


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Plan where every model goes, load each on its device in a worker process, and serve "
        "them over REST (TF Serving /v1, KServe v2 /v2) and gRPC until SIGTERM or Ctrl-C. "
        "CONFIG is a modelyard YAML file or a TF Serving models.config; a TF Serving command "
        "line works unchanged. With no CONFIG it serves the bundled demo."
    )
    parser.epilog = (
        "examples:\n"
        "  modelyard serve                               # the demo, on 127.0.0.1:8501/8500\n"
        "  modelyard serve modelyard.yaml\n"
        "  modelyard serve --model_config_file=/models/models.config --overlay=gpus.yaml\n"
        "  modelyard serve --model_name=half --model_base_path=/models/half\n"
        "  modelyard serve modelyard.yaml --host 0.0.0.0  # listen on every interface\n\n"
        f"{exits.HELP_TEXT}"
    )
    parser.description = textwrap.fill(parser.description, 79)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    tf = add_config_arguments(
        parser, config_help="modelyard YAML or TF Serving models.config (default: the demo)"
    )
    tf.add_argument("--port", type=_port, default=DEFAULT_GRPC_PORT, help="gRPC port (8500)")
    tf.add_argument(
        "--rest_api_port",
        "--rest-api-port",
        type=_port,
        default=DEFAULT_REST_PORT,
        help="REST port (8501)",
    )
    tf.add_argument(
        "--file_system_poll_wait_seconds",
        "--file-system-poll-wait-seconds",
        type=float,
        default=None,
        help="seconds between polls of the base paths for new versions (default: the config's "
        "poll_interval_seconds, else 1; 0: look once at start)",
    )
    tf.add_argument(
        "--model_config_file_poll_wait_seconds",
        "--model-config-file-poll-wait-seconds",
        type=float,
        default=0.0,
        help="seconds between polls of the config file for changes (default 0: never)",
    )
    tf.add_argument(
        "--rest_api_timeout_in_ms",
        "--rest-api-timeout-in-ms",
        type=_milliseconds,
        default=None,
        help="deadline of a REST request, in ms (0: none); default: --request-timeout-ms",
    )
    for flag in IGNORED_TF_SERVING_FLAGS:
        tf.add_argument(
            f"--{flag}",
            action=_IgnoredFlag,
            nargs="?",
            default=argparse.SUPPRESS,
            help=argparse.SUPPRESS,
        )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1: this machine only)",
    )
    parser.add_argument(
        "--max-request-bytes",
        type=_size,
        default=DEFAULT_MAX_REQUEST_BYTES,
        help="largest request body accepted, e.g. 64MiB (default 64MiB)",
    )
    parser.add_argument(
        "--max-concurrent-requests",
        type=_positive,
        default=DEFAULT_MAX_IN_FLIGHT,
        help="inference requests served at once per device, over all protocols; more for a "
        f"full device get 503 / RESOURCE_EXHAUSTED at once (default {DEFAULT_MAX_IN_FLIGHT})",
    )
    parser.add_argument(
        "--request-timeout-ms",
        type=_milliseconds,
        default=DEFAULT_REQUEST_TIMEOUT_MS,
        help="deadline of every request, any protocol, in ms (0: none); a gRPC client's sooner "
        "deadline wins; past it: 504 / DEADLINE_EXCEEDED and queued work is dropped "
        f"(default {DEFAULT_REQUEST_TIMEOUT_MS})",
    )
    parser.add_argument(
        "--ports-file",
        type=Path,
        help="write the bound ports here as JSON once listening (for port 0)",
    )
    parser.add_argument(
        "--serve-what-fits",
        action="store_true",
        help="when the plan cannot place every model, serve those that fit instead of refusing",
    )
    parser.add_argument(
        "--management-token",
        default=None,
        help="turn the management API (load/unload/move/re-plan/labels) on; every call must "
        "send 'Authorization: Bearer TOKEN' (default: $MODELYARD_MANAGEMENT_TOKEN, else off). "
        "Prefer the environment variable: a token on the command line is visible in ps",
    )
    parser.add_argument(
        "--model-root",
        action="append",
        type=Path,
        default=None,
        metavar="DIR",
        help="a folder management calls may load models from (repeatable): a load's base_path "
        "(or a new one in a TF Serving config reload) must resolve, symlinks followed, under "
        "one of them, else 403. Default: the folder holding each configured model's "
        "base_path (its model repository)",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="where acknowledged management changes are kept across restarts (default: "
        "$MODELYARD_CACHE_DIR/state/<hash of the config path>)",
    )
    parser.add_argument(
        "--ray-address",
        default=None,
        help="serve over every node of this Ray cluster: auto, host:port or ray://host:port "
        "(overrides the config's cluster: address; needs modelyard[ray]; docs/cluster.md)",
    )
    parser.add_argument(
        "--log-level",
        type=_log_level,
        default="INFO",
        metavar="LEVEL",
        help=f"{', '.join(LOG_LEVELS)} (default INFO)",
    )
    parser.add_argument(
        "--log-format",
        choices=[f.value for f in LogFormat],
        default=LogFormat.TEXT.value,
        help="text (default) or json: one JSON object per line (time, level, logger, message, "
        "request_id)",
    )
    parser.add_argument(
        "--access-log",
        action="store_true",
        help="log one line per inference request, any protocol: request id, protocol, model, "
        "version, status, latency, bytes (logger modelyard.access)",
    )
    parser.add_argument(
        "--grpc-server",
        choices=("modelyard", "grpcio"),
        default="modelyard",
        help="the HTTP/2 server of the gRPC port: modelyard's own (default; unary calls on the "
        "event loop, a fraction of grpcio's CPU per call) or grpcio's (the one before, kept "
        "for a release in case a client needs it)",
    )
    parser.add_argument(
        "--otlp-endpoint",
        default=None,
        metavar="URL",
        help="export OpenTelemetry traces over OTLP/HTTP to URL, e.g. http://localhost:4318 "
        "(default: tracing off). Needs pip install 'modelyard[tracing]'",
    )
    parser.add_argument(
        "--no-metrics",
        dest="metrics",
        action="store_false",
        help="turn statistics and /metrics off (they cost a few microseconds per request)",
    )


def resolve_config(args: argparse.Namespace) -> tuple[ServerConfig, bool]:
    """The config the flags ask for, and whether it is the bundled demo (``sources``)."""
    return sources.resolve_config(args)


def run(args: argparse.Namespace) -> int:
    logs.configure(args.log_level, LogFormat(args.log_format), sys.stderr)
    for flag in getattr(args, "ignored_tf_flags", []):
        log.warning("ignoring TF Serving flag --%s: it has no effect in modelyard", flag)
    try:
        checked = sources.checked_config(args)
        for warning in checked.warnings:
            log.warning("%s", warning)
        options = server_options(args)
        from modelyard.server import eventloop, heap

        heap.keep_freed_memory()  # large bodies reuse freed memory, not fresh pages

        return eventloop.run(_serve(checked.config, options, args, checked.is_demo))
    except ListenError as exc:
        print(f"modelyard: {_listen_message(exc)}", file=sys.stderr)
        return exits.ExitCode.FAILURE
    except ModelyardError as exc:
        print(f"modelyard: {exc.message}", file=sys.stderr)
        return exits.ExitCode.BAD_INPUT
    except OSError as exc:
        print(f"modelyard: {exc}", file=sys.stderr)
        return exits.ExitCode.FAILURE


def _listen_message(exc: ListenError) -> str:
    """The bind failure, with the flag that chose the port and what to do."""
    flag = "--rest_api_port" if exc.protocol is Protocol.REST else "--port"
    if exc.port == 0:
        return f"{exc.message} (--host {exc.host}); check --host"
    return (
        f"{exc.message} ({flag} {exc.port}, --host {exc.host}); another process (another "
        f"modelyard or TF Serving?) may hold it: stop it, or choose another port with "
        f"{flag} PORT (0 picks a free one)"
    )


def server_options(args: argparse.Namespace) -> ServerOptions:
    """The ``ServerOptions`` the flags ask for."""
    return ServerOptions(
        host=args.host,
        rest_port=args.rest_api_port,
        grpc_port=args.port,
        max_request_bytes=args.max_request_bytes,
        max_concurrent_requests=args.max_concurrent_requests,
        deadline_policy=DeadlinePolicy(args.request_timeout_ms, args.rest_api_timeout_in_ms),
        management_token=args.management_token or os.environ.get("MODELYARD_MANAGEMENT_TOKEN"),
        model_roots=tuple(args.model_root) if args.model_root else None,
        state_store=StateStore(_state_path(args)),
        # What each worker measures after a load is preferred over the estimate next time.
        footprints=FootprintCache(),
        poll_interval_s=args.file_system_poll_wait_seconds,
        config_files=tuple(sources.watched_files(args)),
        read_config=lambda: resolve_config(args)[0],
        config_poll_s=args.model_config_file_poll_wait_seconds,
        access_log=args.access_log,
        metrics=args.metrics,
        otlp_endpoint=args.otlp_endpoint,
        grpc_server=args.grpc_server,
    )


async def _serve(
    file_config: ServerConfig, options: ServerOptions, args: argparse.Namespace, is_demo: bool
) -> int:
    from modelyard.server.runtime import Server  # the web and gRPC stacks load only to serve

    server = Server.from_config(file_config, options)
    plan = server.start_plan
    # Versions that cannot be read are in the table and start FAILED: a version's fault
    # is that version's, not a reason to refuse the rest (nor "a set that does not fit").
    print(render_table(plan), flush=True)
    if not plan.feasible:
        if not args.serve_what_fits:
            print(
                f"modelyard: refusing to load a set that does not fit:\n{plan.explanation}"
                "\n(--serve-what-fits serves the models that fit)",
                file=sys.stderr,
            )
            return exits.ExitCode.BAD_INPUT
        log.warning("serving only what fits: %s", plan.explanation)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    starting = asyncio.create_task(server.start())
    done, _ = await asyncio.wait(
        {starting, asyncio.create_task(stop.wait())}, return_when=asyncio.FIRST_COMPLETED
    )
    if starting not in done:  # signalled while loading
        starting.cancel()
        return await _stop(server, 0.0)
    starting.result()
    from modelyard.server import collector

    kept = collector.settle()  # start-up's objects out of every later collection's walk
    log.debug("garbage collector: %d start-up objects set aside", kept)
    if args.ports_file is not None:
        _write_ports(args.ports_file, server)
    print(_banner(server, is_demo), flush=True)
    await stop.wait()
    log.info("stopping: readiness is now false; finishing in-flight requests")
    return await _stop(server, DRAIN_TIMEOUT_S)


async def _stop(server: Server, drain_s: float) -> int:
    """Stop ``server`` within ``drain_s`` + ``STOP_MARGIN_S``; 0 when it stopped cleanly.

    A stuck worker cannot hold this up: the heartbeat kills it within seconds. Past the bound
    (a bug) the workers are killed, so none stays behind, and the exit status says so (1).
    """
    try:
        await asyncio.wait_for(server.stop(grace_seconds=drain_s), drain_s + STOP_MARGIN_S)
    except TimeoutError:
        log.error("stop did not finish within %.1f s; killing the workers", drain_s + STOP_MARGIN_S)
        server.kill_workers()
        return exits.ExitCode.FAILURE
    log.info("stopped")
    return exits.ExitCode.OK


def _state_path(args: argparse.Namespace) -> Path:
    """The management state file: in --state-dir, else one per config path in the cache."""
    if args.state_dir is not None:
        return Path(args.state_dir) / "state.json"
    given = args.config or args.model_config_file
    if given is not None:
        return StateStore.default_path(str(given.resolve()))
    identity = f"{args.model_name}:{args.model_base_path}"
    return StateStore.default_path(identity)


def _write_ports(path: Path, server: Server) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps({"rest": server.rest_port, "grpc": server.grpc_port}))
    os.replace(tmp, path)  # readers never see a half-written file


def _banner(server: Server, is_demo: bool) -> str:
    from modelyard.cli.banner import banner

    return banner(server, is_demo)
