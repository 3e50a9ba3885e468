"""Key generation and repair: the two documented commands, run privately, checked, published."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ._checks import Finding, check_private, check_public, inspect_private
from ._defaults import ALLOWED_BITS, QREDO_BITS
from ._errors import (
    BadInputError,
    Interrupted,
    OpenSSLError,
    QredoOpenSSLError,
    RefusedOverwriteError,
    UsageError,
)
from ._files import (
    KeyPaths,
    ensure_dir,
    private_tempdir,
    publishing,
    refuse_existing,
    write_error,
)
from ._journal import refuse_mid_rotation
from ._openssl import (
    OpenSSL,
    TraditionalDecision,
    TraditionalMode,
    decide_traditional,
)
from ._pem import fingerprint
from ._run import map_in_threads


@dataclass(frozen=True)
class KeygenPlan:
    """What ``keygen`` will run: the exact argv (argv[0] is OpenSSL's path) and why."""

    openssl: OpenSSL
    traditional: TraditionalDecision
    bits: int
    commands: tuple[tuple[str, ...], ...]


def plan_keygen(
    openssl: OpenSSL, bits: int = QREDO_BITS, traditional: TraditionalMode = "auto"
) -> KeygenPlan:
    """The documented commands for this OpenSSL, ``-traditional`` only where it belongs.

    They run inside a private temporary directory, so the file names are exactly the
    documented ``private.pem`` and ``public.pem``.
    """
    if bits not in ALLOWED_BITS:
        msg = f"--bits {bits} is not allowed; use 2048 (or 3072/4096)"
        raise BadInputError(msg)
    decision = decide_traditional(openssl, traditional)
    flag = ("-traditional",) if decision.use else ()
    genrsa = (openssl.path, "genrsa", *flag, "-out", "private.pem", str(bits))
    pubout = (openssl.path, "rsa", "-in", "private.pem", "-outform", "PEM", "-pubout")
    return KeygenPlan(openssl, decision, bits, (genrsa, (*pubout, "-out", "public.pem")))


@dataclass(frozen=True)
class KeygenResult:
    """One key directory's outcome: the published files and everything ``--json`` reports."""

    paths: KeyPaths
    bits: int
    fingerprint: str
    public_pem: str
    backups: tuple[str, ...]
    commands: tuple[tuple[str, ...], ...]
    findings: tuple[Finding, ...]
    skipped: bool = False  # an existing pair that passes its checks, left as it was


def _fail_message(findings: Sequence[Finding], plan: KeygenPlan) -> str:
    first = next(f for f in findings if f.status == "fail")
    # its fix is for a file we are not keeping: not shown
    msg = f"the new key failed its check {first.name}: {first.message}; nothing was kept"
    if first.name == "private.format" and not plan.traditional.use:
        msg += " (OpenSSL 3 writes PKCS#8 without -traditional: try --traditional always)"
    return msg


def _verified(paths: KeyPaths, openssl: OpenSSL, plan: KeygenPlan) -> list[Finding]:
    """The checks on files as they landed; a fail raises (and the caller's publisher rolls back).

    genrsa has just proved its primes, so ``rsa -check`` would only repeat that (most of the
    check's cost); what can still be wrong (format, bits, exponent, the pair) is checked.
    """
    private, derived = check_private(paths.private, openssl, consistency=False)
    findings = private + check_public(paths.public, derived, paths.private, openssl)
    if any(f.status == "fail" for f in findings):
        raise OpenSSLError(_fail_message(findings, plan))
    return findings


FULL_BELOW = 64 * 1024  # bytes free: less than this, and a missing output is a full disk


def produced(tmp: str, name: str, argv: Sequence[str]) -> str:
    path = os.path.join(tmp, name)
    if not os.path.isfile(path) or os.path.getsize(path) == 0:
        msg = f"openssl {argv[1]} exited 0 but wrote no {name}"
        # OpenSSL 1.x and 3.0 can exit 0 when the final write of -out fails (ENOSPC).
        if _free_bytes(tmp) < FULL_BELOW:
            msg += f": disk full in {os.path.dirname(tmp) or '.'}"
        raise OpenSSLError(msg, argv=argv)
    return path


def _free_bytes(path: str) -> int:
    try:
        st = os.statvfs(path)
    except OSError:
        return FULL_BELOW  # unknown: do not claim a full disk
    return st.f_bavail * st.f_frsize


def generate_keypair(
    paths: KeyPaths,
    plan: KeygenPlan,
    *,
    force: bool = False,
    skip_existing: bool = False,
    stop: threading.Event | None = None,
) -> KeygenResult:
    """Make ``private.pem`` and ``public.pem`` as Qredo documents, never clobbering.

    Nothing appears at a final name unless both files were made and pass their checks; with
    ``force``, whatever was there is kept as ``NAME.YYYYmmddTHHMMSSZ.bak``. With
    ``skip_existing``, an existing pair that passes its checks is left as it is
    (``skipped``); one that fails them, or half a pair, is refused. A file that cannot be
    written (a full disk) raises :class:`WriteError` naming the final path.
    """
    if force and skip_existing:
        msg = "--skip-existing and --force cannot be given together"
        raise UsageError(msg)
    refuse_mid_rotation(paths)
    if skip_existing and any(os.path.lexists(p) for p in (paths.private, paths.public)):
        return _existing(paths, plan)
    try:
        return _generate(paths, plan, force, stop)
    except OSError as exc:  # anything the publisher did not already name
        raise write_error(paths.private, exc) from None


def _existing(paths: KeyPaths, plan: KeygenPlan) -> KeygenResult:
    private, facts = inspect_private(paths.private, plan.openssl)
    derived = facts.public_der if facts is not None else None
    findings = private + check_public(paths.public, derived, paths.private, plan.openssl)
    failed = next((f for f in findings if f.status == "fail"), None)
    if failed is not None:
        msg = f"the existing pair in {paths.dir} fails its check {failed.name} "
        msg += f"({failed.message}); refusing to touch it (--force replaces it, keeping backups)"
        err = RefusedOverwriteError(msg)
        err.fix = failed.fix
        raise err
    with open(paths.public, "rb") as f:  # just checked: a small regular PEM file
        public_pem = f.read()
    assert facts is not None  # private.valid passed: OpenSSL read the key
    assert facts.bits is not None  # and private.bits passed
    return KeygenResult(
        paths, facts.bits, fingerprint(public_pem), public_pem.decode("ascii"), (), (),
        tuple(findings), skipped=True,
    )  # fmt: skip


def _generate(
    paths: KeyPaths, plan: KeygenPlan, force: bool, stop: threading.Event | None
) -> KeygenResult:
    for d in {os.path.dirname(paths.private) or ".", os.path.dirname(paths.public) or "."}:
        ensure_dir(d)
    if not force:
        refuse_existing([paths.private, paths.public])
    openssl = plan.openssl
    with private_tempdir(os.path.dirname(paths.private) or ".") as tmp:
        genrsa, pubout = plan.commands
        openssl.run(*genrsa[1:], cwd=tmp)
        private = produced(tmp, "private.pem", genrsa)
        openssl.run(*pubout[1:], cwd=tmp)
        public = produced(tmp, "public.pem", pubout)
        os.chmod(public, 0o644)
        if stop is not None and stop.is_set():
            raise Interrupted
        with publishing(force) as pub:
            # private before public: never a lone public
            pub.publish(private, paths.private, secret=True)
            pub.publish(public, paths.public)
            findings = _verified(paths, openssl, plan)
        with open(public, "rb") as f:
            public_pem = f.read()
    bits = plan.bits
    return KeygenResult(
        paths, bits, fingerprint(public_pem), public_pem.decode("ascii"),
        tuple(pub.backups), plan.commands, tuple(findings),
    )  # fmt: skip


def generate_keypairs(
    many: Sequence[KeyPaths],
    plan: KeygenPlan,
    *,
    force: bool = False,
    skip_existing: bool = False,
    jobs: int | None = None,
    on_done: Callable[[KeyPaths, KeygenResult | QredoOpenSSLError], None] | None = None,
) -> list[KeygenResult | QredoOpenSSLError]:
    """:func:`generate_keypair` for many directories in parallel; results in input order.

    A failure in one directory (a full disk included) is returned in its place and does not
    stop the others. ``on_done`` is called from the worker as each directory finishes, so
    results can be shown at once. On Ctrl-C or SIGTERM every OpenSSL child is killed and
    every worker cleans up before the interrupt propagates; a directory that finished
    meanwhile keeps its pair and is still passed to ``on_done`` (a failure then is not).
    """
    if force and skip_existing:
        msg = "--skip-existing and --force cannot be given together"
        raise UsageError(msg)
    stop = threading.Event()

    def one(paths: KeyPaths) -> KeygenResult | QredoOpenSSLError:
        try:
            result: KeygenResult | QredoOpenSSLError = generate_keypair(
                paths, plan, force=force, skip_existing=skip_existing, stop=stop
            )
        except QredoOpenSSLError as exc:
            result = exc
        if on_done is not None and (isinstance(result, KeygenResult) or not stop.is_set()):
            on_done(paths, result)
        return result

    return map_in_threads(one, many, jobs=jobs, stop=stop)
