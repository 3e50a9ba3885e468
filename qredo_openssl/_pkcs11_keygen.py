"""``keygen --pkcs11``: a new RSA key made inside the token, its files, and what a failure leaves.

The key is made by ``pkcs11-tool --keypairgen`` (sensitive, never extractable), its public
half exported and checked (:mod:`._pkcs11_keys`), and ``private.uri`` written to name it. A
later step that fails takes the files back and removes exactly that key, or says what stays.
"""

from __future__ import annotations

import os
import re
import secrets
from dataclasses import dataclass

from ._checks import Finding
from ._defaults import ALLOWED_BITS, QREDO_BITS
from ._errors import BadInputError, Interrupted, QredoOpenSSLError, RefusedOverwriteError
from ._files import KeyPaths, write_error
from ._journal import refuse_mid_rotation
from ._openssl import OpenSSL
from ._pem import fingerprint, read_bounded
from ._pkcs11 import PIN_ENV, Pkcs11Options, Token, open_token, uri_file
from ._pkcs11_errors import TokenError
from ._pkcs11_keys import _objects, _publish_public, check_token_key
from ._pkcs11_uri import Pkcs11Uri, parse_key_uri


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
    refuse_mid_rotation(paths)
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
    failure = ""  # a step that failed before the interrupt, whose removal it cut short
    try:
        token.tool_run(f"generating an RSA key in token {uri.token!r}", uri, keypairgen,
                       login=True)  # fmt: skip
        holds = "holds"
        try:
            pem, _ = _publish_public(token, uri, paths, force=False, extra=((line, name),),
                                     verify=verify)  # fmt: skip
        except (QredoOpenSSLError, OSError) as exc:
            error = exc if isinstance(exc, QredoOpenSSLError) else write_error(paths.public, exc)
            failure, holds = f"{error}; removing the new key was cut off; ", "may still hold"
            raise _undo_keygen(token, uri, paths, error, options) from None
    except (KeyboardInterrupt, Interrupted):
        # Nothing is removed on the way out (a second Ctrl-C would cut that short); what is
        # there is said, looked at rather than assumed (the files may be in place already).
        left = [p for p in (name, paths.public) if os.path.lexists(p)]
        if _names_key(name, uri):
            stopped = Interrupted(f"the new key {uri} was made and {name} names it")
            stopped.fix = ("qredo-openssl", "check", paths.dir)
        else:
            msg = failure + ("no file is left" if not left else f"{', '.join(left)} left behind")
            msg += f"; token {uri.token!r} {holds} the new key {_named(uri)}; remove the "
            msg += "private one (then the public one: the same with --type pubkey)"
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
    why = f"{name} names it" if _names_key(name, uri) else _remove_new_key(token, uri)
    if why is None:
        msg = f"{error}; nothing was kept: the new key was removed from token {uri.token!r}"
        return type(error)(msg)
    msg = f"{error}; the new key stays in token {uri.token!r} as {_named(uri)}, not removed: "
    msg += f"{why}; remove the private one (then the public one: the same with --type pubkey)"
    left = type(error)(msg)
    left.fix = _removal(token, uri, options)
    return left


def _names_key(name: str, uri: Pkcs11Uri) -> bool:
    """Whether ``name`` (a ``private.uri``) names the key; one that cannot be read may."""
    try:
        return read_bounded(name).strip() == str(uri).encode()
    except BadInputError:
        return os.path.lexists(name)


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
