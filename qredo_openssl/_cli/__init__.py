"""The ``qredo-openssl`` command line: parsing, and the one place errors become exit codes.

Commands live in modules by group (:data:`GROUPS`: ``keys``, ``checks``, ``requests``, ``send``,
``rotate``); each registers its parsers and handlers, renders its results (text or JSON) and
leaves the work to the library. They import ``_base`` and ``_render``, never each other: a run
loads only its command's module. Importing this package must stay cheap: ``--version`` and
``--help`` never load ``sh`` or ``rich``.
"""

from __future__ import annotations

import argparse
import importlib
import math
import sys
from collections.abc import Sequence

from .._defaults import DEFAULT_TIMEOUT
from .._errors import EXIT_INTERRUPTED, Interrupted, QredoOpenSSLError, UsageError
from .._ui import Output
from .._version import __version__
from ._base import Command, Handler, Parser, common, error_message, with_fix

# The command modules, in the order of the help, and the commands each registers. A run
# imports and builds only its command's module: each costs milliseconds at every start.
GROUPS: dict[str, tuple[str, ...]] = {
    "keys": ("keygen", "pubkey", "convert", "apikey"),
    "checks": ("check", "doctor"),
    "requests": ("sign", "verify"),
    "send": ("send",),
    "rotate": ("rotate",),
}
_HELP = ("-h", "--help")


class _VersionAsked(Exception):
    """``--version`` was given: main() prints it, as text or (with --json) as JSON."""


class _Version(argparse.Action):
    def __call__(self, *args: object, **kwargs: object) -> None:
        raise _VersionAsked


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, Handler]]:
    """The parser, and the handler of each command."""
    parser, command = _build(tuple(GROUPS))
    return parser, command.handlers


def _groups_for(argv: Sequence[str]) -> Sequence[str]:
    """The module of the command in ``argv``; all of them for the help or no known command.

    A guess: an option value before the command that is also a command's name can mislead
    it; main() then parses again with every command.
    """
    for arg in argv:
        if arg in _HELP or arg == "--" or (arg[:1] == "-" and arg[1:2] != "-" and "h" in arg):
            break  # the help (-h, or -qh: short flags together) lists every command
        if arg == "--version":
            return ()
        group = next((g for g, names in GROUPS.items() if arg in names), None)
        if group is not None:
            return (group,)
    return tuple(GROUPS)


def _build(groups: Sequence[str]) -> tuple[argparse.ArgumentParser, Command]:
    shared = common()
    parser = Parser(
        prog="qredo-openssl",
        description="Make, check and use Qredo Partner API keys with the system's OpenSSL.",
        parents=[shared],
    )
    parser.add_argument(
        "--version", action=_Version, nargs=0, help="show the version (with --json: as JSON)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    command = Command(sub, shared)
    for group in groups:
        importlib.import_module(f"{__name__}.{group}").register(command)
    return parser, command


def _named(exc: UsageError, command: str) -> UsageError:
    """A usage error found by a command's handler, named with the command as argparse's are."""
    msg = str(exc)
    if msg.startswith("qredo-openssl "):
        return exc
    if not msg.startswith((f"{command}:", f"{command} ")):
        msg = f"{command}: {msg}"
    return UsageError(f"qredo-openssl {msg}")


def _unrecognized(command: Command, name: str | None, extra: Sequence[str]) -> UsageError:
    """The first unknown argument, named with its command and the nearest option there."""
    import difflib

    sub = command.parsers.get(name or "")
    prog = sub.prog if sub is not None else "qredo-openssl"
    first = extra[0]
    msg = f"{prog}: unrecognized argument: {first}"
    if first.startswith("-") and sub is not None:
        options = [o for a in sub._actions for o in a.option_strings]
        close = difflib.get_close_matches(first.split("=", 1)[0], options, n=1)
        if close:
            msg += f"; did you mean {close[0]}?"
    elif sub is not None and not first.startswith("-"):
        msg += " (one DIR only)"
    return UsageError(msg)


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
        groups = _groups_for(argv)
        parser, command = _build(groups)
        try:
            args, extra = parser.parse_known_args(argv)
        except UsageError:
            if len(groups) == len(GROUPS):
                raise
            parser, command = _build(tuple(GROUPS))  # the guess was wrong, or the error names all
            args, extra = parser.parse_known_args(argv)
        if extra:
            raise _unrecognized(command, getattr(args, "command", None), extra)
        handlers = command.handlers
        out.json_mode = getattr(args, "json", False)
        out.quiet = getattr(args, "quiet", False)
        args.timeout = getattr(args, "timeout", DEFAULT_TIMEOUT)
        if not math.isfinite(args.timeout) or args.timeout <= 0:
            msg = f"qredo-openssl {args.command}: --timeout must be a positive number of seconds"
            raise UsageError(msg)
        try:
            return handlers[args.command](args, out)
        except UsageError as exc:
            raise _named(exc, args.command) from None
    except _VersionAsked:
        if out.json_mode:
            out.json({"version": __version__})
        else:
            out.data(f"qredo-openssl {__version__}")
        return 0
    except QredoOpenSSLError as exc:
        out.error(exc.exit_code, error_message(exc), exc.fix)
        return exc.exit_code
    except (KeyboardInterrupt, Interrupted) as exc:
        # Claim nothing about files: a command that had finished writing keeps what it wrote,
        # unless the step interrupted said what it left (an Interrupted with a message).
        said = str(exc) if isinstance(exc, Interrupted) else ""
        fix = exc.fix if isinstance(exc, Interrupted) else None
        msg = f"interrupted; {said}" if said else "interrupted"
        out.error(EXIT_INTERRUPTED, with_fix(msg, fix), fix)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return 1
    except OSError as exc:  # a full disk, a closed stdout...: one line, not a traceback
        where = f": {exc.filename}" if exc.filename else ""
        out.error(1, f"{exc.strerror or exc}{where}")
        return 1
