"""What a Partner API request is: the signed payload, the x-sign encoding, the input rules.

Qredo's reference client signs ``sha256(timestamp + url + body)`` with RSA PKCS#1 v1.5 and
sends the signature as ``x-sign``, URL-safe Base64 without padding. Nothing here runs a child.
"""

from __future__ import annotations

import base64
import os
import re
import sys
import time
from dataclasses import dataclass, field
from typing import IO
from urllib.parse import urlsplit

from ._errors import BadInputError, UsageError
from ._pem import read_bounded

BODY_LIMIT = 64 * 1024 * 1024  # Partner API bodies are small JSON; this only stops /dev/zero

_METHOD_RE = re.compile(r"[A-Za-z]{1,32}")
_TIMESTAMP_RE = re.compile(r"[0-9]{1,20}")
_NONCE_RE = re.compile(r"[\x21-\x7e]{1,256}")  # visible ASCII: it travels in a header
_URL_CHARS_RE = re.compile(r"[\x21-\x7e]+")
_X_SIGN_RE = re.compile(r"[A-Za-z0-9_-]*")
# Methods whose request carries no body: curl sends HEAD with ``--head``, which cannot send one.
BODILESS_METHODS = frozenset({"HEAD"})


def build_payload(
    url: str, body: bytes = b"", *, timestamp: str | None = None, nonce: str | None = None
) -> bytes:
    """The bytes Qredo signs: the timestamp (or nonce), the URL, the body, concatenated as is.

    Exactly one of ``timestamp`` and ``nonce`` must be given. The body is not re-encoded and
    JSON is not reformatted: one changed byte (a CRLF, a space) changes the signature.
    """
    if (timestamp is None) == (nonce is None):
        msg = "give exactly one of timestamp and nonce"
        raise BadInputError(msg)
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


def check_body_allowed(method: str | None, has_body: bool) -> None:
    """:class:`UsageError` (exit 2) for a body on a method that carries none (HEAD)."""
    if has_body and method is not None and method.upper() in BODILESS_METHODS:
        msg = f"a {method.upper()} request carries no body"
        raise UsageError(msg)


def read_body(
    source: str,
    stdin: IO[bytes] | None = None,
    limit: int = BODY_LIMIT,
    what: str = "body",
    *,
    regular_only: bool = False,
) -> bytes:
    """The body bytes exactly as stored: a file, or ``-`` for standard input.

    A file may be a pipe (``<(...)``) unless ``regular_only``: then anything but a regular
    file is refused at once, never waited on (a batch's ``body_file``).
    """
    if source == "-":
        stream = stdin if stdin is not None else getattr(sys.stdin, "buffer", None)
        if stream is None:  # started with stdin closed
            msg = f"standard input is closed: no {what} to read"
            raise BadInputError(msg)
        data = stream.read(limit + 1)
        where = "standard input"
    else:
        # A pipe (``<(...)``) is fine for a body: the bound still applies.
        data = read_bounded(source, limit, regular_only=regular_only, what=f"{what} file")
        where = source
    if len(data) > limit:
        msg = f"the {what} in {where} is over {limit // (1024 * 1024)} MiB"
        raise BadInputError(msg)
    return data


@dataclass(frozen=True)
class RequestDir:
    """A request in Qredo's Go client layout: ``PATH/uri`` and the optional ``PATH/body``."""

    method: str
    url: str
    body: bytes | None = field(repr=False)
    body_file: str | None  # PATH/body when there is one


def read_request_dir(path: str) -> RequestDir:
    """``PATH/uri`` (``METHOD URL`` on one line) and the optional ``PATH/body``."""
    uri_path = os.path.join(path, "uri")
    if not os.path.isdir(path):
        msg = f"no request directory at {path}"
        raise BadInputError(msg)
    raw = read_bounded(uri_path, what="request uri file")
    try:
        lines = raw.decode("utf-8").strip().splitlines()
    except UnicodeDecodeError:
        msg = f"{uri_path} is not UTF-8 text"
        raise BadInputError(msg) from None
    words = lines[0].split() if len(lines) == 1 else []
    if len(words) != 2:
        msg = f"{uri_path} must hold one line 'METHOD URL'"
        raise BadInputError(msg)
    body_path = os.path.join(path, "body")
    if os.path.lexists(body_path):
        return RequestDir(words[0], words[1], read_body(body_path), body_path)
    return RequestDir(words[0], words[1], None, None)


def now() -> str:
    """The current Unix time in whole seconds, as ``x-timestamp`` carries it."""
    return str(int(time.time()))
