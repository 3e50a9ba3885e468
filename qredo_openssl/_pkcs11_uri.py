"""RFC 7512 ``pkcs11:`` URIs: the one line of ``DIR/private.uri`` that names a token key.

Parsed strictly (percent-escapes, no repeated attribute) and written back in one canonical
form for OpenSSL. A URI carrying a PIN (``pin-value``, ``pin-source``) is refused: the PIN
would then sit in a file and in every child's argv.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from urllib.parse import quote, unquote_to_bytes

from ._errors import BadInputError
from ._pem import read_bounded

SCHEME = "pkcs11:"
URI_LIMIT = 4096
# RFC 7512 section 2.3: the standard path and query attribute names.
PATH_ATTRS = frozenset(
    {
        "token",
        "manufacturer",
        "serial",
        "model",
        "library-manufacturer",
        "library-version",
        "library-description",
        "object",
        "type",
        "id",
        "slot-description",
        "slot-manufacturer",
        "slot-id",
    }
)
QUERY_ATTRS = frozenset({"pin-source", "pin-value", "module-name", "module-path"})
TYPES = frozenset({"public", "private", "cert", "secret-key", "data"})
_NAME_RE = re.compile(r"^[a-z][a-z0-9-]*$")
# pk11-pchar: unreserved, pct-encoded and these (RFC 7512 pk11-path-res-avail, plus "&");
# in the query ";" may appear, "&" separates.
_PATH_SAFE = ":[]@!$'()*+,=&"
_QUERY_SAFE = ":[]@!$'()*+,=/?|;"
_ALLOWED = set(string.ascii_letters + string.digits + "-._~%" + _PATH_SAFE + _QUERY_SAFE)


@dataclass(frozen=True)
class Pkcs11Uri:
    """A parsed ``pkcs11:`` URI; values are the percent-decoded bytes."""

    path: tuple[tuple[str, bytes], ...]
    query: tuple[tuple[str, bytes], ...] = ()

    def get(self, name: str) -> bytes | None:
        return dict(self.path).get(name)

    def text(self, name: str) -> str | None:
        value = self.get(name)
        return None if value is None else value.decode("utf-8")

    @property
    def token(self) -> str | None:
        return self.text("token")

    @property
    def object(self) -> str | None:
        """The object's label (CKA_LABEL)."""
        return self.text("object")

    @property
    def id(self) -> bytes | None:
        """The object's CKA_ID."""
        return self.get("id")

    @property
    def id_hex(self) -> str | None:
        """CKA_ID as ``pkcs11-tool --id`` takes it."""
        return None if self.id is None else self.id.hex()

    def with_type(self, kind: str | None) -> Pkcs11Uri:
        """The same URI naming the ``private`` or ``public`` object (None: no type)."""
        path = [(k, v) for k, v in self.path if k != "type"]
        if kind is not None:
            path.append(("type", kind.encode()))
        return Pkcs11Uri(tuple(path), self.query)

    def __str__(self) -> str:
        path = ";".join(f"{k}={_encode(k, v, _PATH_SAFE)}" for k, v in self.path)
        query = "&".join(f"{k}={_encode(k, v, _QUERY_SAFE)}" for k, v in self.query)
        return SCHEME + path + (f"?{query}" if query else "")

    def describe(self) -> str:
        """``token T, object O`` for messages."""
        parts = [f"token {self.token!r}"] if self.token is not None else []
        if self.object is not None:
            parts.append(f"object {self.object!r}")
        if self.id is not None:
            parts.append(f"id {self.id_hex}")
        return ", ".join(parts) or str(self)


def _encode(name: str, value: bytes, safe: str) -> str:
    if name == "id":  # binary: every byte escaped, as p11-kit and OpenSC print it
        return "".join(f"%{b:02x}" for b in value)
    return quote(value, safe=safe.replace(";", "").replace("&", "").replace("=", ""))


def _decode(raw: str, where: str) -> bytes:
    if re.search(r"%(?![0-9A-Fa-f]{2})", raw):
        msg = f"{where}: a '%' must be followed by two hex digits"
        raise BadInputError(msg)
    return unquote_to_bytes(raw)


def _pairs(part: str, sep: str, where: str) -> list[tuple[str, bytes]]:
    pairs: list[tuple[str, bytes]] = []
    for item in part.split(sep) if part else []:
        name, eq, raw = item.partition("=")
        if not eq or not _NAME_RE.match(name):
            msg = f"{where}: {item!r} is not an attribute (name=value)"
            raise BadInputError(msg)
        if any(name == seen for seen, _ in pairs):
            msg = f"{where}: attribute {name!r} appears twice"
            raise BadInputError(msg)
        pairs.append((name, _decode(raw, where)))
    return pairs


def parse_uri(text: str, where: str = "pkcs11 URI") -> Pkcs11Uri:
    """Parse an RFC 7512 URI; anything else is :class:`BadInputError` (exit 1), never another.

    Refused: no ``pkcs11:`` scheme, characters outside the URI alphabet, bad escapes, a
    repeated or malformed attribute, a PIN in the query, an unknown ``type``, text values
    that are not UTF-8.
    """
    if not text.lower().startswith(SCHEME):
        msg = f"{where} does not start with {SCHEME!r}"
        raise BadInputError(msg)
    body = text[len(SCHEME) :]
    bad = sorted({c for c in body if c not in _ALLOWED})
    if bad:
        shown = ", ".join(repr(c) for c in bad[:5])
        msg = f"{where}: characters not allowed in a pkcs11 URI (percent-encode them): {shown}"
        raise BadInputError(msg)
    path_part, _, query_part = body.partition("?")
    path = _pairs(path_part, ";", where)
    query = _pairs(query_part, "&", where)
    for name, value in path:
        if name not in PATH_ATTRS and not name.startswith("x-"):
            msg = f"{where}: unknown attribute {name!r}"
            raise BadInputError(msg)
        if name != "id":
            try:
                value.decode("utf-8")
            except UnicodeDecodeError:
                msg = f"{where}: {name} is not UTF-8"
                raise BadInputError(msg) from None
    for name, _value in query:
        if name in ("pin-value", "pin-source"):
            msg = f"{where} holds a PIN ({name}); remove it: the PIN comes from "
            msg += "QREDO_PKCS11_PIN or a PIN file, never from the URI"
            raise BadInputError(msg)
        if name in ("module-name", "module-path"):
            msg = f"{where}: {name} is not used; name the module outside the URI "
            msg += "(QREDO_PKCS11_MODULE)"
            raise BadInputError(msg)
        if not name.startswith("x-"):
            msg = f"{where}: unknown query attribute {name!r}"
            raise BadInputError(msg)
    uri = Pkcs11Uri(tuple(path), tuple(query))
    kind = uri.text("type")
    if kind is not None and kind not in TYPES:
        msg = f"{where}: type={kind} is not one of {', '.join(sorted(TYPES))}"
        raise BadInputError(msg)
    return uri


def parse_key_uri(text: str, where: str = "pkcs11 URI") -> Pkcs11Uri:
    """A URI naming one RSA key: a token label and an object label or id; type private or none."""
    uri = parse_uri(text, where)
    if uri.token is None:
        msg = f"{where} names no token (token=LABEL)"
        raise BadInputError(msg)
    if uri.object is None and uri.id is None:
        msg = f"{where} names no key (object=LABEL or id=%XX)"
        raise BadInputError(msg)
    if uri.text("type") not in (None, "private"):
        msg = f"{where} names a {uri.text('type')} object; give the key (type=private or none)"
        raise BadInputError(msg)
    return uri.with_type(None)


def read_uri_file(path: str) -> Pkcs11Uri:
    """``DIR/private.uri``: one line (a final newline allowed), a key URI."""
    data = read_bounded(path, URI_LIMIT, what="token key URI")
    if len(data) > URI_LIMIT:
        msg = f"{path} is over {URI_LIMIT} bytes: not a pkcs11 URI file"
        raise BadInputError(msg)
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        msg = f"{path} is not ASCII: a pkcs11 URI percent-encodes everything else"
        raise BadInputError(msg) from None
    line = text[:-1] if text.endswith("\n") else text
    line = line[:-1] if line.endswith("\r") else line
    if not line or "\n" in line:
        msg = f"{path} must hold exactly one line, a pkcs11: URI"
        raise BadInputError(msg)
    return parse_key_uri(line, path)
