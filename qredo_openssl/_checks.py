"""The checks of docs/contract.md: Python frames PEM, OpenSSL parses keys (one call if healthy)."""

from __future__ import annotations

import os
import re
import shlex
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from ._apikey import parse_apikey_file
from ._errors import BadInputError, OpenSSLError
from ._files import NEXT_DIR, ROTATE_JOURNAL, KeyPaths
from ._openssl import OpenSSL
from ._pem import BEGIN_RE, BOM, READ_LIMIT, fingerprint, frame_pem, read_bounded
from ._pkcs11 import Pkcs11Options, has_token_key
from ._run import headline

Status = Literal["ok", "warn", "fail", "skip"]

_BITS_RE = re.compile(r"\((\d+) bit")
_EXPONENT_RE = re.compile(r"(?:publicExponent|Exponent):\s*(\d+)")
@dataclass(frozen=True)
class Finding:
    """One check's result; ``name`` is stable (docs/contract.md), ``message`` is for people."""

    name: str
    status: Status
    message: str


@dataclass(frozen=True)
class RsaFacts:
    """What ``openssl rsa -check -text -pubout`` said of a private key."""

    bits: int | None
    exponent: int | None
    public_der: bytes | None


def parse_rsa_text(text: str) -> RsaFacts:
    """Bits, exponent and the public key from OpenSSL's ``-text -pubout`` output; never raises.

    Accepts 1.x (``RSA Private-Key: (2048 bit)``, ``publicExponent``), 3.x
    (``Private-Key: (2048 bit, 2 primes)``) and public forms (``Public-Key:``, ``Exponent:``).
    """
    bits = _BITS_RE.search(text)
    exponent = _EXPONENT_RE.search(text)
    block = frame_pem(text.encode("utf-8", "replace"))
    return RsaFacts(
        int(bits.group(1)) if bits else None,
        int(exponent.group(1)) if exponent else None,
        block.der if block and block.label == "PUBLIC KEY" else None,
    )


def _mode_finding(name: str, path: str, fail: Status) -> Finding:
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if mode & 0o077:
        msg = f"{path} is mode {mode:04o}: group/other can access it; run: chmod 600 {path}"
        return Finding(name, fail, msg)
    return Finding(name, "ok", f"mode {mode:04o}")


def _read(path: str, what: str, prefix: str) -> tuple[bytes | None, list[Finding]]:
    """Read a key file for checking; a finding (not an exception) for every way it can be absent."""
    if not os.path.lexists(path):
        return None, [Finding(f"{prefix}.exists", "fail", f"no {what} at {path}")]
    if not os.path.exists(path):
        return None, [Finding(f"{prefix}.exists", "fail", f"{path} is a dangling symlink")]
    if not os.path.isfile(path):
        kind = "a directory" if os.path.isdir(path) else "not a regular file"
        return None, [Finding(f"{prefix}.exists", "fail", f"{path} is {kind}, not a key file")]
    try:
        data = read_bounded(path)
    except BadInputError as exc:  # a FIFO swapped in, no permission...
        return None, [Finding(f"{prefix}.exists", "fail", str(exc))]
    link = f" (a symlink to {os.path.realpath(path)})" if os.path.islink(path) else ""
    return data, [Finding(f"{prefix}.exists", "ok", f"{path}{link}")]


def _frame_problem(path: str, data: bytes) -> str | None:
    """Why ``data`` is not a PEM file at all, or None."""
    if len(data) > READ_LIMIT:
        return f"{path} is over {READ_LIMIT // 1024} KiB: not a key file"
    if not data.strip():
        return f"{path} is empty"
    if not BEGIN_RE.search(data):
        if data[:1] == b"\x30":
            return f"{path} is DER (binary), not PEM"
        return f"{path} is not PEM (no -----BEGIN line)"
    return None


_PRIVATE_LABELS = {
    "PRIVATE KEY": "is PKCS#8 (BEGIN PRIVATE KEY); run: qredo-openssl convert",
    "ENCRYPTED PRIVATE KEY": "is encrypted PKCS#8 (BEGIN ENCRYPTED PRIVATE KEY)",
    "EC PRIVATE KEY": "is an EC key; Qredo needs RSA: run qredo-openssl keygen",
    "PUBLIC KEY": "is a public key, not a private key",
    "RSA PUBLIC KEY": "is a public key, not a private key",
}


def check_private(
    path: str, openssl: OpenSSL, *, consistency: bool = True
) -> tuple[list[Finding], bytes | None]:
    """``private.*`` findings and the public key DER OpenSSL derived (None if it could not).

    ``consistency=False`` leaves out ``rsa -check``, which re-proves the primes (about 60 ms,
    most of a check's cost): only for a key ``genrsa`` has just made and proved itself.
    """
    data, found = _read(path, "private key", "private")
    if data is None:
        skipped = ("format", "encrypted", "valid", "bits", "exponent", "mode")
        return found + [Finding(f"private.{n}", "skip", "no private key") for n in skipped], None
    mode = _mode_finding("private.mode", path, "fail")

    def skip(why: str, *names: str) -> list[Finding]:
        return [*(Finding(f"private.{n}", "skip", why) for n in names), mode]

    # 1.x ``rsa`` writes PKCS#1 and has no -traditional; 3.x needs it (unknown: say it).
    trad = "" if openssl.version.needs_traditional is False else " -traditional"
    problem = _frame_problem(path, data)
    block = frame_pem(data) if problem is None else None
    is_rsa = block is not None and block.der is not None and block.label == "RSA PRIVATE KEY"
    if problem is not None and problem.endswith("not PEM") and data[:1] == b"\x30":
        problem += f"; run: openssl rsa -inform DER -in {path}{trad} -out private.pem"
    elif problem is None and block is None:
        begin = BEGIN_RE.search(data)
        what = begin.group(1).decode() if begin else "PEM"
        problem = f"{path} is truncated: BEGIN {what} without its END line"
    elif block is not None and block.der is None:
        problem = f"{path} is corrupt: its Base64 body does not decode"
    elif block is not None and block.label == "PRIVATE KEY" and not block.rsa_private:
        problem = f"{path} is PKCS#8 but not an RSA key (EC? Ed25519?); Qredo needs RSA: "
        problem += "run qredo-openssl keygen"
    elif block is not None and block.label != "RSA PRIVATE KEY":
        is_rsa = block.label == "PRIVATE KEY"  # PKCS#8 RSA: OpenSSL reads it, check the rest
        why = _PRIVATE_LABELS.get(block.label, f"is a PEM {block.label}, not an RSA PRIVATE KEY")
        problem = f"{path} {why}"
    elif data.startswith(BOM):
        # Go's pem.Decode (the signing client) and OpenSSL 1.x look for "-----BEGIN" at the
        # start of a line, so a BOM hides the key from them; OpenSSL 3 skips it.
        problem = f"{path} starts with a UTF-8 BOM, which hides the key from the signing "
        problem += "client's PEM decoder; run: qredo-openssl convert"
    if problem is not None:
        found.append(Finding("private.format", "fail", problem))
    else:
        crlf = " with CRLF line endings (accepted)" if b"\r\n" in data else ""
        found.append(Finding("private.format", "ok", f"PKCS#1 PEM (RSA PRIVATE KEY){crlf}"))

    if block is not None and block.encrypted:
        fix = f"openssl rsa -in {path}{trad} -out private.plain.pem (asks for the passphrase)"
        msg = f"{path} is encrypted with a passphrase; the signing client needs it plain: {fix}"
        found.append(Finding("private.encrypted", "fail", msg))
        return found + skip("encrypted key not opened", "valid", "bits", "exponent"), None
    if not is_rsa:
        return found + skip("see private.format", "encrypted", "valid", "bits", "exponent"), None
    found.append(Finding("private.encrypted", "ok", "not encrypted"))

    try:
        check = ("-check",) if consistency else ()
        out = openssl.run("rsa", "-in", path, *check, "-text", "-pubout")
    except OpenSSLError as exc:
        why = headline(exc.stderr) or str(exc)
        found.append(Finding("private.valid", "fail", f"OpenSSL cannot use {path}: {why}"))
        return found + skip("key not loaded", "bits", "exponent"), None
    text = out.stdout.decode("utf-8", "replace")
    facts = parse_rsa_text(text)
    if not consistency:
        found.append(Finding("private.valid", "ok", "OpenSSL loads it (fresh from genrsa)"))
    elif "RSA key ok" in text:
        found.append(Finding("private.valid", "ok", "OpenSSL loads it: RSA key ok"))
    else:  # OpenSSL 3.0 exits 0 here, printing "RSA key not ok" and the reason on stderr
        why = _error_reason(out.stderr.decode("utf-8", "replace")) or "RSA key not ok"
        msg = f"{path} fails OpenSSL's consistency check ({why}): the key is corrupt"
        found.append(Finding("private.valid", "fail", msg))
    found.append(_bits_finding(facts.bits))
    if facts.exponent == 65537:
        found.append(Finding("private.exponent", "ok", "e = 65537"))
    else:
        found.append(Finding("private.exponent", "fail", f"e = {facts.exponent}, not 65537"))
    return [*found, mode], facts.public_der


def _error_reason(stderr: str) -> str:
    """The reason words of OpenSSL's first error-stack line, e.g. ``n does not equal p q``.

    1.1.1 and 3.x both write ``<id>:error:<code>:<lib>:<func>:<reason>:<file>:<line>:``.
    """
    for line in stderr.splitlines():
        parts = line.split(":")
        if len(parts) > 5 and parts[1] == "error":
            return parts[5].strip()
    return ""


def _bits_finding(bits: int | None) -> Finding:
    if bits == 2048:
        return Finding("private.bits", "ok", "2048 bits")
    if bits in (3072, 4096):
        return Finding("private.bits", "warn", f"{bits} bits; Qredo documents 2048")
    return Finding("private.bits", "fail", f"{bits} bits; Qredo needs 2048")


def check_public(path: str, derived: bytes | None, private: str, openssl: OpenSSL) -> list[Finding]:
    """``public.*`` findings; ``derived`` is the public key DER of the private key, if known."""
    data, found = _read(path, "public key", "public")
    if data is None:
        return [
            *found,
            Finding("public.format", "skip", "no public key"),
            Finding("public.matches", "skip", "no public key"),
        ]
    problem = _frame_problem(path, data)
    block = frame_pem(data) if problem is None else None
    if problem is None and (block is None or block.der is None):
        problem = f"{path} is truncated or corrupt"
    elif problem is None and block is not None and block.label != "PUBLIC KEY":
        fix = "run: qredo-openssl pubkey --force"
        problem = f"{path} is a PEM {block.label}, not a PUBLIC KEY (SubjectPublicKeyInfo); {fix}"
    if problem is not None:
        return [
            *found,
            Finding("public.format", "fail", problem),
            Finding("public.matches", "skip", "not a public key"),
        ]
    assert block is not None
    fp = f"; fingerprint {fingerprint(data)}"  # the one keygen and pubkey print
    if derived is not None and block.der == derived:
        return [
            *found,
            Finding("public.format", "ok", f"PEM PUBLIC KEY (SubjectPublicKeyInfo), RSA{fp}"),
            Finding("public.matches", "ok", f"the public half of {private}"),
        ]
    try:  # only now is a second OpenSSL call needed: is it an RSA key at all?
        out = openssl.run("rsa", "-pubin", "-in", path, "-noout", "-text")
    except OpenSSLError as exc:
        why = headline(exc.stderr) or str(exc)
        return [
            *found,
            Finding("public.format", "fail", f"{path} is not an RSA public key: {why}"),
            Finding("public.matches", "skip", "not an RSA public key"),
        ]
    bits = parse_rsa_text(out.stdout.decode("utf-8", "replace")).bits
    found.append(Finding("public.format", "ok", f"PEM PUBLIC KEY, RSA {bits} bits{fp}"))
    if derived is None:
        found.append(Finding("public.matches", "skip", "the private key could not be read"))
    else:
        msg = f"{path} is not the public half of {private}; run: qredo-openssl pubkey --force"
        found.append(Finding("public.matches", "fail", msg))
    return found


def check_apikey(path: str) -> list[Finding]:
    """``apikey.*`` findings; an absent API key is a skip (it is optional for key generation)."""
    if not os.path.lexists(path):
        skip = "no API key file (optional; save it with: qredo-openssl apikey)"
        return [Finding("apikey.exists", "skip", skip)] + [
            Finding(f"apikey.{n}", "skip", "no API key file") for n in ("format", "mode")
        ]
    data, found = _read(path, "API key", "apikey")
    if data is None:
        return found + [
            Finding(f"apikey.{n}", "skip", "no API key file") for n in ("format", "mode")
        ]
    try:
        _, info = parse_apikey_file(data, path)
    except BadInputError as exc:
        found.append(Finding("apikey.format", "fail", str(exc)))
    else:
        kid = f", key_id {info.key_id}" if info.key_id else ""
        found.append(Finding("apikey.format", "ok", f"one line of {info.alphabet} Base64{kid}"))
    found.append(_mode_finding("apikey.mode", path, "warn"))
    return found


def check_rotation(directory: str) -> list[Finding]:
    """``rotate.pending`` (warn) while a key rotation is in progress; nothing otherwise."""
    d = shlex.quote(directory)
    journal = os.path.join(directory, ROTATE_JOURNAL)
    if os.path.lexists(journal):
        msg = f"a rotate finish was cut off half-way ({journal}); run: qredo-openssl rotate "
        return [Finding("rotate.pending", "warn", msg + f"finish {d}")]
    nxt = os.path.join(directory, NEXT_DIR)
    if os.path.lexists(nxt):
        msg = f"a key rotation is in progress ({nxt} holds the next pair); after uploading its "
        msg += f"public key run: qredo-openssl rotate finish {d}"
        return [Finding("rotate.pending", "warn", msg)]
    return []


def check_keys(
    paths: KeyPaths, openssl: OpenSSL, *, pkcs11: Pkcs11Options | None = None
) -> list[Finding]:
    """Every check of docs/contract.md on a key directory, in a stable order.

    A directory whose ``private.uri`` names a key in a PKCS#11 token is checked through it.
    """
    if has_token_key(paths):
        from ._pkcs11_keys import check_token_key  # built on this module's checks

        return [*check_token_key(paths, openssl, pkcs11), *check_rotation(paths.dir)]
    private, derived = check_private(paths.private, openssl)
    return [
        *private,
        *check_public(paths.public, derived, paths.private, openssl),
        *check_apikey(paths.apikey),
        *check_rotation(paths.dir),
    ]


def any_failed(findings: Sequence[Finding]) -> bool:
    """True when any finding failed (``check`` then exits 1)."""
    return any(f.status == "fail" for f in findings)
