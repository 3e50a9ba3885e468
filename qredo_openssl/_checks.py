"""The checks of docs/contract.md: Python frames PEM, OpenSSL parses keys (one call if healthy)."""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from ._apikey import parse_apikey_file
from ._errors import BadInputError, OpenSSLError
from ._files import NEXT_DIR, ROTATE_JOURNAL, TEMP_PREFIX
from ._openssl import OpenSSL, traditional_args
from ._pem import BEGIN_RE, BOM, READ_LIMIT, fingerprint, frame_pem, read_bounded
from ._run import headline

Status = Literal["ok", "warn", "fail", "skip"]
Fix = tuple[str, ...]

_BITS_RE = re.compile(r"\((\d+) bit")
_EXPONENT_RE = re.compile(r"(?:publicExponent|Exponent):\s*(\d+)")


@dataclass(frozen=True)
class Finding:
    """One check's result; ``name`` is stable (docs/contract.md), ``message`` is for people."""

    name: str
    status: Status
    message: str
    fix: tuple[str, ...] | None = None  # a command that fixes it (argv), for the CLI to show


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


def ours(command: str, *extra: str, private: str | None = None, public: str | None = None) -> Fix:
    """``qredo-openssl COMMAND ... DIR`` for the files at fault: the DIR when they have their
    usual names there, else ``--private``/``--public`` naming them."""
    named = (("private", private, "private.pem"), ("public", public, "public.pem"))
    given = [(o, p, n) for o, p, n in named if p is not None]
    dirs = {os.path.dirname(p) or "." for _, p, _ in given}
    if len(dirs) == 1 and all(os.path.basename(p) == n for _, p, n in given):
        return ("qredo-openssl", command, *extra, dirs.pop())
    paths = [a for o, p, _ in given for a in (f"--{o}", p)]
    return ("qredo-openssl", command, *extra, *paths)


def _mode_finding(name: str, path: str, fail: Status) -> Finding:
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if mode & 0o077:
        msg = f"{path} is mode {mode:04o}: group/other can access it"
        return Finding(name, fail, msg, ("chmod", "600", path))
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
    "PRIVATE KEY": "is PKCS#8 (BEGIN PRIVATE KEY)",
    "ENCRYPTED PRIVATE KEY": "is encrypted PKCS#8 (BEGIN ENCRYPTED PRIVATE KEY)",
    "EC PRIVATE KEY": "is an EC key; Qredo needs RSA (a new key, uploaded again)",
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
    found, facts = inspect_private(path, openssl, consistency=consistency)
    return found, facts.public_der if facts is not None else None


def inspect_private(
    path: str, openssl: OpenSSL, *, consistency: bool = True
) -> tuple[list[Finding], RsaFacts | None]:
    """:func:`check_private`, with what OpenSSL said of the key as data (None: not loaded)."""
    data, found = _read(path, "private key", "private")
    if data is None:
        skipped = ("format", "encrypted", "valid", "bits", "exponent", "mode")
        return found + [Finding(f"private.{n}", "skip", "no private key") for n in skipped], None
    mode = _mode_finding("private.mode", path, "fail")

    def skip(why: str, *names: str) -> list[Finding]:
        return [*(Finding(f"private.{n}", "skip", why) for n in names), mode]

    problem = _frame_problem(path, data)
    block = frame_pem(data) if problem is None else None
    is_rsa = block is not None and block.der is not None and block.label == "RSA PRIVATE KEY"
    fix: Fix | None = None
    new_key = ours("keygen", "--force", private=path)
    if problem is not None and problem.endswith("not PEM") and data[:1] == b"\x30":
        problem += f" (the PEM form goes to {path}.pem; then move it to {path})"
        trad = traditional_args(openssl)
        fix = ("openssl", "rsa", "-inform", "DER", "-in", path, *trad, "-out", f"{path}.pem")
    elif problem is None and block is None:
        begin = BEGIN_RE.search(data)
        what = begin.group(1).decode() if begin else "PEM"
        problem = f"{path} is truncated: BEGIN {what} without its END line"
    elif block is not None and block.der is None:
        problem = f"{path} is corrupt: its Base64 body does not decode"
    elif block is not None and block.label == "PRIVATE KEY" and not block.rsa_private:
        problem = f"{path} is PKCS#8 but not an RSA key (EC? Ed25519?); Qredo needs RSA "
        problem += "(a new key, uploaded again)"
        fix = new_key
    elif block is not None and block.label != "RSA PRIVATE KEY":
        is_rsa = block.label == "PRIVATE KEY"  # PKCS#8 RSA: OpenSSL reads it, check the rest
        why = _PRIVATE_LABELS.get(block.label, f"is a PEM {block.label}, not an RSA PRIVATE KEY")
        problem = f"{path} {why}"
        fix = {"PRIVATE KEY": ours("convert", private=path), "EC PRIVATE KEY": new_key}.get(
            block.label
        )
    elif data.startswith(BOM):
        # Go's pem.Decode (the signing client) and OpenSSL 1.x look for "-----BEGIN" at the
        # start of a line, so a BOM hides the key from them; OpenSSL 3 skips it.
        problem = f"{path} starts with a UTF-8 BOM, which hides the key from the signing "
        problem += "client's PEM decoder"
        fix = ours("convert", private=path)
    if problem is not None:
        found.append(Finding("private.format", "fail", problem, fix))
    else:
        crlf = " with CRLF line endings (accepted)" if b"\r\n" in data else ""
        found.append(Finding("private.format", "ok", f"PKCS#1 PEM (RSA PRIVATE KEY){crlf}"))

    if block is not None and block.encrypted:
        plain = os.path.join(os.path.dirname(path), "private.plain.pem")
        msg = f"{path} is encrypted with a passphrase; the signing client needs it plain "
        msg += f"(this asks for the passphrase and writes {plain})"
        decrypt = ("openssl", "rsa", "-in", path, *traditional_args(openssl), "-out", plain)
        found.append(Finding("private.encrypted", "fail", msg, decrypt))
        return found + skip("encrypted key not opened", "valid", "bits", "exponent"), None
    if not is_rsa:
        return found + skip("see private.format", "encrypted", "valid", "bits", "exponent"), None
    found.append(Finding("private.encrypted", "ok", "not encrypted"))

    try:
        check = ("-check",) if consistency else ()
        name, where = _relative(path)
        out = openssl.run("rsa", "-in", name, *check, "-text", "-pubout", cwd=where)
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
    return [*found, *rsa_findings(facts), mode], facts


def _relative(path: str) -> tuple[str, str | None]:
    """``path`` for OpenSSL's argv, and the folder to run it in (None: here).

    A folder whose name is not UTF-8 cannot be put into argv, but can be the child's cwd:
    then the file is named ``./NAME`` (never read as an option) from there.
    """
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return "./" + os.path.basename(path), os.path.dirname(os.path.abspath(path))
    return path, None


def _error_reason(stderr: str) -> str:
    """The reason words of OpenSSL's first error-stack line, e.g. ``n does not equal p q``.

    1.1.1 and 3.x both write ``<id>:error:<code>:<lib>:<func>:<reason>:<file>:<line>:``.
    """
    for line in stderr.splitlines():
        parts = line.split(":")
        if len(parts) > 5 and parts[1] == "error":
            return parts[5].strip()
    return ""


def rsa_findings(facts: RsaFacts) -> list[Finding]:
    """``private.bits`` and ``private.exponent``: one rule for a key file and a token key."""
    if facts.bits == 2048:
        bits = Finding("private.bits", "ok", "2048 bits")
    elif facts.bits in (3072, 4096):
        bits = Finding("private.bits", "warn", f"{facts.bits} bits; Qredo documents 2048")
    else:
        bits = Finding("private.bits", "fail", f"{facts.bits} bits; Qredo needs 2048")
    if facts.exponent == 65537:
        return [bits, Finding("private.exponent", "ok", "e = 65537")]
    return [bits, Finding("private.exponent", "fail", f"e = {facts.exponent}, not 65537")]


def check_public(path: str, derived: bytes | None, private: str, openssl: OpenSSL) -> list[Finding]:
    """``public.*`` findings; ``derived`` is the public key DER of the private key, if known."""
    data, found = _read(path, "public key", "public")
    rewrite = ours("pubkey", "--force", private=private, public=path)
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
        problem = f"{path} is a PEM {block.label}, not a PUBLIC KEY (SubjectPublicKeyInfo)"
    if problem is not None:
        return [
            *found,
            Finding("public.format", "fail", problem, rewrite),
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
        name, where = _relative(path)
        out = openssl.run("rsa", "-pubin", "-in", name, "-noout", "-text", cwd=where)
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
        msg = f"{path} is not the public half of {private}"
        found.append(Finding("public.matches", "fail", msg, rewrite))
    return found


def check_apikey(path: str) -> list[Finding]:
    """``apikey.*`` findings; an absent API key is a skip (it is optional for key generation)."""
    if not os.path.lexists(path):
        skip = f"no API key file at {path} (optional for keys; saved by this command)"
        save: Fix = ("qredo-openssl", "apikey", os.path.dirname(path) or ".")
        if os.path.basename(path) != "apikey":
            save = ("qredo-openssl", "apikey", "--apikey", path)
        return [Finding("apikey.exists", "skip", skip, save)] + [
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
    finish = ("qredo-openssl", "rotate", "finish", directory)
    journal = os.path.join(directory, ROTATE_JOURNAL)
    if os.path.lexists(journal):
        # Half-done, or cut off while its journal was written (then nothing was moved yet):
        # either way, running it again completes the rotation.
        msg = f"a rotate finish was interrupted ({journal}); run it again to complete it"
        return [Finding("rotate.pending", "warn", msg, finish)]
    nxt = os.path.join(directory, NEXT_DIR)
    if os.path.lexists(nxt):
        msg = f"a key rotation is in progress ({nxt} holds the next pair); finish it after "
        msg += "uploading its public key"
        return [Finding("rotate.pending", "warn", msg, finish)]
    return []


def check_dir(directory: str) -> list[Finding]:
    """``dir.mode`` and ``dir.leftovers``: who can change DIR, and what a killed run left."""
    try:
        st = os.stat(directory)
    except OSError as exc:
        why = f"cannot look at {directory}: {exc.strerror}"
        return [Finding("dir.mode", "skip", why), Finding("dir.leftovers", "skip", why)]
    mode = stat.S_IMODE(st.st_mode)
    if st.st_uid != os.geteuid():
        msg = f"{directory} is owned by uid {st.st_uid}, not you: its owner can replace your keys"
        found = [Finding("dir.mode", "warn", msg)]
    elif mode & 0o022:
        msg = f"{directory} is mode {mode:04o}: group/other can replace the key files in it"
        found = [Finding("dir.mode", "warn", msg, ("chmod", "700", directory))]
    else:
        found = [Finding("dir.mode", "ok", f"mode {mode:04o}, yours")]
    try:
        names = sorted(n for n in os.listdir(directory) if n.startswith(TEMP_PREFIX))
    except OSError as exc:
        why = f"cannot list {directory}: {exc.strerror}"
        return [*found, Finding("dir.leftovers", "skip", why)]
    left = [
        os.path.join(directory, n) for n in names
        if stat.S_ISDIR(os.lstat(os.path.join(directory, n)).st_mode)
    ]  # fmt: skip
    if left:
        msg = f"{len(left)} temporary director{'ies' if len(left) > 1 else 'y'} left by an "
        msg += "interrupted run (it may hold a private key)"
        found.append(Finding("dir.leftovers", "warn", msg, ("rm", "-rf", "--", *left)))
    else:
        found.append(Finding("dir.leftovers", "ok", "no temporary directories left behind"))
    return found


def any_failed(findings: Sequence[Finding]) -> bool:
    """True when any finding failed (``check`` then exits 1)."""
    return any(f.status == "fail" for f in findings)
