"""Many requests: JSON Lines in, results in input order; a bad line never stops the rest."""

from __future__ import annotations

import json
import os
import stat
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any, TypeVar

from ._errors import BadInputError, OpenSSLError, QredoOpenSSLError
from ._request import BODY_LIMIT, read_body
from ._run import map_in_threads
from ._sign import SignedRequest, Signer

if TYPE_CHECKING:
    from ._send import Sender, SendResult

T = TypeVar("T")
BATCH_LIMIT = 256 * 1024 * 1024
# Bodies read from files by all jobs together: at most this much at once (and one body over
# it alone), not jobs x BODY_LIMIT.
BODY_BUDGET = BODY_LIMIT
BATCH_KEYS = frozenset({"url", "method", "body", "body_file", "timestamp", "nonce"})


@dataclass(frozen=True)
class BatchRequest:
    """One parsed line of a batch file (line numbers count from 1)."""

    line: int
    url: str
    method: str | None = None
    body: bytes | None = None
    body_file: str | None = None
    timestamp: str | None = None
    nonce: str | None = None


@dataclass(frozen=True)
class BatchItem:
    """The outcome of one batch line: a signed request or the error that stopped it."""

    line: int
    result: SignedRequest | None
    error: QredoOpenSSLError | None

    def to_json(self) -> dict[str, Any]:
        """``{"line", ...signed request}`` or ``{"line", "error": {"code", "message"}}``."""
        if self.result is not None:
            return {"line": self.line, **self.result.to_json()}
        assert self.error is not None
        return {
            "line": self.line,
            "error": {"code": self.error.exit_code, "message": str(self.error)},
        }


def _string_field(doc: dict[str, Any], name: str) -> str | None:
    value = doc.get(name)
    if value is None or isinstance(value, str):
        return value
    if name == "timestamp" and isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    msg = f"{name!r} must be a string" + (" or an integer" if name == "timestamp" else "")
    raise BadInputError(msg)


def parse_batch_line(line: int, raw: bytes) -> BatchRequest:
    """Parse one JSON Lines request: ``{"url", "method"?, "body"?, "body_file"?,
    "timestamp"?, "nonce"?}``. ``body`` is text, signed as its UTF-8 bytes.

    Messages never quote the line: it may hold a body.
    """
    try:
        doc = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        msg = "not UTF-8"
        raise BadInputError(msg) from None
    except json.JSONDecodeError as exc:
        msg = f"not JSON: {exc.msg} at column {exc.colno}"
        raise BadInputError(msg) from None
    except RecursionError:
        msg = "not usable JSON: nested too deeply"
        raise BadInputError(msg) from None
    except ValueError as exc:  # Python 3.11+: a number of more than 4300 digits
        msg = f"not usable JSON: {exc}"
        raise BadInputError(msg) from None
    if not isinstance(doc, dict):
        msg = "not a JSON object"
        raise BadInputError(msg)
    unknown = sorted(set(doc) - BATCH_KEYS)
    if unknown:
        msg = f"unknown key {unknown[0]!r} (expected: {', '.join(sorted(BATCH_KEYS))})"
        raise BadInputError(msg)
    url = _string_field(doc, "url")
    if url is None:
        msg = "no 'url'"
        raise BadInputError(msg)
    body = _string_field(doc, "body")
    body_file = _string_field(doc, "body_file")
    if body is not None and body_file is not None:
        msg = "give 'body' or 'body_file', not both"
        raise BadInputError(msg)
    timestamp = _string_field(doc, "timestamp")
    nonce = _string_field(doc, "nonce")
    if timestamp is not None and nonce is not None:
        msg = "give 'timestamp' or 'nonce', not both"
        raise BadInputError(msg)
    return BatchRequest(
        line, url, _string_field(doc, "method"), _utf8(body, "body"), _path(body_file),
        timestamp, nonce,
    )  # fmt: skip


def _utf8(text: str | None, name: str) -> bytes | None:
    # JSON can carry a lone surrogate ("\ud800"): text that has no UTF-8 bytes to sign.
    try:
        return None if text is None else text.encode("utf-8")
    except UnicodeEncodeError:
        msg = f"{name!r} is not valid Unicode (a lone surrogate)"
        raise BadInputError(msg) from None


def _path(name: str | None) -> str | None:
    if name is None:
        return None
    if "\0" in name:
        msg = "'body_file' has a NUL character"
        raise BadInputError(msg)
    try:
        os.fsencode(name)
    except UnicodeEncodeError:
        msg = "'body_file' is not a file name this system can use (a lone surrogate)"
        raise BadInputError(msg) from None
    return name


class _Budget:
    """Bytes of bodies held at once by all jobs; one body larger than the whole waits alone."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.used = 0
        self._cond = threading.Condition()

    def take(self, n: int) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self.used == 0 or self.used + n <= self.total)
            self.used += n

    def give(self, n: int) -> None:
        with self._cond:
            self.used -= n
            self._cond.notify_all()


def _body_size(path: str) -> int:
    """What reading ``path`` will hold: its size (0 for what is not a regular file: the read
    refuses it at once)."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return 0  # the read itself will fail and say why
    return min(st.st_size, BODY_LIMIT + 1) if stat.S_ISREG(st.st_mode) else 0


def _at_line(line: int, exc: QredoOpenSSLError) -> QredoOpenSSLError:
    """The same error, its message prefixed with the line number (and OpenSSL's details kept)."""
    msg = f"line {line}: {exc}"
    if isinstance(exc, OpenSSLError):
        return OpenSSLError(msg, argv=exc.argv, returncode=exc.returncode, stderr=exc.stderr)
    return type(exc)(msg)


def batch_base(source: str) -> str | None:
    """Where a batch's relative ``body_file`` names are found: the batch file's folder.

    None for ``-`` (standard input): the current directory.
    """
    return None if source == "-" else os.path.dirname(source) or None


def read_batch(source: str, stdin: IO[bytes] | None = None) -> list[tuple[int, bytes]]:
    """The non-blank lines of a JSON Lines file (``-``: standard input) with their numbers."""
    data = read_body(source, stdin, BATCH_LIMIT, what="batch")
    return [
        (n, raw)
        for n, raw in enumerate(data.split(b"\n"), start=1)
        if raw.strip()  # a blank line (the last newline, say) is not a request
    ]


def each_line(
    lines: Iterable[tuple[int, bytes] | bytes],
    work: Callable[[int, BatchRequest, bytes | None, str | None], T],
    failed: Callable[[int, QredoOpenSSLError], T],
    *,
    jobs: int | None = None,
    on_item: Callable[[T], None] | None = None,
    base: str | None = None,
) -> list[T]:
    """``work(line, request, body, body_file)`` for each JSON Lines request, in parallel.

    The one batch loop of ``sign --batch`` and ``send --batch``. ``lines`` are raw lines or
    ``(line_number, line)`` pairs as :func:`read_batch` gives. Results come back in input
    order and ``on_item`` sees each in that order as soon as it is ready, so output can
    stream. Whatever a line holds, its failure is ``failed(line, error)`` in its place and
    never stops the others. A relative ``body_file`` is found in ``base`` (the batch file's
    folder; None: the current directory) and must be a regular file (a FIFO is that line's
    error, never waited on); the bodies all jobs hold at once stay within
    :data:`BODY_BUDGET` bytes. On Ctrl-C or SIGTERM every child is killed before the
    interrupt propagates.
    """
    numbered = [
        item if isinstance(item, tuple) else (n, item) for n, item in enumerate(lines, start=1)
    ]
    if not numbered:
        return []
    stop = threading.Event()
    budget = _Budget(BODY_BUDGET)

    def one(numbered_line: tuple[int, bytes]) -> T:
        line, raw = numbered_line
        if stop.is_set():
            return failed(line, QredoOpenSSLError(f"line {line}: cancelled"))
        held = 0
        try:
            req = parse_batch_line(line, raw)
            body, body_file = req.body, req.body_file
            if body_file is not None:
                if body_file == "-":
                    msg = "'body_file' cannot be standard input in a batch"
                    raise BadInputError(msg)
                body_file = os.path.join(base, body_file) if base else body_file
                held = _body_size(body_file)
                budget.take(held)
                # A regular file only, opened without blocking: a FIFO or a device is this
                # line's error at once, never a worker stuck where Ctrl-C cannot reach it.
                body = read_body(body_file, regular_only=True)
            return work(line, req, body, body_file)
        except QredoOpenSSLError as exc:
            return failed(line, _at_line(line, exc))
        except (ValueError, RecursionError, TypeError, OSError) as exc:
            # Whatever a line holds stays that line's error; the message never quotes the line.
            return failed(line, BadInputError(f"line {line}: {type(exc).__name__}"))
        finally:
            if held:
                budget.give(held)

    return map_in_threads(one, numbered, jobs=jobs, stop=stop, on_result=on_item)


def sign_batch(
    signer: Signer,
    lines: Iterable[tuple[int, bytes] | bytes],
    *,
    jobs: int | None = None,
    on_item: Callable[[BatchItem], None] | None = None,
    base: str | None = None,
) -> list[BatchItem]:
    """Sign many requests (JSON Lines, see :func:`parse_batch_line`) in parallel.

    As :func:`each_line` runs them; ``jobs`` defaults to the CPU count: each request is one
    ``openssl dgst`` process, which the pool keeps busy.
    """

    def sign(line: int, req: BatchRequest, body: bytes | None, body_file: str | None) -> BatchItem:
        signed = signer.sign(
            req.url, body or b"", method=req.method, timestamp=req.timestamp, nonce=req.nonce,
            has_body=body is not None, body_file=body_file,
        )  # fmt: skip
        return BatchItem(line, signed, None)

    def failed(line: int, error: QredoOpenSSLError) -> BatchItem:
        return BatchItem(line, None, error)

    return each_line(lines, sign, failed, jobs=jobs, on_item=on_item, base=base)


@dataclass(frozen=True)
class SendItem:
    """One batch line's outcome: a response, or the error that stopped it."""

    line: int
    result: SendResult | None
    error: QredoOpenSSLError | None = field(default=None)

    @property
    def exit_code(self) -> int:
        if self.error is not None:
            return self.error.exit_code
        assert self.result is not None
        return self.result.exit_code

    def to_json(self) -> dict[str, Any]:
        if self.result is not None:
            return {"line": self.line, **self.result.to_json()}
        assert self.error is not None
        return {"line": self.line,
                "error": {"code": self.error.exit_code, "message": str(self.error)}}  # fmt: skip


def send_batch(
    sender: Sender,
    lines: Iterable[tuple[int, bytes]],
    *,
    jobs: int | None = 1,
    on_item: Callable[[SendItem], None] | None = None,
    base: str | None = None,
) -> list[SendItem]:
    """Send JSON Lines requests, read as ``sign --batch`` reads them, in input order.

    Each is signed right before it is sent; ``jobs`` (default 1) run at once. A bad line is
    an item with its error and never stops the others; a relative ``body_file`` is found in
    ``base`` (see :func:`each_line`).
    """

    def send(line: int, req: BatchRequest, body: bytes | None, body_file: str | None) -> SendItem:
        result = sender.send(
            req.url, body, method=req.method, timestamp=req.timestamp, nonce=req.nonce,
            body_file=body_file,
        )  # fmt: skip
        return SendItem(line, result)

    def failed(line: int, error: QredoOpenSSLError) -> SendItem:
        return SendItem(line, None, error)

    return each_line(lines, send, failed, jobs=jobs or 1, on_item=on_item, base=base)
