"""Signing and verifying Partner API requests with the system OpenSSL.

Qredo's reference client signs ``sha256(timestamp + url + body)`` with RSA PKCS#1 v1.5 and
sends the signature as ``x-sign``, URL-safe Base64 without padding. Here the signature is
made by ``openssl dgst -sha256 -sign private.pem`` and checked by ``openssl dgst -sha256
-verify public.pem``: the payload goes in on stdin and the key by its path, so neither the
payload (which holds the body) nor the API key ever reaches a child's argv.
"""

from __future__ import annotations

import base64
import json
import os
import re
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import IO, Any
from urllib.parse import urlsplit

from ._apikey import load_apikey
from ._checks import RSA_OID, PemBlock, frame_pem
from ._errors import BadInputError, OpenSSLError, QredoOpenSSLError
from ._files import READ_LIMIT, KeyPaths, private_tempdir, read_bounded
from ._openssl import OpenSSL
from ._run import headline, map_in_threads

BODY_LIMIT = 64 * 1024 * 1024  # Partner API bodies are small JSON; this only stops /dev/zero
BATCH_LIMIT = 256 * 1024 * 1024
BATCH_KEYS = frozenset({"url", "method", "body", "body_file", "timestamp", "nonce"})

_METHOD_RE = re.compile(r"[A-Za-z]{1,32}")
_TIMESTAMP_RE = re.compile(r"[0-9]{1,20}")
_NONCE_RE = re.compile(r"[\x21-\x7e]{1,256}")  # visible ASCII: it travels in a header
_URL_CHARS_RE = re.compile(r"[\x21-\x7e]+")
_X_SIGN_RE = re.compile(r"[A-Za-z0-9_-]*")


def build_payload(
    url: str, body: bytes = b"", *, timestamp: str | None = None, nonce: str | None = None
) -> bytes:
    """The bytes Qredo signs: the timestamp (or nonce), the URL, the body, concatenated as is.

    Exactly one of ``timestamp`` and ``nonce`` must be given. The body is not re-encoded and
    JSON is not reformatted: one changed byte (a CRLF, a space) changes the signature.
    """
    if (timestamp is None) == (nonce is None):
        msg = "give exactly one of timestamp and nonce"
        raise ValueError(msg)
    stamp = timestamp if timestamp is not None else nonce
    assert stamp is not None  # for mypy: exactly one is set
    return stamp.encode("utf-8") + url.encode("utf-8") + body


def encode_signature(signature: bytes) -> str:
    """``x-sign``: URL-safe Base64 without padding (Go's ``base64.RawURLEncoding``)."""
    return base64.urlsafe_b64encode(signature).rstrip(b"=").decode("ascii")


def decode_signature(x_sign: str) -> bytes:
    """Decode an ``x-sign`` value strictly, as the server does: URL-safe alphabet, no padding.

    Raises :class:`BadInputError` saying what is wrong (standard alphabet, padding, length).
    """
    if not x_sign:
        msg = "the signature is empty"
        raise BadInputError(msg)
    if "=" in x_sign:
        msg = "the signature has '=' padding; x-sign is URL-safe Base64 without padding"
        raise BadInputError(msg)
    if set(x_sign) & set("+/"):
        msg = "the signature uses the standard Base64 alphabet (+/); x-sign is URL-safe (-_)"
        raise BadInputError(msg)
    if not _X_SIGN_RE.fullmatch(x_sign) or len(x_sign) % 4 == 1:
        msg = "the signature is not URL-safe Base64"
        raise BadInputError(msg)
    return base64.urlsafe_b64decode(x_sign + "=" * (-len(x_sign) % 4))  # valid: checked above


def check_url(url: str) -> str:
    """Return ``url`` if it is an absolute http(s) URL that can be sent exactly as signed."""
    if not url:
        msg = "the URL is empty"
        raise BadInputError(msg)
    if not _URL_CHARS_RE.fullmatch(url):
        # A space, control character or non-ASCII letter would be re-encoded (or refused) by
        # the HTTP client, so the server would hash a different URL from the one signed here.
        msg = "the URL has spaces, control or non-ASCII characters; percent-encode them"
        raise BadInputError(msg)
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        msg = f"the URL must be absolute http:// or https:// (as sent), not {url!r}"
        raise BadInputError(msg)
    return url


def check_method(method: str) -> str:
    """The HTTP method, upper-cased; letters only."""
    if not _METHOD_RE.fullmatch(method):
        msg = f"bad HTTP method {method!r}"
        raise BadInputError(msg)
    return method.upper()


def check_timestamp(timestamp: str) -> str:
    """A Unix time in decimal digits (seconds by default; the server decides the window)."""
    if not _TIMESTAMP_RE.fullmatch(timestamp):
        msg = f"bad timestamp {timestamp!r}: give Unix seconds, digits only"
        raise BadInputError(msg)
    return timestamp


def check_nonce(nonce: str) -> str:
    """A nonce of 1 to 256 visible ASCII characters (it travels in the ``x-nonce`` header)."""
    if not _NONCE_RE.fullmatch(nonce):
        msg = "bad nonce: use 1 to 256 visible ASCII characters, no spaces"
        raise BadInputError(msg)
    return nonce


def read_body(
    source: str, stdin: IO[bytes] | None = None, limit: int = BODY_LIMIT, what: str = "body"
) -> bytes:
    """The body bytes exactly as stored: a file, or ``-`` for standard input."""
    if source == "-":
        stream = stdin if stdin is not None else getattr(sys.stdin, "buffer", None)
        if stream is None:  # started with stdin closed
            msg = f"standard input is closed: no {what} to read"
            raise BadInputError(msg)
        data = stream.read(limit + 1)
        where = "standard input"
    else:
        try:
            data = read_bounded(source, limit)
        except OSError as exc:
            msg = f"cannot read {what} file {source}: {exc.strerror or exc}"
            raise BadInputError(msg) from None
        where = source
    if len(data) > limit:
        msg = f"the {what} in {where} is over {limit // (1024 * 1024)} MiB"
        raise BadInputError(msg)
    return data


def check_signing_key(path: str) -> None:
    """Refuse, with a reason, a private key OpenSSL could not sign a Qredo request with.

    Checked in Python before any child runs: an encrypted key would make ``openssl dgst``
    ask for a passphrase, and a missing one would be reported as an OpenSSL failure (exit 3)
    rather than bad input (exit 1).
    """
    block = _frame_key_file(path, "private", "keygen")
    if block is None or block.der is None:
        msg = f"{path} is not a PEM private key; run: qredo-openssl check"
        raise BadInputError(msg)
    encrypted = "ENCRYPTED" in block.headers or block.label == "ENCRYPTED PRIVATE KEY"
    if encrypted:
        msg = f"{path} is encrypted; Qredo's signing client needs an unencrypted key"
        raise BadInputError(msg)
    if block.label == "RSA PRIVATE KEY" or (
        block.label == "PRIVATE KEY" and RSA_OID in block.der[:32]
    ):
        return
    msg = f"{path} is not an RSA private key (BEGIN {block.label}); run: qredo-openssl check"
    raise BadInputError(msg)


def _frame_key_file(path: str, which: str, fix: str) -> PemBlock | None:
    """The first PEM block of a key file; missing or unreadable is bad input (exit 1)."""
    if not os.path.lexists(path):
        msg = f"no {which} key at {path}; run: qredo-openssl {fix}"
        raise BadInputError(msg)
    try:
        data = read_bounded(path)
    except OSError as exc:
        msg = f"cannot read {path}: {exc.strerror or exc}"
        raise BadInputError(msg) from None
    return frame_pem(data) if len(data) <= READ_LIMIT else None


def check_verifying_key(path: str) -> None:
    """Refuse a missing or non-PEM public key as bad input (exit 1), before OpenSSL runs."""
    block = _frame_key_file(path, "public", "pubkey")
    if block is None or block.label not in ("PUBLIC KEY", "RSA PUBLIC KEY"):
        msg = f"{path} is not a PEM public key (BEGIN PUBLIC KEY)"
        raise BadInputError(msg)


@dataclass(frozen=True)
class SignedRequest:
    """A signed request: what to send. ``apikey`` is None when there was no API key file.

    ``body_file`` is where the body came from (``-`` for standard input), so that the
    ``curl`` form can send the same bytes; None when there was no body or it was given inline.
    """

    url: str
    method: str
    timestamp: str | None
    nonce: str | None
    signature: str
    apikey: str | None = field(repr=False)  # a secret: kept out of reprs and tracebacks
    has_body: bool = False
    body_file: str | None = None

    @property
    def headers(self) -> dict[str, str]:
        """``x-api-key`` (when known), ``x-timestamp`` or ``x-nonce``, and ``x-sign``."""
        h: dict[str, str] = {}
        if self.apikey is not None:
            h["x-api-key"] = self.apikey
        if self.timestamp is not None:
            h["x-timestamp"] = self.timestamp
        else:
            h["x-nonce"] = str(self.nonce)
        h["x-sign"] = self.signature
        return h

    def to_json(self) -> dict[str, Any]:
        """``{"url", "method", "timestamp"|"nonce", "headers"}`` (SPEC.md)."""
        doc: dict[str, Any] = {"url": self.url, "method": self.method}
        if self.timestamp is not None:
            doc["timestamp"] = self.timestamp
        else:
            doc["nonce"] = self.nonce
        doc["headers"] = self.headers
        return doc

    def header_lines(self) -> str:
        """The headers as ``name: value`` lines."""
        return "".join(f"{k}: {v}\n" for k, v in self.headers.items())

    def curl_argv(self) -> list[str]:
        """A curl command sending this request; the body by reference, never inline.

        The body is read by curl from the same file (``--data-binary @FILE`` sends the bytes
        unchanged, unlike ``-d``), or from standard input (``@-``) when it was piped to us:
        then the same bytes must be piped to curl.
        """
        argv = ["curl"]
        inferred = "POST" if self.has_body else "GET"
        if self.method != inferred:
            argv += ["-X", self.method]
        for name, value in self.headers.items():
            argv += ["-H", f"{name}: {value}"]
        if self.has_body:
            argv += ["-H", "Content-Type: application/json"]
            argv += ["--data-binary", "@" + (self.body_file or "-")]
        argv.append(self.url)
        return argv


@dataclass(frozen=True)
class Signer:
    """A checked private key, the API key read once, and the OpenSSL that signs.

    Made once per command by :meth:`from_paths`, then used for any number of requests
    (from many threads): nothing about the key is read or checked twice.
    """

    openssl: OpenSSL
    private: str
    apikey: str | None = field(repr=False)
    apikey_path: str | None = None

    @classmethod
    def from_paths(cls, paths: KeyPaths, openssl: OpenSSL) -> Signer:
        """Check ``paths.private`` and read ``paths.apikey`` (optional: None when absent)."""
        check_signing_key(paths.private)
        return cls(openssl, paths.private, load_apikey(paths.apikey), paths.apikey)

    def signature(self, payload: bytes) -> bytes:
        """The raw RSA PKCS#1 v1.5 SHA-256 signature of ``payload`` (via stdin, never argv)."""
        # An absolute path: a key named "-x" cannot be read as an option, and cwd cannot matter.
        key = os.path.abspath(self.private)
        out = self.openssl.run("dgst", "-sha256", "-sign", key, stdin=payload)
        if not out.stdout:
            msg = "openssl dgst -sign printed no signature"
            raise OpenSSLError(msg, argv=out.argv, returncode=out.returncode)
        return out.stdout

    def sign(
        self,
        url: str,
        body: bytes = b"",
        *,
        method: str | None = None,
        timestamp: str | None = None,
        nonce: str | None = None,
        has_body: bool | None = None,
        body_file: str | None = None,
    ) -> SignedRequest:
        """Sign one request; ``timestamp`` defaults to now (Unix seconds) unless ``nonce``.

        ``method`` defaults to GET, or POST when there is a body (``has_body``, by default:
        ``body`` is not empty or ``body_file`` is given).
        """
        if timestamp is not None and nonce is not None:
            msg = "give a timestamp or a nonce, not both"
            raise BadInputError(msg)
        check_url(url)
        if nonce is not None:
            check_nonce(nonce)
        else:
            timestamp = check_timestamp(timestamp) if timestamp is not None else now()
        if has_body is None:
            has_body = bool(body) or body_file is not None
        method = check_method(method) if method else ("POST" if has_body else "GET")
        payload = build_payload(url, body, timestamp=timestamp, nonce=nonce)
        x_sign = encode_signature(self.signature(payload))
        return SignedRequest(
            url, method, timestamp, nonce, x_sign, self.apikey, has_body, body_file
        )


def now() -> str:
    """The current Unix time in whole seconds, as ``x-timestamp`` carries it."""
    return str(int(time.time()))


def sign_request(
    paths: KeyPaths,
    openssl: OpenSSL,
    url: str,
    body: bytes = b"",
    *,
    method: str | None = None,
    timestamp: str | None = None,
    nonce: str | None = None,
    body_file: str | None = None,
) -> SignedRequest:
    """Sign one Partner API request with ``paths.private`` through ``openssl dgst -sign``.

    The payload is ``timestamp`` (default: now, Unix seconds) or ``nonce``, then ``url``
    exactly as given, then ``body`` exactly as read. The API key comes from
    ``paths.apikey`` when that file exists. Raises :class:`BadInputError` for a bad key,
    URL, timestamp or nonce (exit 1) and :class:`OpenSSLError` when OpenSSL fails (exit 3).
    For many requests, make one :class:`Signer` (or use :func:`sign_batch`).
    """
    signer = Signer.from_paths(paths, openssl)
    return signer.sign(
        url, body, method=method, timestamp=timestamp, nonce=nonce, body_file=body_file
    )


@dataclass(frozen=True)
class Verification:
    """The verdict of :func:`verify_request`; ``reason`` says why in words."""

    valid: bool
    reason: str


def verify_request(
    public: str,
    openssl: OpenSSL,
    url: str,
    signature: str,
    body: bytes = b"",
    *,
    timestamp: str | None = None,
    nonce: str | None = None,
) -> Verification:
    """Check an ``x-sign`` value as the Qredo server does, with ``openssl dgst -verify``.

    The payload is rebuilt exactly as :func:`sign_request` builds it and goes in on stdin;
    the signature goes in a file in a private temporary directory (``-signature FILE``).
    An invalid signature is a result (``valid=False``), not an exception; a missing public
    key raises :class:`BadInputError` and an OpenSSL failure :class:`OpenSSLError`.
    """
    check_verifying_key(public)
    payload = build_payload(url, body, timestamp=timestamp, nonce=nonce)
    try:
        raw = decode_signature(signature)
    except BadInputError as exc:
        return Verification(False, str(exc))
    key = os.path.abspath(public)
    with private_tempdir(tempfile.gettempdir()) as tmp:
        sig_file = os.path.join(tmp, "x-sign.bin")
        with open(sig_file, "wb") as f:
            f.write(raw)
        out = openssl.run(
            "dgst", "-sha256", "-verify", key, "-signature", sig_file, stdin=payload,
            ok_codes=(0, 1),
        )  # fmt: skip
    said = out.stdout.decode("utf-8", "replace")
    # 1.x says "Verification Failure", 3.x "Verification failure"; both exit 1.
    if out.returncode == 0 and "Verified OK" in said:
        return Verification(True, f"x-sign verifies with {public}")
    if out.returncode == 1 and "verification failure" in said.lower():
        return Verification(False, f"x-sign does not verify with {public} for this request")
    stderr = out.stderr.decode("utf-8", "replace")
    first = headline(stderr)
    msg = f"openssl dgst -verify failed (exit {out.returncode})" + (f": {first}" if first else "")
    raise OpenSSLError(msg, argv=out.argv, returncode=out.returncode, stderr=stderr)


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
