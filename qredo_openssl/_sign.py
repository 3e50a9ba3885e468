"""Signing and verifying Partner API requests with the system OpenSSL.

The signature is made by ``openssl dgst -sha256 -sign KEY`` and checked by ``openssl dgst
-sha256 -verify public.pem``: the payload goes in on stdin and the key by its path (or its
token URI), so neither the payload (which holds the body) nor the API key ever reaches a
child's argv.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ._apikey import load_apikey
from ._errors import BadInputError, OpenSSLError
from ._files import KeyPaths, private_tempdir, write_private
from ._openssl import OpenSSL
from ._pem import READ_LIMIT, PemBlock, frame_pem, read_bounded
from ._pkcs11 import Pkcs11Options, has_token_key, token_signing_key
from ._request import (
    build_payload,
    check_method,
    check_nonce,
    check_timestamp,
    check_url,
    decode_signature,
    encode_signature,
    now,
)
from ._run import headline


def check_signing_key(path: str) -> None:
    """Refuse, with a reason, a private key OpenSSL could not sign a Qredo request with.

    Checked in Python before any child runs: an encrypted key would make ``openssl dgst``
    ask for a passphrase, and a missing one would be reported as an OpenSSL failure (exit 3)
    rather than bad input (exit 1).
    """
    block = _frame_key_file(path, "private", "check")
    if block is None or block.der is None:
        msg = f"{path} is not a PEM private key"
        raise BadInputError(msg)
    if block.encrypted:
        msg = f"{path} is encrypted; Qredo's signing client needs an unencrypted key"
        raise BadInputError(msg)
    if not block.rsa_private:
        msg = f"{path} is not an RSA private key (BEGIN {block.label})"
        raise BadInputError(msg)


def _frame_key_file(path: str, which: str, fix: str) -> PemBlock | None:
    """The first PEM block of a key file; missing or unreadable is bad input (exit 1)."""
    if not os.path.lexists(path):
        msg = f"no {which} key at {path}"
        raise BadInputError(msg)
    data = read_bounded(path)
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
        """``{"url", "method", "timestamp"|"nonce", "headers"}`` (docs/contract.md)."""
        doc: dict[str, Any] = {"url": self.url, "method": self.method}
        if self.timestamp is not None:
            doc["timestamp"] = self.timestamp
        else:
            doc["nonce"] = self.nonce
        doc["headers"] = self.headers
        return doc


@dataclass(frozen=True)
class SigningKey:
    """How OpenSSL is told which private key signs: a PEM file or a PKCS#11 token key.

    ``args`` are the ``openssl dgst`` options that name the key, ending in ``-sign KEY``;
    ``env`` holds what they refer to by name (a PIN for ``-passin env:VAR``), never argv.
    ``run`` (a token key's) signs a payload itself: token logins are serialized, and a
    failure is said in words.
    """

    name: str
    args: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict, repr=False)
    run: Callable[[bytes], bytes] | None = field(default=None, repr=False, compare=False)

    @classmethod
    def pem(cls, path: str) -> SigningKey:
        """A checked, unencrypted RSA ``private.pem`` (PKCS#1 or PKCS#8)."""
        check_signing_key(path)
        # An absolute path: a key named "-x" cannot be read as an option, and cwd cannot matter.
        return cls(path, ("-sign", os.path.abspath(path)))

    @classmethod
    def from_paths(
        cls, paths: KeyPaths, openssl: OpenSSL, pkcs11: Pkcs11Options | None = None
    ) -> SigningKey:
        """The token key when ``DIR/private.uri`` exists, else ``paths.private`` (checked)."""
        if has_token_key(paths):
            return cls.token(paths, openssl, pkcs11)
        return cls.pem(paths.private)

    @classmethod
    def token(
        cls, paths: KeyPaths, openssl: OpenSSL, options: Pkcs11Options | None = None
    ) -> SigningKey:
        """The key in a PKCS#11 token that ``paths.dir``/private.uri names."""
        name, args, env, token, uri = token_signing_key(paths, openssl, options)
        return cls(name, args, env, lambda payload: token.sign(uri, payload))


@dataclass(frozen=True)
class Signer:
    """A checked private key, the API key read once, and the OpenSSL that signs.

    Made once per command by :meth:`from_paths`, then used for any number of requests
    (from many threads): nothing about the key is read or checked twice.
    """

    openssl: OpenSSL
    key: SigningKey
    apikey: str | None = field(repr=False)
    apikey_path: str | None = None

    @classmethod
    def from_paths(
        cls, paths: KeyPaths, openssl: OpenSSL, *, pkcs11: Pkcs11Options | None = None
    ) -> Signer:
        """Check the private key and read ``paths.apikey`` (optional: None when absent).

        The key is the token key when ``DIR/private.uri`` exists, else ``paths.private``.
        """
        key = SigningKey.from_paths(paths, openssl, pkcs11)
        return cls(openssl, key, load_apikey(paths.apikey), paths.apikey)

    @property
    def private(self) -> str:
        """The private key's path (or token URI), for messages."""
        return self.key.name

    def signature(self, payload: bytes) -> bytes:
        """The raw RSA PKCS#1 v1.5 SHA-256 signature of ``payload`` (via stdin, never argv)."""
        k = self.key
        if k.run is not None:
            return k.run(payload)
        out = self.openssl.run("dgst", "-sha256", *k.args, stdin=payload, extra_env=k.env)
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
    if verify_signature(openssl, public, payload, raw):
        return Verification(True, f"x-sign verifies with {public}")
    return Verification(False, f"x-sign does not verify with {public} for this request")


def verify_signature(openssl: OpenSSL, public: str, data: bytes, signature: bytes) -> bool:
    """Whether ``signature`` (raw RSA PKCS#1 v1.5 SHA-256) of ``data`` verifies with ``public``.

    ``openssl dgst -sha256 -verify``: the data on stdin, the signature in a file in a private
    temporary directory. An OpenSSL failure (not a verdict) raises :class:`OpenSSLError`.
    """
    with private_tempdir(tempfile.gettempdir()) as tmp:
        sig_file = os.path.join(tmp, "signature.bin")
        write_private(sig_file, signature)
        out = openssl.run(
            "dgst", "-sha256", "-verify", os.path.abspath(public), "-signature", sig_file,
            stdin=data, ok_codes=(0, 1),
        )  # fmt: skip
    said = out.stdout.decode("utf-8", "replace")
    # 1.x says "Verification Failure", 3.x "Verification failure"; both exit 1.
    if out.returncode == 0 and "Verified OK" in said:
        return True
    if out.returncode == 1 and "verification failure" in said.lower():
        return False
    stderr = out.stderr.decode("utf-8", "replace")
    first = headline(stderr)
    msg = f"openssl dgst -verify failed (exit {out.returncode})" + (f": {first}" if first else "")
    raise OpenSSLError(msg, argv=out.argv, returncode=out.returncode, stderr=stderr)
