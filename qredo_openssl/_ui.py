"""Terminal output: data to stdout, everything else to stderr; rich only on a terminal.

``rich`` costs tens of milliseconds to import, so it is imported only when a terminal (or
FORCE_COLOR) asks for it. JSON never goes through rich: it wraps lines and reads ``[x]`` as
markup.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import sys
from collections.abc import Mapping, Sequence
from typing import IO, Any

STYLES = {"ok": "green", "warn": "yellow", "fail": "bold red", "skip": "dim"}


def _write(text: str) -> None:
    if sys.stdout is None:  # started with stdout closed
        raise OSError(errno.EBADF, "standard output is closed")
    try:
        sys.stdout.write(text)
    except UnicodeEncodeError:
        # A file name that is not in the locale's encoding (``$'d\xff'`` under a strict UTF-8
        # stdout): write its own bytes back, as the shell would show them.
        _write_bytes(text)
    sys.stdout.flush()


def _write_bytes(text: str) -> None:
    encoding = sys.stdout.encoding or "utf-8"
    try:
        data = text.encode(encoding, "surrogateescape")
    except UnicodeEncodeError:
        data = text.encode(encoding, "backslashreplace")
    buffer = getattr(sys.stdout, "buffer", None)
    if buffer is None:
        sys.stdout.write(data.decode(encoding, "backslashreplace"))
        return
    sys.stdout.flush()
    buffer.write(data)


def wants_rich(stream: IO[str], environ: Mapping[str, str]) -> bool:
    """Draw with rich on a terminal or when FORCE_COLOR asks; rich itself honours NO_COLOR."""
    if environ.get("FORCE_COLOR"):
        return True
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class Output:
    """Where the CLI's words go. In ``--json`` mode stdout carries exactly one JSON document."""

    def __init__(self, *, json_mode: bool = False, quiet: bool = False) -> None:
        self.json_mode = json_mode
        self.quiet = quiet
        self._console: Any = None

    @property
    def console(self) -> Any:
        """A rich Console on stderr, or None when stderr is not a terminal."""
        if self._console is None and wants_rich(sys.stderr, os.environ):
            from rich.console import Console

            self._console = Console(stderr=True, highlight=False)
        return self._console

    def data(self, text: str) -> None:
        if not self.json_mode:
            _write(text if text.endswith("\n") else text + "\n")

    def json(self, doc: Any) -> None:
        _write(json.dumps(doc, indent=2) + "\n")

    def _say(self, text: str, style: str | None = None, prefix: str = "") -> None:
        text = printable(text)
        console = self.console
        if console is None:
            sys.stderr.write(f"{prefix}{text}\n")
            sys.stderr.flush()
            return
        from rich.text import Text

        line = Text(prefix, style=style or "") if prefix else Text()
        line.append(text, style=None if prefix else style)
        console.print(line, soft_wrap=True)

    def info(self, text: str, style: str | None = None) -> None:
        if not self.quiet:
            self._say(text, style)

    def warn(self, text: str) -> None:
        if not self.quiet:  # -q: data and errors only
            self._say(text, "yellow", "warning: ")

    def problem(self, text: str) -> None:
        """A failure that is not the command's own error (one DIR of many, failed checks).

        On stderr even with ``-q``; never JSON (the command's document says it).
        """
        self._say(text, "bold red", "error: ")

    def error(self, code: int, text: str, fix: Sequence[str] | None = None) -> None:
        """The command's error; ``fix`` (argv, already shown in ``text``) is a JSON field too."""
        if self.json_mode:
            doc: dict[str, Any] = {"code": code, "message": text}
            if fix:
                doc["fix"] = list(fix)
            with contextlib.suppress(OSError):  # the error may be that stdout is unwritable
                self.json({"error": doc})
        self._say(text, "bold red", "error: ")

    def table(self, rows: Sequence[tuple[str, str, str]], headers: tuple[str, str, str]) -> None:
        """Findings-style rows on stdout: a rich table on a terminal, aligned text otherwise."""
        if wants_rich(sys.stdout, os.environ):
            from rich.console import Console
            from rich.table import Table

            table = Table(*headers, highlight=False)
            for status, name, message in rows:
                table.add_row(f"[{STYLES.get(status, '')}]{status}[/]", name, _plain(message))
            Console(highlight=False).print(table)
            return
        width = max([len(r[1]) for r in rows] + [len(headers[1])])
        _write("".join(f"{s:<5} {n:<{width}} {printable(m)}\n" for s, n, m in rows))


def printable(text: str) -> str:
    """Escape control characters (from file names, key ids...) so they show, not act."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _plain(text: str) -> Any:
    from rich.text import Text

    return Text(printable(text))
