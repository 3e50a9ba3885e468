"""Many requests: JSON Lines in, results in input order; a bad line never stops the rest."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import IO, Any

from ._errors import BadInputError, OpenSSLError, QredoOpenSSLError
from ._request import read_body
from ._run import map_in_threads
from ._sign import SignedRequest, Signer

BATCH_LIMIT = 256 * 1024 * 1024
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
        line,
        url,
        _string_field(doc, "method"),
        body.encode("utf-8") if body is not None else None,
        body_file,
        timestamp,
        nonce,
    )


def _sign_line(signer: Signer, line: int, raw: bytes) -> BatchItem:
    try:
        req = parse_batch_line(line, raw)
        body = req.body
        if req.body_file is not None:
            if req.body_file == "-":
                msg = "'body_file' cannot be standard input in a batch"
                raise BadInputError(msg)
            body = read_body(req.body_file)
        signed = signer.sign(
            req.url,
            body or b"",
            method=req.method,
            timestamp=req.timestamp,
            nonce=req.nonce,
            has_body=body is not None,
            body_file=req.body_file,
        )
    except QredoOpenSSLError as exc:
        return BatchItem(line, None, _at_line(line, exc))
    return BatchItem(line, signed, None)


def _at_line(line: int, exc: QredoOpenSSLError) -> QredoOpenSSLError:
    """The same error, its message prefixed with the line number (and OpenSSL's details kept)."""
    msg = f"line {line}: {exc}"
    if isinstance(exc, OpenSSLError):
        return OpenSSLError(msg, argv=exc.argv, returncode=exc.returncode, stderr=exc.stderr)
    return type(exc)(msg)


def read_batch(source: str, stdin: IO[bytes] | None = None) -> list[tuple[int, bytes]]:
    """The non-blank lines of a JSON Lines file (``-``: standard input) with their numbers."""
    data = read_body(source, stdin, BATCH_LIMIT, what="batch")
    return [
        (n, raw)
        for n, raw in enumerate(data.split(b"\n"), start=1)
        if raw.strip()  # a blank line (the last newline, say) is not a request
    ]


def sign_batch(
    signer: Signer,
    lines: Iterable[tuple[int, bytes] | bytes],
    *,
    jobs: int | None = None,
    on_item: Callable[[BatchItem], None] | None = None,
) -> list[BatchItem]:
    """Sign many requests (JSON Lines, see :func:`parse_batch_line`) in parallel.

    ``lines`` are raw lines, or ``(line_number, line)`` pairs as :func:`read_batch` gives.
    Results come back in input order, and ``on_item`` is called in input order as soon as
    each is ready, so output can stream. A bad line becomes an item with its ``error`` and
    does not stop the others. ``jobs`` defaults to the CPU count: each request is one
    ``openssl dgst`` process, which the pool keeps busy. On Ctrl-C or SIGTERM every
    OpenSSL child is killed before the interrupt propagates.
    """
    numbered = [
        item if isinstance(item, tuple) else (n, item) for n, item in enumerate(lines, start=1)
    ]
    if not numbered:
        return []
    stop = threading.Event()

    def one(line: int, raw: bytes) -> BatchItem:
        if stop.is_set():
            return BatchItem(line, None, QredoOpenSSLError(f"line {line}: cancelled"))
        return _sign_line(signer, line, raw)

    return map_in_threads(lambda nr: one(*nr), numbered, jobs=jobs, stop=stop, on_result=on_item)
