"""``modelyard serve [CONFIG]`` and ``modelyard plan CONFIG``.

TF Serving's own command line works too: ``modelyard --port=8500 --rest_api_port=8501
--model_config_file=...`` (no subcommand) means ``serve``.

What a user can cause is answered with a message and an exit status (``modelyard.cli.exits``),
never a traceback: a flag a subcommand does not know gets that subcommand's usage and the
closest flag it has; an error nobody foresaw (a bug) is one line that says so, with the
traceback only under ``MODELYARD_TRACEBACK=1``.
"""

from __future__ import annotations

import argparse
import difflib
import os
import sys
import traceback
from collections.abc import Sequence

from modelyard import __version__
from modelyard.cli import exits, plan, serve

TRACEBACK_ENV = "MODELYARD_TRACEBACK"


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The top-level parser, and each subcommand's parser by name."""
    parser = argparse.ArgumentParser(
        prog="modelyard",
        description="Plan where every model goes across this machine's devices, then serve "
        "them over the TF Serving and KServe v2 APIs.",
        epilog="examples:\n"
        "  modelyard serve                       # the bundled demo\n"
        "  modelyard plan modelyard.yaml         # where each model would go; loads nothing\n"
        "  modelyard serve modelyard.yaml\n"
        "  modelyard --port=8500 --rest_api_port=8501 --model_config_file=models.config\n\n"
        f"{exits.HELP_TEXT}\n"
        "`modelyard serve --help` and `modelyard plan --help` tell more.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"modelyard {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers = {
        "serve": commands.add_parser(
            "serve", help="serve a config, a TF Serving models.config, or the demo"
        ),
        "plan": commands.add_parser("plan", help="print where each model would go; loads nothing"),
    }
    serve.add_arguments(subparsers["serve"])
    plan.add_arguments(subparsers["plan"])
    return parser, subparsers


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    # TF Serving is started with flags only; treat a bare flag list as `serve`.
    if args_list and args_list[0].startswith("--") and args_list[0] not in ("--help", "--version"):
        args_list.insert(0, "serve")
    parser, subparsers = build_parser()
    args, unknown = parser.parse_known_args(args_list)
    if args.command is None:
        parser.print_help(sys.stderr)
        return exits.ExitCode.BAD_INPUT
    if unknown:
        # argparse would report these with the top-level usage; the subcommand's is the help.
        sub = subparsers[args.command]
        sub.error(_unknown_message(sub, unknown))
    try:
        if args.command == "serve":
            return serve.run(args)
        return plan.run(args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a bug: one line, not a traceback, unless asked for
        if os.environ.get(TRACEBACK_ENV):
            traceback.print_exc()
        print(
            f"modelyard {args.command}: internal error: {type(exc).__name__}: {exc}\n"
            f"This is a bug in modelyard. {TRACEBACK_ENV}=1 shows the traceback.",
            file=sys.stderr,
        )
        return exits.ExitCode.FAILURE


def _unknown_message(sub: argparse.ArgumentParser, unknown: list[str]) -> str:
    """``unrecognized arguments: ...``, with the closest flag for the first unknown flag."""
    message = f"unrecognized arguments: {' '.join(unknown)}"
    flags = [f for action in sub._actions for f in action.option_strings if f.startswith("--")]
    first = next((u.split("=", 1)[0] for u in unknown if u.startswith("-")), None)
    if first is not None:
        close = difflib.get_close_matches(first, flags, n=2, cutoff=0.6)
        if close:
            message += f" (did you mean {' or '.join(close)}?)"
    return message
