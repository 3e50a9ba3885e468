"""The Qredo API key: validation (used by ``check`` and ``apikey``)."""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass

from ._errors import BadInputError

_B64_RE = re.compile(r"[A-Za-z0-9+/_-]+={0,2}")


@dataclass(frozen=True)
class ApiKeyInfo:
    """What a valid API key tells: its alphabet and, when it decodes to JSON, its ``key_id``."""

    alphabet: str  # "standard" or "url-safe"
    key_id: str | None


def validate_apikey(text: str) -> ApiKeyInfo:
    """Check one API key (surrounding whitespace already stripped); raise with a one-line reason.

    The reason never quotes the key itself.
    """
    if not text:
        msg = "the API key is empty"
        raise BadInputError(msg)
    if any(c.isspace() for c in text):
        msg = "the API key has whitespace inside it; paste it as one line"
        raise BadInputError(msg)
    if text[0] in "\"'" or text[-1] in "\"'":
        msg = "the API key is quoted; paste it without quotes"
        raise BadInputError(msg)
    if not _B64_RE.fullmatch(text):
        bad = next((i for i, c in enumerate(text) if not re.match(r"[A-Za-z0-9+/_=-]", c)), None)
        where = f" (an unexpected character at position {bad + 1})" if bad is not None else ""
        msg = f"the API key is not Base64{where}"
        raise BadInputError(msg)
    has_std, has_url = bool(set(text) & set("+/")), bool(set(text) & set("-_"))
    if has_std and has_url:
        msg = "the API key mixes the standard (+/) and URL-safe (-_) Base64 alphabets"
        raise BadInputError(msg)
    body = text.rstrip("=")
    if len(body) % 4 == 1 or (text != body and len(text) % 4):
        msg = "the API key is not Base64 (wrong length or padding); was it cut short?"
        raise BadInputError(msg)
    try:
        raw = base64.b64decode(body + "=" * (-len(body) % 4), altchars=b"-_" if has_url else None)
    except (binascii.Error, ValueError):
        msg = "the API key is not Base64"
        raise BadInputError(msg) from None
    return ApiKeyInfo("url-safe" if has_url else "standard", _key_id(raw))


def _key_id(raw: bytes) -> str | None:
    """``key_id`` when the decoded key is a JSON object; reject JSON that lacks its fields."""
    stripped = raw.strip()
    if not stripped.startswith(b"{"):
        return None
    try:
        doc = json.loads(stripped)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(doc, dict):
        return None
    missing = [k for k in ("key_id", "key") if k not in doc]
    if missing:
        msg = f"the API key decodes to JSON without {' and '.join(missing)}"
        raise BadInputError(msg)
    return str(doc["key_id"])
