"""The command-line contract of every entry point (console scripts, ``scripts/``, converters, the demo).

- ``--help`` explains the command and exits 0; success exits 0.
- A **usage error** (an unknown option, a value of the wrong form, options that do not go together) is
  argparse's: the usage, then ``<prog>: error: <what>``, exit 2.
- A **runtime error** (a missing or unreadable input, an output that exists without ``--overwrite``, data that
  do not fit) is one line ``<prog>: error: <what and what to do>`` on stderr, exit 1, no traceback.
- Outputs are named with ``-o/--output``; progress bars are switched off with ``--quiet``.

:func:`fail` prints a runtime error; :func:`add_quiet` and :func:`add_output` add the shared options (the
former spellings stay accepted, hidden from ``--help``).
"""
from __future__ import annotations

import argparse
import sys
from typing import Callable, NoReturn

EXIT_RUNTIME = 1
EXIT_USAGE = 2


class CommandFailed(SystemExit):
    """The ``SystemExit`` of a runtime error: exit status 1; ``str()`` is the error line (already printed), so
    a caller in the same process (a test) can read it."""

    def __init__(self, line: str):
        super().__init__(EXIT_RUNTIME)
        self.line = line

    def __str__(self) -> str:
        return self.line


def fail(prog: str, message: str) -> NoReturn:
    """A runtime error: ``<prog>: error: <message>`` on stderr (one line), exit 1."""
    line = f"{prog}: error: {' '.join(str(message).split())}"
    print(line, file=sys.stderr)
    raise CommandFailed(line)


def fail_step(prog: str, error: BaseException) -> NoReturn:
    """A failed step of a pipeline command (demo, benchmark): the step's own output and log go first, so the
    error line (the message's first line) stays the last line, exit 1."""
    lines = str(error).splitlines()
    if len(lines) > 1:
        print("\n".join(lines[1:]), file=sys.stderr)
    fail(prog, lines[0] if lines else type(error).__name__)


def run_reporting(prog: str, body: Callable[[], None], errors: tuple[type[BaseException], ...] = ()) -> None:
    """``body()``; an error of ``errors`` (and any ``OSError``: a missing or unreadable input, a full disk) ends
    the command as a runtime error (:func:`fail`), naming what the error names."""
    try:
        body()
    except (*errors, OSError) as e:
        fail(prog, str(e) or type(e).__name__)


def add_quiet(parser: argparse.ArgumentParser, what: str = "progress bars") -> None:
    """``-q/--quiet`` (``--no-progress`` accepted as before)."""
    parser.add_argument("-q", "--quiet", action="store_true", help=f"no {what}")
    parser.add_argument("--no-progress", dest="quiet", action="store_true", help=argparse.SUPPRESS)


def add_output(parser: argparse.ArgumentParser, *old: str, required: bool = False, **kwargs) -> None:
    """``-o/--output`` (``old`` spellings accepted as before, hidden from ``--help``). A required output is
    checked by :func:`parse_args` (argparse's own check would not count the old spellings)."""
    parser.add_argument("-o", "--output", **kwargs)
    for spelling in old:
        parser.add_argument(spelling, dest="output", help=argparse.SUPPRESS,
                            **{k: v for k, v in kwargs.items() if k in ("type", "metavar")})
    if required:
        parser.set_defaults(_output_required=True)


def parse_args(parser: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    """``parser.parse_args(argv)`` plus the contract's checks (a required ``-o/--output`` given)."""
    args = parser.parse_args(argv)
    if getattr(args, "_output_required", False) and getattr(args, "output", None) is None:
        parser.error("the following arguments are required: -o/--output")
    return args
