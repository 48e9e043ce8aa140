"""The exit statuses of ``modelyard``, one table for every subcommand (docs/cli.md shows it).

- 0 ``OK``: ``serve`` stopped cleanly; ``plan``: every replica fits.
- 1 ``FAILURE``: something at run time failed: a port in use, a stop that overran, an
  internal error (a bug: the message says how to get the traceback).
- 2 ``BAD_INPUT``: the command line or the config is wrong, or the set cannot fit; nothing was
  loaded. The message names the flag, or the file (and line, where there is one), what was
  wrong and what to do.
- 3 ``UNREADABLE`` (``plan`` only): the rest fits, but some versions cannot be read (corrupt,
  truncated, empty, the wrong format); ``serve`` would start with them FAILED.

``argparse`` exits 2 on its own for a bad flag, which is why 2 is "bad input".
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    OK = 0
    FAILURE = 1
    BAD_INPUT = 2
    UNREADABLE = 3


HELP_TEXT = (
    "exit status: 0 ok; 1 a run-time failure (a port in use, an internal error); 2 a bad flag, "
    "a bad config, or a set that cannot fit (nothing loaded)"
)
"""The exit-status line every ``--help`` ends with (``plan`` adds its 3)."""
