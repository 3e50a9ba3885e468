"""Token keys: export a token key's public key, and check a directory that names one.

A token key never leaves the token; its public half is exported by OpenSSL. Making one
(``keygen --pkcs11``) is :mod:`._pkcs11_keygen`.
"""

from __future__ import annotations

import os
import re
import secrets
import tempfile
from collections.abc import Callable
from dataclasses import dataclass

from ._checks import Finding, check_apikey, check_public, ours, parse_rsa_text, rsa_findings
from ._errors import BadInputError
from ._files import (
    KeyPaths,
    ensure_dir,
    private_tempdir,
    publishing,
    refuse_existing,
    write_private,
)
from ._openssl import OpenSSL
from ._pem import frame_pem, read_bounded
from ._pkcs11 import PIN_ENV, Pkcs11Options, Token, both_sources, open_token, uri_file
from ._pkcs11_errors import TokenError
from ._pkcs11_uri import Pkcs11Uri, read_uri_file
from ._sign import verify_signature

_HEADER_RE = re.compile(r"^(Private Key|Public Key|Certificate|Data|Secret Key) Object")
_FIELD_RE = re.compile(r"^\s+(label|ID|Access|Usage):\s*(.*)$")
NO_PIN_HINT = f"no PIN: set {PIN_ENV} (or give a PIN file) to check this with the token"


@dataclass(frozen=True)
class TokenObject:
    """One object block of ``pkcs11-tool --list-objects``."""

    kind: str
    label: str | None
    id: bytes | None
    access: str

    @property
    def extractable(self) -> bool:
        """Whether the key can leave the token: CKA_EXTRACTABLE, or not CKA_SENSITIVE."""
        words = [w.strip() for w in self.access.split(",")]
        return "extractable" in words or "sensitive" not in words

    def matches(self, uri: Pkcs11Uri) -> bool:
        if uri.object is not None and self.label != uri.object:
            return False
        return uri.id is None or self.id == uri.id


def parse_objects(listing: str) -> list[TokenObject]:
    """Blocks of ``--list-objects``: a header line, then indented ``name: value`` lines."""
    objects: list[dict[str, str]] = []
    for line in listing.splitlines():
        head = _HEADER_RE.match(line)
        if head:
            objects.append({"kind": head.group(1)})
            continue
        m = _FIELD_RE.match(line)
        if m and objects:
            objects[-1][m.group(1)] = m.group(2).strip()
    result = []
    for o in objects:
        try:
            oid = bytes.fromhex(o["ID"]) if "ID" in o else None
        except ValueError:
            oid = None
        result.append(TokenObject(o["kind"], o.get("label"), oid, o.get("Access", "")))
    return result


def _objects(token: Token, uri: Pkcs11Uri, *kind: str) -> list[TokenObject]:
    out = token.tool_run(
        f"listing the objects of token {uri.token!r}", uri, ["--list-objects", *kind], login=True
    )
    return parse_objects(out.stdout.decode("utf-8", "replace"))


def _public_facts(token: Token, uri: Pkcs11Uri) -> tuple[bytes, str]:
    """The public object as PEM (pkcs11-tool reads it without a PIN) and OpenSSL's text of it."""
    with private_tempdir(tempfile.gettempdir()) as tmp:
        der = os.path.join(tmp, "public.der")
        args = ["--read-object", "--type", "pubkey", "-o", der]
        if uri.object is not None:
            args += ["--label", uri.object]
        if uri.id_hex is not None:
            args += ["--id", uri.id_hex]
        token.tool_run(f"reading the public key of {uri.describe()}", uri, args)
        out = token.openssl.run("rsa", "-pubin", "-inform", "DER", "-in", der, "-text", "-pubout")
    return out.stdout, out.stdout.decode("utf-8", "replace")


def _challenge(token: Token, uri: Pkcs11Uri, public: str) -> Finding:
    """Sign random bytes in the token; verify with ``public`` through ``openssl dgst -verify``."""
    challenge = secrets.token_bytes(32)
    try:
        signature = token.sign(uri, challenge)
    except TokenError as exc:
        return Finding("public.matches", "fail", str(exc))
    if verify_signature(token.openssl, public, challenge, signature):
        return Finding("public.matches", "ok", f"a challenge signed by {uri} verifies with it")
    msg = f"{public} does not verify a challenge signed by {uri}"
    return Finding("public.matches", "fail", msg, ours("pubkey", "--force", public=public))


def check_token_key(
    paths: KeyPaths, openssl: OpenSSL, options: Pkcs11Options | None = None
) -> list[Finding]:
    """The checks of docs/contract.md for a directory whose ``private.uri`` names a token key."""
    name = uri_file(paths)
    conflict = both_sources(paths)
    source = (
        Finding("private.source", "fail", conflict)
        if conflict
        else Finding("private.source", "ok", f"a key in a PKCS#11 token, named by {name}")
    )
    file_only = [
        Finding(f"private.{n}", "skip", "a token key has no file")
        for n in ("format", "encrypted", "valid", "mode")
    ]
    found = [source]

    def rest(why: str, derived: bytes | None = None) -> list[Finding]:
        names = ("extractable", "bits", "exponent")
        skipped = [Finding(f"private.{n}", "skip", why) for n in names]
        return [*found, *skipped, *file_only, *_public(derived, None), *check_apikey(paths.apikey)]

    def _public(derived: bytes | None, matches: Finding | None) -> list[Finding]:
        checked = check_public(paths.public, derived, name, openssl)
        if matches is None:
            return checked
        return [
            matches if f.name == "public.matches" and f.status != "skip" else f for f in checked
        ]

    try:
        uri = read_uri_file(name)
    except BadInputError as exc:
        found.append(Finding("private.exists", "fail", str(exc)))
        return rest("no usable private.uri")
    token = open_token(openssl, options)  # LibreSSL, no module: the command fails (exit 3)
    try:
        pem, rsa_text = _public_facts(token, uri)
        private = _objects(token, uri, "--type", "privkey") if token.pin is not None else None
    except TokenError as exc:
        found.append(Finding("private.exists", "fail", str(exc)))
        return rest("key not found")
    block = frame_pem(pem)
    derived = block.der if block is not None else None
    if private is None:
        found.append(
            Finding(
                "private.exists",
                "ok",
                f"{uri.describe()}: its public object is there; the private one is not "
                f"checked without a PIN (set {PIN_ENV} or give a PIN file)",
            )
        )
        found.append(Finding("private.extractable", "skip", NO_PIN_HINT))
    else:
        hits = [o for o in private if o.matches(uri)]
        if len(hits) != 1:
            what = "no private key" if not hits else f"{len(hits)} private keys"
            found.append(Finding("private.exists", "fail", f"{what} matching {uri}"))
            return rest("key not found" if not hits else "ambiguous key", derived)
        found.append(Finding("private.exists", "ok", f"{uri.describe()}"))
        if hits[0].extractable:
            msg = f"the key can leave the token ({hits[0].access}); make a new one with keygen"
            found.append(Finding("private.extractable", "fail", msg))
        else:
            found.append(Finding("private.extractable", "ok", hits[0].access))
    found.extend(rsa_findings(parse_rsa_text(rsa_text)))
    matches = Finding("public.matches", "skip", NO_PIN_HINT)
    if token.pin is not None and os.path.isfile(paths.public):
        matches = _challenge(token, uri, paths.public)
    public = _public(derived, matches)
    return [*found, *file_only, *public, *check_apikey(paths.apikey)]


def _publish_public(
    token: Token,
    uri: Pkcs11Uri,
    paths: KeyPaths,
    *,
    force: bool,
    pem: bytes | None = None,
    extra: tuple[tuple[bytes, str], ...] = (),
    verify: Callable[[], None] | None = None,
) -> tuple[bytes, list[str]]:
    """Publish ``public.pem`` (``pem``, else exported from the token) and ``extra`` files.

    ``verify`` runs once they are in place; if it raises, they are taken back.
    """
    pem = token.public_pem(uri) if pem is None else pem
    directory = os.path.dirname(paths.public) or "."
    ensure_dir(directory)
    with private_tempdir(directory) as tmp:
        staged = []
        for data, final in ((pem, paths.public), *extra):
            path = os.path.join(tmp, os.path.basename(final))
            write_private(path, data, 0o644 if final == paths.public else 0o600)
            staged.append((path, final))
        with publishing(force) as pub:
            for path, final in staged:
                pub.publish(path, final)
            if verify is not None:
                verify()
            return pem, pub.backups


def derive_token_public(
    paths: KeyPaths,
    openssl: OpenSSL,
    *,
    force: bool = False,
    options: Pkcs11Options | None = None,
) -> tuple[str, list[str], bool]:
    """Export ``public.pem`` from the token key ``private.uri`` names: (message, backups, written).

    A ``public.pem`` that already is the token key's public half is left as it is.
    """
    conflict = both_sources(paths)
    if conflict:
        raise BadInputError(conflict)
    uri = read_uri_file(uri_file(paths))
    token = open_token(openssl, options)
    pem = None
    if os.path.lexists(paths.public):
        pem = token.public_pem(uri)  # exported once: compared here, then written
        ours = frame_pem(pem)
        try:
            there = frame_pem(read_bounded(paths.public))
        except BadInputError:
            there = None
        if ours is not None and there is not None and ours.der == there.der:
            msg = f"{paths.public} already is the public half of the token key {uri}: nothing to do"
            return msg, [], False
        if not force:
            refuse_existing([paths.public])
    _, backups = _publish_public(token, uri, paths, force=force, pem=pem)
    return f"Wrote {paths.public} (0644) from the token key {uri}", backups, True
