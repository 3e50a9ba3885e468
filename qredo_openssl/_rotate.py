"""Key rotation: the next pair beside the live one, then a swap that no crash leaves half-done.

A key directory during a rotation::

    DIR/private.pem, DIR/public.pem         the live pair
    DIR/next/private.pem, next/public.pem   the next pair (``start``), in a 0700 directory
    DIR/rotate.journal                      only while ``finish`` swaps them

``finish`` first writes down every step (the journal, fsynced), then takes the steps, then
removes the journal. A step links the live file to its backup name, then ``os.replace``s the
next file onto the live name: a reader never finds the name empty, and every private key is
in some file at every instant. Ctrl-C and SIGTERM wait until the steps are taken (a few
renames), so they leave the old pair or the new one. A run that finds a journal (after a
SIGKILL, a crash, a power cut) takes the steps not yet taken; files are recognised by the
SHA-256 of their bytes, recorded in the journal, so a changed file is never moved blindly.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import os
import re
import shlex
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from ._checks import check_private, check_public, ours
from ._errors import BadInputError, OpenSSLError, QredoOpenSSLError, RefusedOverwriteError
from ._files import NEXT_DIR, ROTATE_JOURNAL, KeyPaths, backup_name, fsync_dir
from ._journal import (
    TORN,
    Journal,
    Move,
    digest,
    half_done,
    read_journal,
    signals_held,
    take_steps,
    untouched,
    write_journal,
)
from ._keygen import KeygenPlan, KeygenResult, generate_keypair
from ._openssl import OpenSSL
from ._pem import fingerprint, read_bounded
from ._pkcs11 import has_token_key, uri_file

Probe = Callable[[KeyPaths], None]
"""Called with the next pair before ``finish`` changes anything; raises to stop it."""
E = TypeVar("E", bound=QredoOpenSSLError)


@dataclass(frozen=True)
class PairState:
    """One pair as found on disk; ``fingerprint`` is None when the public key is not readable."""

    private: str
    public: str
    fingerprint: str | None
    since: str | None  # the private key file's mtime, ISO 8601 UTC


@dataclass(frozen=True)
class RotationStatus:
    """What ``status`` reports; ``half_done``: a ``finish`` was cut off and must be completed."""

    dir: str
    current: PairState | None
    next: PairState | None
    half_done: bool
    journal: str | None  # the journal's path when there is one


@dataclass(frozen=True)
class FinishResult:
    paths: KeyPaths
    fingerprint: str  # the live key now: the former next key
    old_fingerprint: str | None
    backups: tuple[str, ...]  # the old pair: private key first
    resumed: bool  # an interrupted finish was completed
    kept_next: str | None  # next/ held other files too and was kept under this name


@dataclass(frozen=True)
class AbortResult:
    paths: KeyPaths
    kept: str  # where next/ is now
    fingerprint: str | None  # of the dropped next pair


def next_paths(paths: KeyPaths) -> KeyPaths:
    """The next pair, in ``DIR/next/``; its API key is ``next/apikey`` if there is one."""
    d = os.path.join(paths.dir, NEXT_DIR)
    apikey = os.path.join(d, "apikey")
    return KeyPaths(
        d,
        os.path.join(d, "private.pem"),
        os.path.join(d, "public.pem"),
        apikey if os.path.lexists(apikey) else paths.apikey,
    )


def _journal_path(paths: KeyPaths) -> str:
    return os.path.join(paths.dir, ROTATE_JOURNAL)


def _q(directory: str) -> str:
    return shlex.quote(directory)


def _fixed(error: E, *fix: str) -> E:
    """``error`` with the command that is the next step (``qredo-openssl ...``) as its fix."""
    error.fix = ("qredo-openssl", *fix)
    return error


def _keygen(paths: KeyPaths) -> tuple[str, ...]:
    return ours("keygen", private=paths.private, public=paths.public)[1:]


def _refuse_token_key(paths: KeyPaths) -> None:
    if has_token_key(paths):
        msg = (
            f"{paths.dir} holds a PKCS#11 token key ({uri_file(paths)}); rotate handles PEM "
            "pairs only: "
            "make a new token key into a new directory with: "
            "qredo-openssl keygen --pkcs11 URI NEWDIR"
        )
        raise BadInputError(msg)


@contextlib.contextmanager
def _locked(directory: str) -> Iterator[None]:
    """One rotate command at a time per key directory (an advisory lock on the directory)."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError as exc:
        msg = f"cannot open key directory {directory}: {exc.strerror}"
        raise BadInputError(msg) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _iso(mtime: float) -> str:
    t = datetime.datetime.fromtimestamp(mtime, datetime.timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def _pair_state(private: str, public: str, *, always: bool = False) -> PairState | None:
    if not always and not os.path.lexists(private) and not os.path.lexists(public):
        return None
    fp = since = None
    with contextlib.suppress(BadInputError):
        fp = fingerprint(read_bounded(public, what="public key"))
    with contextlib.suppress(OSError):
        since = _iso(os.stat(private).st_mtime)
    return PairState(private, public, fp, since)


def rotation_status(paths: KeyPaths) -> RotationStatus:
    """The current and next pair as they are on disk; changes nothing and runs nothing."""
    if not os.path.isdir(paths.dir):
        msg = f"no key directory {paths.dir}"
        raise BadInputError(msg)
    n = next_paths(paths)
    journal = _journal_path(paths)
    return RotationStatus(
        paths.dir,
        _pair_state(paths.private, paths.public),
        _pair_state(n.private, n.public, always=True) if os.path.lexists(n.dir) else None,
        half_done(paths.dir),
        journal if os.path.lexists(journal) else None,
    )


def check_can_start(paths: KeyPaths) -> None:
    """Raise unless ``start`` may make a next pair in DIR (``--dry-run`` asks this too)."""
    _refuse_token_key(paths)
    if not os.path.isdir(paths.dir):
        msg = f"no key directory {paths.dir}: make the first pair"
        raise _fixed(BadInputError(msg), *_keygen(paths))
    if not os.path.lexists(paths.private):
        msg = f"no current key at {paths.private}: make the first pair"
        raise _fixed(BadInputError(msg), *_keygen(paths))
    if os.path.lexists(_journal_path(paths)):
        msg = f"a rotate finish was cut off half-way in {paths.dir}; complete it"
        raise _fixed(RefusedOverwriteError(msg), "rotate", "finish", paths.dir)
    n = os.path.join(paths.dir, NEXT_DIR)
    if os.path.lexists(n):
        msg = f"a rotation is already in progress ({n} exists): drop it with qredo-openssl "
        msg += f"rotate abort {_q(paths.dir)}, or after the upload finish it"
        raise _fixed(RefusedOverwriteError(msg), "rotate", "finish", paths.dir)


def start_rotation(paths: KeyPaths, plan: KeygenPlan) -> KeygenResult:
    """Make the next pair in ``DIR/next/`` exactly as ``keygen`` makes a pair, and check it."""
    check_can_start(paths)  # a missing DIR has nothing to lock
    with _locked(paths.dir):
        check_can_start(paths)  # again, now that no other rotate runs here
        n = next_paths(paths)
        try:
            return generate_keypair(n, plan)
        except BaseException:
            with contextlib.suppress(OSError):
                os.rmdir(n.dir)  # only when empty, as keygen left it on failure
            raise


def _plan(paths: KeyPaths, openssl: OpenSSL | None) -> Journal:
    """The swap to make, after checking the next pair as ``check`` would."""
    _refuse_token_key(paths)
    n = next_paths(paths)
    if not os.path.lexists(n.dir):
        msg = f"no rotation in progress in {paths.dir} ({n.dir} does not exist); start one"
        raise _fixed(BadInputError(msg), "rotate", "start", paths.dir)
    if not os.path.isdir(n.dir) or os.path.islink(n.dir):
        msg = f"{n.dir} is not a directory made by rotate start"
        raise BadInputError(msg)
    if not os.path.lexists(paths.private):
        msg = f"no current key at {paths.private}: restore it first (it is kept as a backup)"
        raise BadInputError(msg)
    if not os.path.lexists(paths.public):
        msg = f"no current public key at {paths.public}: restore it first, or derive it"
        pubkey = ours("pubkey", private=paths.private, public=paths.public)
        raise _fixed(BadInputError(msg), *pubkey[1:])
    for p in (n.private, n.public):
        if os.path.islink(p):  # moved into DIR, a relative link would point elsewhere
            msg = f"{p} is a symbolic link; rotate start makes regular files: put the file there"
            raise BadInputError(msg)
    if openssl is None:
        msg = "OpenSSL is needed to check the next pair"
        raise OpenSSLError(msg)
    private, derived = check_private(n.private, openssl)
    findings = private + check_public(n.public, derived, n.private, openssl)
    failed = [f for f in findings if f.status == "fail"]
    if failed:
        msg = f"the next pair in {n.dir} fails its check {failed[0].name}: {failed[0].message}; "
        msg += "nothing was changed; drop it"
        raise _fixed(BadInputError(msg), "rotate", "abort", paths.dir)
    now = time.time()
    moves = []
    pairs = (("private", paths.private, n.private), ("public", paths.public, n.public))
    for role, cur, new in pairs:
        if os.stat(os.path.dirname(os.path.abspath(cur))).st_dev != os.stat(n.dir).st_dev:
            msg = f"{cur} is on another filesystem than {n.dir}: it cannot be swapped atomically"
            raise BadInputError(msg)
        old_h, new_h = digest(cur), digest(new)
        if old_h is None or new_h is None:  # gone since the checks: someone else is at work
            msg = f"{cur if old_h is None else new} disappeared; nothing was changed"
            raise BadInputError(msg)
        if old_h == new_h:
            msg = f"{new} is the same file as {cur}: the next pair is the current pair"
            raise BadInputError(msg)
        bak = backup_name(cur, now)
        cur_r, new_r, bak_r = (os.path.relpath(p, paths.dir) for p in (cur, new, bak))
        moves.append(Move(role, cur_r, new_r, bak_r, old_h, new_h))
    old_fp = _pair_state(paths.private, paths.public)
    new_fp = fingerprint(read_bounded(n.public, what="public key"))
    old = old_fp.fingerprint if old_fp else None
    return Journal(tuple(moves), NEXT_DIR, old, new_fp)


def finish_rotation(
    paths: KeyPaths, openssl: OpenSSL | None, *, probe: Probe | None = None
) -> FinishResult:
    """Make the next pair the live one, the old pair kept as ``NAME.YYYYmmddTHHMMSSZ.bak``.

    The next pair is checked, then ``probe`` (if any) is called with it; either raising
    leaves every file as it was. A finish cut off earlier is completed instead (no checks and
    no probe then: its steps were decided already); ``openssl`` may be None for that alone.
    """
    with _locked(paths.dir):
        jpath = _journal_path(paths)
        found = read_journal(jpath)
        if isinstance(found, Journal):
            _refuse_foreign(paths, found, jpath)
            with signals_held():
                kept = _steps(paths, found, jpath)
            return _finished(paths, found, resumed=True, kept=kept)
        if found == TORN:
            os.unlink(jpath)  # cut off while written: no step was taken after it
        journal = _plan(paths, openssl)
        if probe is not None:
            probe(next_paths(paths))
        with signals_held():
            write_journal(jpath, journal)
            kept = _steps(paths, journal, jpath)
        return _finished(paths, journal, resumed=False, kept=kept)


def _refuse_foreign(paths: KeyPaths, journal: Journal, jpath: str) -> None:
    """A journal names exactly the moves this command would plan: the live pair of ``paths``
    to backups beside it, from ``next/``. One naming anything else (``../``, an absolute
    path, another file: written by hand, or planted in a shared DIR) is never acted on."""
    n = next_paths(paths)
    expected = {
        "private": (paths.private, n.private),
        "public": (paths.public, n.public),
    }
    roles = [m.role for m in journal.moves]
    ok = journal.next_dir == NEXT_DIR and sorted(roles) == ["private", "public"]
    for m in journal.moves if ok else ():
        cur, new = (os.path.relpath(p, paths.dir) for p in expected[m.role])
        backup = re.fullmatch(re.escape(cur) + r"\.\d{8}T\d{6}Z(?:\.\d+)?\.bak", m.backup)
        ok = ok and m.current == cur and m.next == new and backup is not None
    if not ok:
        msg = f"{jpath} names files this rotation does not own; nothing was changed (look at "
        msg += "it, and remove it if nobody is rotating this key)"
        raise BadInputError(msg)


def _steps(paths: KeyPaths, journal: Journal, jpath: str) -> str | None:
    """:func:`take_steps`; a filesystem that refuses the very first one leaves no journal."""
    try:
        return take_steps(paths.dir, journal, jpath)
    except OSError as exc:
        why = f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else "")
        msg = f"cannot swap the pairs in {paths.dir} ({why}); "
        if untouched(paths.dir, journal):
            os.unlink(jpath)
            raise BadInputError(msg + "nothing was changed") from None
        msg += "fix that, then complete it"
        raise _fixed(BadInputError(msg), "rotate", "finish", paths.dir) from None


def _finished(paths: KeyPaths, j: Journal, *, resumed: bool, kept: str | None) -> FinishResult:
    backups = tuple(os.path.join(paths.dir, m.backup) for m in j.moves)
    return FinishResult(paths, j.new_fingerprint, j.old_fingerprint, backups, resumed, kept)


def abort_rotation(paths: KeyPaths) -> AbortResult:
    """Keep ``next/`` as ``next.YYYYmmddTHHMMSSZ.bak/``; the current pair is not touched."""
    with _locked(paths.dir):
        jpath = _journal_path(paths)
        found = read_journal(jpath)
        if isinstance(found, Journal):
            msg = f"a rotate finish was cut off half-way in {paths.dir} and cannot be undone; "
            msg += "complete it"
            raise _fixed(RefusedOverwriteError(msg), "rotate", "finish", paths.dir)
        n = next_paths(paths)
        if not os.path.lexists(n.dir):
            msg = f"no rotation in progress in {paths.dir} ({n.dir} does not exist); "
            msg += "nothing to abort"
            raise BadInputError(msg)
        state = _pair_state(n.private, n.public)
        kept = backup_name(n.dir)
        os.rename(n.dir, kept)
        fsync_dir(paths.dir)
        if found == TORN:
            os.unlink(jpath)
        return AbortResult(paths, kept, state.fingerprint if state else None)
