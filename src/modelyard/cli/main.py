"""``modelyard serve [CONFIG]`` and ``modelyard plan CONFIG``.

TF Serving's own command line works too: ``modelyard --port=8500 --rest_api_port=8501
--model_config_file=...`` (no subcommand) means ``serve``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from modelyard import __version__
from modelyard.cli import plan, serve


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="modelyard",
        description="Plan where every model goes across this machine's devices, then serve "
        "them over the TF Serving and KServe v2 APIs.",
    )
    parser.add_argument("--version", action="version", version=f"modelyard {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve.add_arguments(
        commands.add_parser("serve", help="serve a config, a TF Serving models.config, or the demo")
    )
    plan.add_arguments(
        commands.add_parser("plan", help="print where each model would go; loads nothing")
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    # TF Serving is started with flags only; treat a bare flag list as `serve`.
    if args_list and args_list[0].startswith("--") and args_list[0] not in ("--help", "--version"):
        args_list.insert(0, "serve")
    parser = build_parser()
    args = parser.parse_args(args_list)
    if args.command == "serve":
        return serve.run(args)
    if args.command == "plan":
        return plan.run(args)
    parser.print_help()
    return 2
