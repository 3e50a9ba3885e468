"""The Qredo API key: validation (used by ``check`` and ``apikey``), reading and saving it.

The key is a secret: it is never put into an error message, a log line or a child's argv.
Nothing here needs OpenSSL, so nothing here imports ``sh``.
"""

from __future__ import annotations

import base64
import binascii
import getpass
import json
import os
import re
import sys
from dataclasses import dataclass
from typing import IO

from ._errors import BadInputError
from ._files import ensure_dir, private_tempdir, publishing, refuse_existing, write_private
from ._pem import READ_LIMIT, read_bounded

_B64_RE = re.compile(r"[A-Za-z0-9+/_-]+={0,2}")
_B64_CHAR_RE = re.compile(r"[A-Za-z0-9+/_=-]")
# Straight quotes, and the curly ones that word processors and chat apps substitute.
_QUOTES = "\"'`\u2018\u2019\u201c\u201d"
BOM = "\ufeff"
PROMPT = "Qredo API key (input hidden): "


@dataclass(frozen=True)
class ApiKeyInfo:
    """What a valid API key tells: its alphabet and, when it decodes to JSON, its ``key_id``."""

    alphabet: str  # "standard" or "url-safe"
    key_id: str | None


@dataclass(frozen=True)
class SavedApiKey:
    """The result of :func:`save_apikey`: where it landed, its ``key_id``, any backups kept."""

    path: str
    alphabet: str
    key_id: str | None
    backups: tuple[str, ...]


def validate_apikey(text: str) -> ApiKeyInfo:
    """Check one API key (surrounding whitespace already stripped); raise with a one-line reason.

    Accepts standard (``+/``) or URL-safe (``-_``) Base64, padded or not. The reason never
    quotes the key itself, only positions and character classes.
    """
    if not text:
        msg = "the API key is empty"
        raise BadInputError(msg)
    if any(c.isspace() for c in text):
        msg = "the API key has whitespace inside it; paste it as one line"
        raise BadInputError(msg)
    if text[0] in _QUOTES or text[-1] in _QUOTES:
        msg = "the API key is quoted; paste it without quotes"
        raise BadInputError(msg)
    if text[0] == BOM:
        msg = "the API key starts with a byte-order mark (U+FEFF); save it as plain UTF-8"
        raise BadInputError(msg)
    if not _B64_RE.fullmatch(text):
        raise BadInputError(_why_not_base64(text))
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


def _why_not_base64(text: str) -> str:
    """Where ``text`` stops being Base64, told by position and kind, never by the character."""
    bad = next((i for i, c in enumerate(text) if not _B64_CHAR_RE.fullmatch(c)), None)
    if bad is not None:
        return f"the API key is not Base64 ({_kind(text[bad])} at position {bad + 1})"
    first_pad = text.index("=")  # the regex failed, every character is Base64: "=" is misplaced
    return f"the API key is not Base64 (padding '=' inside it at position {first_pad + 1})"


def _kind(c: str) -> str:
    if c in _QUOTES:
        return "a quote"
    if ord(c) > 127:
        return "a non-ASCII character"
    if not c.isprintable():
        return "a control character"
    return "a character outside the Base64 alphabet"


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


def parse_apikey_file(data: bytes, path: str) -> tuple[str, ApiKeyInfo]:
    """The API key in a file's bytes: one line of UTF-8, validated (``check`` and ``sign``).

    Surrounding whitespace is dropped, as Qredo's client does; anything else (a BOM, a second
    line, quotes) raises :class:`BadInputError` with a reason that never quotes the key.
    """
    if len(data) > READ_LIMIT:
        msg = f"{path} is over {READ_LIMIT // 1024} KiB: not an API key"
        raise BadInputError(msg)
    try:
        text = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        msg = f"{path} is not UTF-8 text"
        raise BadInputError(msg) from None
    if "\n" in text:
        msg = f"{path} has more than one line"
        raise BadInputError(msg)
    try:
        return text, validate_apikey(text)
    except BadInputError as exc:
        msg = f"{path}: {exc}"
        raise BadInputError(msg) from None


def load_apikey(path: str) -> str | None:
    """The API key saved at ``path``, validated; None when there is no file there."""
    if not os.path.lexists(path):
        return None
    return parse_apikey_file(read_bounded(path), path)[0]


def read_apikey_input(
    stdin: IO[str] | None = None, *, prompt: str = PROMPT, limit: int = READ_LIMIT
) -> str:
    """Read the API key as typed or piped; surrounding whitespace is left for the caller.

    On a terminal: a hidden prompt (``getpass``: the prompt goes to the terminal, echo is off,
    so the key never shows on screen). Otherwise all of ``stdin``, at most ``limit`` bytes,
    UTF-8 (a leading byte-order mark, as Windows editors write, is dropped).
    """
    source: IO[str] | None = sys.stdin if stdin is None else stdin
    if source is None:  # started with standard input closed (<&-)
        msg = "standard input is closed: pipe the API key in, or run on a terminal"
        raise BadInputError(msg)
    if source.isatty():
        try:
            return getpass.getpass(prompt)
        except EOFError:  # Ctrl-D at the prompt
            return ""
    buffer = getattr(source, "buffer", None)
    try:
        data = buffer.read(limit + 1) if buffer is not None else source.read(limit + 1).encode()
    except OSError as exc:
        msg = f"cannot read the API key from standard input: {exc.strerror}"
        raise BadInputError(msg) from None
    if len(data) > limit:
        msg = f"standard input is over {limit // 1024} KiB: not an API key"
        raise BadInputError(msg)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        msg = "the API key on standard input is not UTF-8 text"
        raise BadInputError(msg) from None


def save_apikey(path: str, key: str, *, force: bool = False) -> SavedApiKey:
    """Validate ``key`` (surrounding whitespace stripped) and write it to ``path`` as one line.

    The file is 0600 from birth, written in a private temporary directory beside ``path``
    and published with a no-clobber link, as keygen publishes ``private.pem``. Whatever is at
    ``path`` already is refused (:class:`RefusedOverwriteError`, exit 4) unless ``force``,
    which first keeps it as ``NAME.YYYYmmddTHHMMSSZ.bak``. A bad key raises
    :class:`BadInputError` before anything is created.
    """
    text = key.strip()
    info = validate_apikey(text)
    directory = os.path.dirname(path) or "."
    ensure_dir(directory)
    if not force:
        refuse_existing([path])
    with private_tempdir(directory) as tmp:
        staged = os.path.join(tmp, "apikey")
        # A trailing newline makes it a text file; the signing clients trim it (Go TrimSpace).
        write_private(staged, (text + "\n").encode("ascii"))
        with publishing(force) as pub:
            pub.publish(staged, path, secret=True)
    return SavedApiKey(path, info.alphabet, info.key_id, tuple(pub.backups))
