"""Token keys: generate one inside the token, export its public key, and check a directory.

A token key never leaves the token: it is made there by ``pkcs11-tool --keypairgen``
(sensitive, and never extractable, as it has no ``--extractable``), its public half is
exported by OpenSSL, and the directory gets ``private.uri`` naming it.
"""

from __future__ import annotations

import os
import re
import secrets
import tempfile
from collections.abc import Callable
from dataclasses import dataclass

from ._checks import Finding, check_apikey, check_public, ours, parse_rsa_text, rsa_findings
from ._defaults import ALLOWED_BITS, QREDO_BITS
from ._errors import BadInputError, Interrupted, QredoOpenSSLError, RefusedOverwriteError
from ._files import (
    KeyPaths,
    ensure_dir,
    private_tempdir,
    publishing,
    refuse_existing,
    write_error,
    write_private,
)
from ._openssl import OpenSSL
from ._pem import fingerprint, frame_pem, read_bounded
from ._pkcs11 import PIN_ENV, Pkcs11Options, Token, both_sources, open_token, uri_file
from ._pkcs11_errors import TokenError
from ._pkcs11_uri import Pkcs11Uri, parse_key_uri, read_uri_file
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


@dataclass(frozen=True)
class TokenKeygenResult:
    """A key made in a token: the URI written, the public key, and its checks."""

    paths: KeyPaths
    uri: str
    uri_file: str
    bits: int
    fingerprint: str
    public_pem: str
    findings: tuple[Finding, ...]


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


def generate_token_key(
    paths: KeyPaths,
    openssl: OpenSSL,
    uri_text: str,
    *,
    bits: int = QREDO_BITS,
    options: Pkcs11Options | None = None,
) -> TokenKeygenResult:
    """Generate an RSA key inside the token ``uri_text`` names; write public.pem and private.uri.

    No object with the same label or id may exist in the token (exit 4): pkcs11-tool would
    silently make a second one. Without an id in the URI a random 8-byte one is chosen, so
    that ``private.uri`` names exactly this key.
    """
    if bits not in ALLOWED_BITS:
        msg = f"--bits {bits} is not allowed; use 2048 (or 3072/4096)"
        raise BadInputError(msg)
    uri = parse_key_uri(uri_text, "the key URI")
    if uri.object is None:
        msg = "the key URI names no object label (object=LABEL); a new key needs one"
        raise BadInputError(msg)
    given_id = uri.id is not None
    if uri.id is None:
        uri = Pkcs11Uri((*uri.path, ("id", secrets.token_bytes(8))), uri.query)
    name = uri_file(paths)
    taken_files = [p for p in (paths.private, name, paths.public) if os.path.lexists(p)]
    if taken_files:
        msg = f"{', '.join(taken_files)} already there; refusing to overwrite (move it away, "
        msg += "or use another directory)"
        raise RefusedOverwriteError(msg)
    token = open_token(openssl, options)
    token.require_pin(uri)
    slots = token.tool_run("listing tokens", None, ["--list-token-slots"]).stdout.decode()
    labels = re.findall(r"token label\s*:\s*(.*?)\s*$", slots, re.MULTILINE)
    if labels.count(str(uri.token)) != 1:
        why = "no token" if not labels.count(str(uri.token)) else "more than one token"
        msg = f"{why} labelled {uri.token!r} (module {token.module})"
        raise TokenError(msg)
    taken = [o for o in _objects(token, uri) if o.label == uri.object or o.id == uri.id]
    if taken:
        which = f"label {uri.object!r}" + (f" or id {uri.id_hex}" if given_id else "")
        msg = f"token {uri.token!r} already has an object with {which}; refusing to make "
        msg += "another or replace it (choose another object=LABEL)"
        raise RefusedOverwriteError(msg)
    assert uri.object is not None
    assert uri.id_hex is not None
    keypairgen = ["--keypairgen", "--key-type", f"rsa:{bits}", "--label", uri.object,
                  "--id", uri.id_hex, "--usage-sign", "--sensitive"]  # fmt: skip
    line = (str(uri) + "\n").encode()
    findings: list[Finding] = []

    def verify() -> None:  # with the files in place; a failure takes them back
        findings.extend(check_token_key(paths, openssl, options))
        failed = [f for f in findings if f.status == "fail"]
        if failed:
            msg = f"the new key failed its check {failed[0].name}: {failed[0].message}"
            raise TokenError(msg)

    holds = "may hold"  # an interrupted pkcs11-tool may or may not have made it
    try:
        token.tool_run(f"generating an RSA key in token {uri.token!r}", uri, keypairgen,
                       login=True)  # fmt: skip
        holds = "holds"
        try:
            pem, _ = _publish_public(token, uri, paths, force=False, extra=((line, name),),
                                     verify=verify)  # fmt: skip
        except (QredoOpenSSLError, OSError) as exc:
            error = exc if isinstance(exc, QredoOpenSSLError) else write_error(paths.public, exc)
            raise _undo_keygen(token, uri, paths, error, options) from None
    except (KeyboardInterrupt, Interrupted):
        # Not removed on the way out (a second Ctrl-C would cut that short): said, with how.
        msg = f"no file was written; token {uri.token!r} {holds} the new key {_named(uri)}; "
        msg += "remove the private one (then the public one: the same with --type pubkey)"
        stopped = Interrupted(msg)
        stopped.fix = _removal(token, uri, options)
        raise stopped from None
    return TokenKeygenResult(
        paths, str(uri), name, bits, fingerprint(pem), pem.decode(), tuple(findings)
    )


def _undo_keygen(
    token: Token, uri: Pkcs11Uri, paths: KeyPaths, error: QredoOpenSSLError,
    options: Pkcs11Options | None,
) -> QredoOpenSSLError:  # fmt: skip
    """``error`` of a step after the key was made: the key removed from the token when no
    file names it, else what is left there and the command that removes it (``fix``)."""
    name = uri_file(paths)
    try:  # still there when taking the files back failed; anything unreadable may name it too
        named = read_bounded(name).strip() == str(uri).encode()
    except BadInputError:
        named = os.path.lexists(name)
    why = f"{name} names it" if named else _remove_new_key(token, uri)
    if why is None:
        msg = f"{error}; nothing was kept: the new key was removed from token {uri.token!r}"
        return type(error)(msg)
    msg = f"{error}; the new key stays in token {uri.token!r} as {_named(uri)}, not removed: "
    msg += f"{why}; remove the private one (then the public one: the same with --type pubkey)"
    left = type(error)(msg)
    left.fix = _removal(token, uri, options)
    return left


def _named(uri: Pkcs11Uri) -> str:
    return f"{uri} (a private and a public key object, label {uri.object!r}, id {uri.id_hex})"


def _removal(token: Token, uri: Pkcs11Uri, options: Pkcs11Options | None) -> tuple[str, ...]:
    """The command that removes the private key object ``keygen`` made (``--type pubkey``:
    its public one)."""
    try:
        tool = token.tool()
    except TokenError:
        tool = "pkcs11-tool"
    pin = ("--pin", f"env:{PIN_ENV}") if options is None or options.pin_file is None else ()
    return (
        tool, "--module", token.module, "--token-label", str(uri.token), "--login", *pin,
        "--delete-object", "--type", "privkey", "--id", str(uri.id_hex), "--label", str(uri.object),
    )  # fmt: skip


def _remove_new_key(token: Token, uri: Pkcs11Uri) -> str | None:
    """Remove the objects ``keygen`` just made (its label and id, unique in the token before);
    None when done, else why not. Anything else with that label or id: nothing is removed."""
    kinds = {"Private Key": "privkey", "Public Key": "pubkey"}
    try:
        same = [o for o in _objects(token, uri) if o.label == uri.object or o.id == uri.id]
        found = sorted(o.kind for o in same)
        exact = all(o.label == uri.object and o.id == uri.id for o in same)
        if not exact or found not in (["Private Key"], ["Private Key", "Public Key"]):
            return f"{len(same)} objects in the token have that label or id, not just the new key's"
        for kind in found:
            args = ["--delete-object", "--type", kinds[kind], "--id", str(uri.id_hex)]
            what = f"removing the new key from token {uri.token!r}"
            token.tool_run(what, uri, [*args, "--label", str(uri.object)], login=True)
        if any(o.label == uri.object or o.id == uri.id for o in _objects(token, uri)):
            return "it is still listed after its removal"
    except TokenError as exc:
        return str(exc)
    return None


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
