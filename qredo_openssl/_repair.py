"""Repairing an existing setup: ``pubkey`` derives ``public.pem``, ``convert`` makes PKCS#1."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass

from ._checks import Finding, check_private
from ._errors import BadInputError, OpenSSLError
from ._files import KeyPaths, ensure_dir, private_tempdir, publishing, refuse_existing
from ._journal import refuse_mid_rotation
from ._keygen import produced
from ._openssl import OpenSSL, TraditionalMode, decide_traditional
from ._pem import frame_pem, read_bounded
from ._pkcs11 import Pkcs11Options, has_token_key
from ._pkcs11_keys import derive_token_public

_ENCRYPTED = "private.encrypted"


def _usable_private(paths: KeyPaths, openssl: OpenSSL) -> tuple[dict[str, Finding], bytes]:
    """Check the private key is an unencrypted RSA key OpenSSL loads; bad input raises (exit 1).

    ``private.valid`` must be ok: then OpenSSL read it as RSA, whatever the wrapping (PKCS#1,
    PKCS#8, a BOM). Otherwise the first failed finding says why (EC, DER, encrypted...).
    """
    findings, derived = check_private(paths.private, openssl)
    by_name = {f.name: f for f in findings}
    valid = by_name["private.valid"]
    if valid.status != "ok" or derived is None:
        # An encrypted key's own finding carries the decrypt command: say that one first.
        fails = [f for f in findings if f.status == "fail"]
        fails.sort(key=lambda f: f.name != _ENCRYPTED)
        first = fails[0] if fails else valid
        err = BadInputError(first.message)
        err.fix = first.fix
        raise err
    return by_name, derived


@dataclass(frozen=True)
class RepairResult:
    """What ``pubkey`` or ``convert`` did: the file written (None: nothing to do) and backups."""

    written: str | None
    backups: tuple[str, ...]
    commands: tuple[tuple[str, ...], ...]
    message: str
    warnings: tuple[Finding, ...] = ()  # what else the signing client will trip on


def derive_public(
    paths: KeyPaths, openssl: OpenSSL, *, force: bool = False,
    pkcs11: Pkcs11Options | None = None,
) -> RepairResult:  # fmt: skip
    """Step 2 alone: write ``public.pem`` from an unencrypted RSA private key (PKCS#1 or #8).

    A ``public.pem`` that already is the public half of the private key is left as it is
    (nothing written, ``written`` None), with or without ``force``. With ``DIR/private.uri``,
    the public key is exported from the token key it names.
    """
    refuse_mid_rotation(paths)
    if has_token_key(paths):
        message, backups, written = derive_token_public(
            paths, openssl, force=force, options=pkcs11
        )
        return RepairResult(paths.public if written else None, tuple(backups), (), message)
    if os.path.lexists(paths.public):
        try:
            found, derived = _usable_private(paths, openssl)
        except BadInputError:
            if not force:  # refused for the existing file first, as always
                refuse_existing([paths.public])
            raise
        if _is_public_of(paths.public, derived):
            msg = f"{paths.public} already is the public half of {paths.private}: nothing to do"
            return RepairResult(None, (), (), msg)
        if not force:
            refuse_existing([paths.public])
    else:
        found, derived = _usable_private(paths, openssl)
    ensure_dir(os.path.dirname(paths.public) or ".")
    source = os.path.abspath(paths.private)
    argv = ("rsa", "-in", source, "-outform", "PEM", "-pubout", "-out", "public.pem")
    with private_tempdir(os.path.dirname(paths.public) or ".") as tmp:
        openssl.run(*argv, cwd=tmp)
        public = produced(tmp, "public.pem", (openssl.path, *argv))
        os.chmod(public, 0o644)
        with publishing(force) as pub:
            pub.publish(public, paths.public)
            _verify_public(paths, derived)
    # The public key is right either way; say what else the signing client will trip on.
    warnings = tuple(
        found[n] for n in ("private.format", "private.mode") if found[n].status == "fail"
    )
    return RepairResult(
        paths.public, tuple(pub.backups), ((openssl.path, *argv),),
        f"wrote {paths.public}, the public half of {paths.private}", warnings,
    )  # fmt: skip


def _is_public_of(path: str, derived: bytes) -> bool:
    # Any doubt (unreadable, not PEM) is "no": the caller then refuses or replaces it.
    try:
        block = frame_pem(read_bounded(path))
    except BadInputError:
        return False
    return block is not None and block.der == derived


def _verify_public(paths: KeyPaths, derived: bytes) -> None:
    block = frame_pem(read_bounded(paths.public))
    if block is None or block.der != derived:
        msg = f"OpenSSL wrote a {paths.public} that is not the public half of {paths.private}"
        raise OpenSSLError(msg)


def convert_private(
    paths: KeyPaths, openssl: OpenSSL, traditional: TraditionalMode = "auto"
) -> RepairResult:
    """Rewrite a PKCS#8 ``private.pem`` as PKCS#1; the original is kept as a backup.

    ``rsa -traditional`` on OpenSSL 3, plain ``rsa`` on 1.x and LibreSSL (whose ``rsa``
    writes PKCS#1 and rejects the flag). The key itself is unchanged, so ``public.pem`` still
    matches.
    """
    refuse_mid_rotation(paths)
    found, derived = _usable_private(paths, openssl)
    if found["private.format"].status != "fail":
        return RepairResult(None, (), (), f"{paths.private} is already PKCS#1: nothing to do")
    decision = decide_traditional(openssl, traditional)
    flag = ("-traditional",) if decision.use else ()
    argv = ("rsa", "-in", os.path.abspath(paths.private), *flag, "-out", "private.pem")
    with private_tempdir(os.path.dirname(paths.private) or ".") as tmp:
        openssl.run(*argv, cwd=tmp)
        new = produced(tmp, "private.pem", (openssl.path, *argv))
        old_mode = stat.S_IMODE(os.lstat(paths.private).st_mode)
        with publishing(force=True) as pub:
            pub.publish(new, paths.private, secret=True)
            after, again = check_private(paths.private, openssl)
            bad = next((f for f in after if f.name == "private.format" and f.status != "ok"), None)
            if bad is not None or again != derived:
                why = "it is not the same key" if bad is None else "it is not PKCS#1"
                msg = f"openssl rsa did not convert {paths.private}: {why}; it is left unchanged"
                if bad is not None and not decision.use:
                    msg += " (OpenSSL 3 writes PKCS#8 unless given -traditional:"
                    msg += " try --traditional always)"
                raise OpenSSLError(msg)
    backup = pub.backups[0]
    msg = f"converted {paths.private} to PKCS#1 (the same key); the original is kept as {backup}"
    if old_mode & 0o077:  # a backup is still a private key: the publisher made it 0600
        msg += f" (now mode 0600, was {old_mode:04o})"
    return RepairResult(paths.private, tuple(pub.backups), ((openssl.path, *argv),), msg)
