"""What every command shares: the parser class, global and path options, OpenSSL, JSON bits."""

from __future__ import annotations

import argparse
import re
import shlex
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

import qredo_openssl as q

from .._defaults import DEFAULT_TIMEOUT
from .._errors import QredoOpenSSLError, UsageError
from .._ui import Output

if TYPE_CHECKING:
    from .._openssl import TraditionalDecision
    from .._pkcs11 import Pkcs11Options

Handler = Callable[[argparse.Namespace, Output], int]


class Command:
    """What ``register(command)`` of a command module is given: adds one subcommand.

    ``command(name, help, handler)`` returns the subcommand's parser with DIR (``many``: any
    number of DIRs) and the path options already added; ``handler`` runs it.
    """

    def __init__(
        self,
        sub: Any,
        shared: argparse.ArgumentParser,
        prefix: str = "",
        handlers: dict[str, Handler] | None = None,
        parsers: dict[str, argparse.ArgumentParser] | None = None,
    ) -> None:
        self.sub = sub
        self.shared = shared
        self.prefix = prefix  # "rotate " for the subcommands of a group
        self.handlers: dict[str, Handler] = {} if handlers is None else handlers
        self.parsers: dict[str, argparse.ArgumentParser] = {} if parsers is None else parsers

    def __call__(
        self,
        name: str,
        help_: str,
        handler: Handler,
        *,
        many: bool = False,
        examples: Sequence[str] = (),
        exits: str = "",
        usage: str | None = None,
    ) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = self.sub.add_parser(
            name, help=help_, description=help_, parents=[self.shared], usage=usage,
            epilog=help_epilog(examples, exits),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )  # fmt: skip
        if many:
            p.add_argument("dirs", nargs="*", metavar="DIR", help="key directories (default: .)")
        else:
            p.add_argument("dir", nargs="?", default=".", metavar="DIR", help="default: .")
        paths_options(p)
        if self.prefix:  # the deepest parser's default wins: args.command is "rotate start"
            p.set_defaults(command=self.prefix + name)
        self.handlers[self.prefix + name] = handler
        self.parsers[self.prefix + name] = p
        return p

    def group(self, name: str, help_: str) -> tuple[Command, argparse.ArgumentParser]:
        """A command with subcommands (``rotate start``): their registrar, and its parser."""
        p: argparse.ArgumentParser = self.sub.add_parser(
            name, help=help_, description=help_, parents=[self.shared]
        )
        sub = p.add_subparsers(dest=f"{name}_command", metavar="SUBCOMMAND", parser_class=Parser)
        sub.required = True
        return Command(sub, self.shared, f"{self.prefix}{name} ", self.handlers, self.parsers), p


def help_epilog(examples: Sequence[str], exits: str) -> str | None:
    """What ends every command's --help: examples, then its exit codes."""
    parts = []
    if examples:
        parts.append("examples:\n" + "\n".join(f"  {e}" for e in examples))
    if exits:
        parts.append(f"exit codes: {exits}; 2 usage error; 130 interrupted")
    return "\n\n".join(parts) or None


class Parser(argparse.ArgumentParser):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # "--jso" must not pass for "--json": the mode is decided before parsing
        kwargs["allow_abbrev"] = False
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message}{_nearest_choice(message)}")


def _nearest_choice(message: str) -> str:
    """``; did you mean keygen?`` for argparse's "invalid choice: 'kegen' (choose from ...)"."""
    m = re.search(r"invalid choice: '?([^' ]*)'? \(choose from (.*)\)", message)
    if not m:
        return ""
    import difflib

    choices = [c.strip().strip("'") for c in m.group(2).split(",")]
    close = difflib.get_close_matches(m.group(1), choices, n=1)
    return f"; did you mean {close[0]}?" if close else ""


def common() -> Parser:
    # Global options are accepted before or after the command; SUPPRESS keeps the
    # subcommand's parser from resetting a value given before the command.
    p = Parser(add_help=False)
    s = argparse.SUPPRESS
    p.add_argument("--openssl", metavar="PATH", default=s, help="the OpenSSL binary to use")
    p.add_argument("--json", action="store_true", default=s, help="one JSON document on stdout")
    p.add_argument("-q", "--quiet", action="store_true", default=s, help="only data and errors")
    p.add_argument(
        "--timeout", type=float, metavar="SECONDS", default=s,
        help=f"kill an OpenSSL command after this long (default {DEFAULT_TIMEOUT:g})",
    )  # fmt: skip
    return p


def paths_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--private", metavar="FILE", help="private key path (default DIR/private.pem)")
    p.add_argument("--public", metavar="FILE", help="public key path (default DIR/public.pem)")
    p.add_argument("--apikey", metavar="FILE", help="API key path (default DIR/apikey)")


def dirs_of(args: argparse.Namespace) -> list[str]:
    """The DIRs of a many-DIR command (default: ``.``); the single-file overrides take one."""
    dirs: list[str] = args.dirs or ["."]
    if len(dirs) > 1 and (args.private or args.public or args.apikey):
        msg = "--private/--public/--apikey name single files: give one DIR with them"
        raise UsageError(msg)
    return dirs


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1 (``-j 0`` would run nothing)."""
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        msg = f"{text!r} is not a whole number of at least 1"
        raise argparse.ArgumentTypeError(msg)
    return n


def jobs_option(p: argparse.ArgumentParser, help_: str) -> None:
    p.add_argument("-j", "--jobs", type=positive_int, metavar="N", help=help_)


def traditional_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--traditional", choices=("auto", "always", "never"), default="auto",
        help="pass -traditional to OpenSSL: auto (OpenSSL >= 3 only), always or never",
    )  # fmt: skip


def pkcs11_options(p: argparse.ArgumentParser) -> None:
    """Options for a key in a PKCS#11 token (``DIR/private.uri``)."""
    g = p.add_argument_group("PKCS#11 token key (DIR/private.uri)")
    g.add_argument("--pkcs11-module", metavar="PATH",
                   help="PKCS#11 module (default $QREDO_PKCS11_MODULE, else the p11-kit proxy)")
    g.add_argument("--pkcs11-tool", metavar="PATH",
                   help="OpenSC pkcs11-tool (default $QREDO_PKCS11_TOOL, else PATH)")
    g.add_argument("--pkcs11-route", choices=("engine", "provider"),
                   help="how OpenSSL reaches the token (default: the engine when present)")
    g.add_argument("--pin-file", metavar="FILE",
                   help="read the token PIN from FILE (default $QREDO_PKCS11_PIN)")  # fmt: skip


def api_base_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--api-base", metavar="URL",
        help="base for a path URL such as /company (default: $QREDO_API_BASE, DIR/api-base, "
        "or https://api.qredo.network/api/v1/p)",
    )  # fmt: skip


def send_options(p: argparse.ArgumentParser) -> None:
    """The options ``doctor`` shares with ``send``: which curl, which API base."""
    p.add_argument("--curl", metavar="PATH", help="the curl binary to use ($QREDO_CURL)")
    api_base_option(p)


def pkcs11_config(args: argparse.Namespace) -> Pkcs11Options | None:
    """The PKCS#11 options given; None when none was (the defaults, and no import of
    :mod:`.._pkcs11`, which a PEM pair never needs)."""
    given = [getattr(args, name, None)
             for name in ("pkcs11_module", "pkcs11_tool", "pkcs11_route", "pin_file")]  # fmt: skip
    if not any(given):
        return None
    from .._pkcs11 import Pkcs11Options

    return Pkcs11Options(*given)


def key_paths(args: argparse.Namespace, directory: str) -> q.KeyPaths:
    return q.KeyPaths.in_dir(
        directory, private=args.private, public=args.public, apikey=args.apikey
    )


def get_openssl(args: argparse.Namespace, *, lazy: bool = False) -> q.OpenSSL:
    """The OpenSSL of ``--openssl``; ``lazy``: its version read on first use."""
    return q.detect_openssl(getattr(args, "openssl", None), timeout=args.timeout, lazy=lazy)


def openssl_doc(openssl: q.OpenSSL, decision: TraditionalDecision | None) -> dict[str, Any]:
    v = openssl.version
    doc: dict[str, Any] = {
        "path": openssl.path,
        "version": v.number or None,
        "flavour": v.flavour,
        "major": v.major,
        "minor": v.minor,
        "patch": v.patch,
        "letter": v.letter,
        "raw": v.raw,
    }
    if decision is not None:
        doc["traditional"] = {"use": decision.use, "reason": decision.reason}
    return doc


def describe(openssl: q.OpenSSL) -> str:
    v = openssl.version
    name = f"{v.flavour} {v.number}" if v.number else f"unrecognised ({v.raw!r})"
    return f"{name} at {openssl.path}"


def with_fix(message: str, fix: Sequence[str] | None) -> str:
    """A message and the command that fixes it, as a line that runs when pasted."""
    return f"{message}; run: {shlex.join(fix)}" if fix else message


def error_message(exc: QredoOpenSSLError) -> str:
    return with_fix(str(exc), exc.fix)


def error_doc(exc: QredoOpenSSLError) -> dict[str, Any]:
    """``{"code", "message"}``, and ``"fix"`` (argv) when the error has one."""
    fix = {"fix": list(exc.fix)} if exc.fix else {}
    return {"code": exc.exit_code, "message": error_message(exc), **fix}


def findings_doc(findings: Sequence[q.Finding]) -> list[dict[str, Any]]:
    """Findings as JSON: ``{"name", "status", "message"}``, the fix hint in the message, and
    ``"fix"`` (argv) for a finding that has one."""
    return [
        {
            "name": f.name,
            "status": f.status,
            "message": with_fix(f.message, f.fix),
            **({"fix": list(f.fix)} if f.fix else {}),
        }
        for f in findings
    ]
