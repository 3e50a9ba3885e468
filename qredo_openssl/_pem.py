"""PEM and key-file rules, once: framing, "encrypted?", "an RSA key?", and the one bounded reader.

Python only frames PEM (label, headers, Base64 body); OpenSSL parses keys. Nothing here runs a
child or imports ``sh``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
import stat
from dataclasses import dataclass

from ._errors import BadInputError

READ_LIMIT = 64 * 1024  # a key file is a few KB; anything far larger is a finding, not input

_PEM_RE = re.compile(
    rb"-----BEGIN (?P<label>[A-Z0-9 ]+)-----\r?\n(?P<body>.*?)-----END (?P=label)-----", re.S
)
BEGIN_RE = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----")
BOM = b"\xef\xbb\xbf"
# DER of the AlgorithmIdentifier OID rsaEncryption (1.2.840.113549.1.1.1). A PKCS#8 block
# names its algorithm in its first few bytes: enough to tell an RSA key from an EC or
# Ed25519 one (which ``convert`` cannot help) without parsing the key.
RSA_OID = bytes.fromhex("06092a864886f70d010101")


@dataclass(frozen=True)
class PemBlock:
    """The first PEM block of a file, framed but not parsed."""

    label: str
    headers: str
    der: bytes | None  # None when the Base64 body is corrupt

    @property
    def encrypted(self) -> bool:
        """A passphrase-protected key: legacy ``Proc-Type: 4,ENCRYPTED`` or encrypted PKCS#8."""
        return "ENCRYPTED" in self.headers or self.label == "ENCRYPTED PRIVATE KEY"

    @property
    def rsa_private(self) -> bool:
        """An RSA private key OpenSSL can load: PKCS#1, or PKCS#8 naming rsaEncryption."""
        if self.der is None:
            return False
        return self.label == "RSA PRIVATE KEY" or (
            self.label == "PRIVATE KEY" and RSA_OID in self.der[:32]
        )


def frame_pem(data: bytes) -> PemBlock | None:
    """The first complete PEM block in ``data``; None when there is none. Never raises."""
    m = _PEM_RE.search(data)
    if not m:
        return None
    body = m.group("body").decode("ascii", "replace").replace("\r", "")
    headers, _, b64 = body.rpartition("\n\n") if ":" in body.split("\n", 1)[0] else ("", "", body)
    try:
        der: bytes | None = base64.b64decode("".join(b64.split()), validate=True)
    except (binascii.Error, ValueError):
        der = None
    return PemBlock(m.group("label").decode(), headers, der or None)


def read_bounded(
    path: str, limit: int = READ_LIMIT, *, regular_only: bool = True, what: str = "file"
) -> bytes:
    """Read at most ``limit + 1`` bytes of ``path``, so callers can tell "too large".

    With ``regular_only`` (key files, API keys) anything but a regular file (a FIFO, a
    device, a socket) is refused at once: the open does not block (``O_NONBLOCK``) and the
    type is checked on the open descriptor, so nothing can be swapped in between. Bodies may
    come from a pipe (``<(...)``), so they pass ``regular_only=False``. Every failure is a
    :class:`BadInputError` naming ``what`` and the path.
    """
    flags = os.O_RDONLY | getattr(os, "O_NOCTTY", 0) | (os.O_NONBLOCK if regular_only else 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise _unreadable(what, path, exc) from None
    try:
        if regular_only and not stat.S_ISREG(os.fstat(fd).st_mode):
            kind = "a directory" if stat.S_ISDIR(os.fstat(fd).st_mode) else "not a regular file"
            msg = f"{path} is {kind}"
            raise BadInputError(msg)
        chunks: list[bytes] = []
        left = limit + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    except OSError as exc:
        raise _unreadable(what, path, exc) from None
    finally:
        os.close(fd)


def _unreadable(what: str, path: str, exc: OSError) -> BadInputError:
    return BadInputError(f"cannot read {what} {path}: {exc.strerror or exc}")


def fingerprint(public_pem: bytes) -> str:
    """``SHA256:<base64>`` of the SubjectPublicKeyInfo DER, as ``ssh-keygen -l`` shows keys."""
    block = frame_pem(public_pem)
    if block is None or block.der is None:
        msg = "not a PEM public key"
        raise BadInputError(msg)
    digest = hashlib.sha256(block.der).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")
