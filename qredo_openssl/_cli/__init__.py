"""The ``qredo-openssl`` command line: parsing, and the one place errors become exit codes.

Commands live in modules by group (``keys``, ``requests``); each registers its parsers and
handlers, renders its results (text or JSON) and leaves the work to the library. Importing this
package must stay cheap: ``--version`` and ``--help`` never load ``sh`` or ``rich``.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence

from .._defaults import DEFAULT_TIMEOUT
from .._errors import Interrupted, QredoOpenSSLError, UsageError
from .._ui import Output
from .._version import __version__
from . import checks, keys, requests, rotate, send
from ._base import Command, Handler, Parser, common

EXIT_INTERRUPTED = 130
GROUPS = (keys, checks, requests, send, rotate)


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, Handler]]:
    """The parser, and the handler of each command."""
    shared = common()
    parser = Parser(
        prog="qredo-openssl",
        description="Make, check and use Qredo Partner API keys with the system's OpenSSL.",
        parents=[shared],
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    command = Command(sub, shared)
    for group in GROUPS:
        group.register(command)
    return parser, command.handlers


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI in-process; return the exit code (docs/contract.md: 0 to 6, 130).

    Signal handlers and the core limit are the console script's (:mod:`._console`), so an
    in-process caller keeps its own.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    # Until the parser has spoken (a usage error is reported in JSON too), guess the modes.
    out = Output(
        json_mode=any(a == "--json" or a.startswith("--json=") for a in argv),
        quiet="-q" in argv or "--quiet" in argv,
    )
    try:
        parser, handlers = build_parser()
        args = parser.parse_args(argv)
        out.json_mode = getattr(args, "json", False)
        out.quiet = getattr(args, "quiet", False)
        args.timeout = getattr(args, "timeout", DEFAULT_TIMEOUT)
        if not math.isfinite(args.timeout) or args.timeout <= 0:
            raise UsageError("--timeout must be a positive number of seconds")
        return handlers[args.command](args, out)
    except QredoOpenSSLError as exc:
        out.error(exc.exit_code, str(exc))
        return exc.exit_code
    except (KeyboardInterrupt, Interrupted):
        out.error(EXIT_INTERRUPTED, "interrupted; nothing was kept")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return 1
    except OSError as exc:  # a full disk, a closed stdout...: one line, not a traceback
        where = f": {exc.filename}" if exc.filename else ""
        out.error(1, f"{exc.strerror or exc}{where}")
        return 1
