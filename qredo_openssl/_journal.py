"""The swap journal of ``rotate finish``: steps written down first, then taken, each repeatable.

SQLite's idea, for a few files: the journal (JSON, created exclusively, fsynced) names every
file to move and the SHA-256 of the bytes expected before and after; then the steps are taken;
then the journal is removed. A run that finds a journal takes the steps still to take, telling
from the files' bytes which are done. A journal cut off while being written (no ``complete``
key) was never acted on and may be dropped.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import signal
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from types import FrameType
from typing import Any, Union

from ._errors import BadInputError, RefusedOverwriteError
from ._files import ROTATE_JOURNAL, KeyPaths, backup_name, fsync_dir, write_private
from ._pem import read_bounded

JOURNAL_FORMAT = "qredo-openssl rotate journal"
JOURNAL_VERSION = 1


@dataclass(frozen=True)
class Move:
    """One file's swap; paths relative to the key directory, contents as SHA-256 hex.

    ``current`` is linked to ``backup``, then ``next`` replaces ``current``.
    """

    role: str  # "private" (its backup is made 0600) or "public"
    current: str
    next: str
    backup: str
    old: str
    new: str


@dataclass(frozen=True)
class Journal:
    moves: tuple[Move, ...]
    next_dir: str  # relative to the key directory; removed (or kept aside) after the moves
    old_fingerprint: str | None
    new_fingerprint: str


TORN = "torn"  # a journal cut off while being written: no step was taken after it
JournalRead = Union[Journal, str, None]


def digest(path: str) -> str | None:
    """SHA-256 hex of a file's bytes; None when nothing is there."""
    if not os.path.lexists(path):
        return None
    return hashlib.sha256(read_bounded(path, what="key file")).hexdigest()


def read_journal(path: str) -> JournalRead:
    """The journal at ``path``; None when there is none, :data:`TORN` when cut off."""
    try:
        with open(path, "rb") as f:
            raw = f.read(1 << 16)
    except FileNotFoundError:
        return None
    except OSError as exc:
        msg = f"cannot read the rotation journal {path}: {exc.strerror}"
        raise BadInputError(msg) from None
    try:
        doc = json.loads(raw)
        if doc["format"] != JOURNAL_FORMAT or doc.get("complete") is not True:
            return TORN
    except (ValueError, TypeError, KeyError):
        return TORN
    if doc.get("version") != JOURNAL_VERSION:
        msg = f"{path} was written by another version of qredo-openssl; finish it with that one"
        raise BadInputError(msg)
    try:
        moves = tuple(Move(**m) for m in doc["moves"])
        return Journal(moves, doc["next_dir"], doc["old_fingerprint"], doc["new_fingerprint"])
    except (KeyError, TypeError) as exc:
        msg = f"{path} is not a rotation journal this version can read ({exc})"
        raise BadInputError(msg) from None


def half_done(directory: str) -> bool:
    """True when a finish was cut off half-way in ``directory``: its journal must be completed.

    A journal that cannot be read, or is from another version, counts too: it is not ours to
    call done. A torn one does not (no step was taken after it).
    """
    try:
        return isinstance(read_journal(os.path.join(directory, ROTATE_JOURNAL)), Journal)
    except BadInputError:
        return True


def refuse_mid_rotation(paths: KeyPaths) -> None:
    """Refuse to write a key file where a finish was cut off half-way (exit 4).

    The journal recognises the pair by its bytes: a new key, a rewritten ``public.pem`` or a
    converted ``private.pem`` would leave the rotation impossible to complete. Its fix is the
    one safe step, ``rotate finish``. DIR and the folders of the key files are all looked at.
    """
    folders = (paths.dir, os.path.dirname(paths.private), os.path.dirname(paths.public))
    for directory in dict.fromkeys(d or "." for d in folders):
        if os.path.lexists(os.path.join(directory, ROTATE_JOURNAL)) and half_done(directory):
            msg = f"{directory} is mid-rotation (a rotate finish was cut off half-way): "
            msg += "complete it before changing its keys"
            err = RefusedOverwriteError(msg)
            err.fix = ("qredo-openssl", "rotate", "finish", directory)
            raise err


def write_journal(path: str, journal: Journal) -> None:
    doc = {
        "format": JOURNAL_FORMAT,
        "version": JOURNAL_VERSION,
        "moves": [asdict(m) for m in journal.moves],
        "next_dir": journal.next_dir,
        "old_fingerprint": journal.old_fingerprint,
        "new_fingerprint": journal.new_fingerprint,
        "complete": True,  # last: a journal cut off while being written has no such key
    }
    write_private(path, (json.dumps(doc, indent=2) + "\n").encode())  # O_EXCL, fsynced
    fsync_dir(os.path.dirname(os.path.abspath(path)))


def _inconsistent(journal_path: str, path: str) -> BadInputError:
    msg = f"cannot complete the rotation: {path} is neither the old nor the new file recorded "
    msg += f"in {journal_path}; nothing more was changed and every key is still on disk: put "
    msg += "the files right by hand, then remove the journal"
    return BadInputError(msg)


def untouched(directory: str, journal: Journal) -> bool:
    """True when no step of ``journal`` was taken yet: every live file old, no backup made."""
    return all(
        digest(os.path.join(directory, m.current)) == m.old
        and not os.path.lexists(os.path.join(directory, m.backup))
        for m in journal.moves
    )


def take_steps(directory: str, journal: Journal, journal_path: str) -> str | None:
    """Take every step not yet taken, then remove the journal.

    Returns where the next directory was kept, when it held other files too.
    """
    for m in journal.moves:
        cur, new, bak = (os.path.join(directory, p) for p in (m.current, m.next, m.backup))
        at_cur = digest(cur)
        if at_cur == m.new:  # this file's step is done; its old bytes must be in the backup
            if digest(bak) != m.old:
                raise _inconsistent(journal_path, bak)
            continue
        if at_cur != m.old:
            raise _inconsistent(journal_path, cur)
        if digest(new) != m.new:
            raise _inconsistent(journal_path, new)
        at_bak = digest(bak)
        if at_bak is None:
            os.link(cur, bak, follow_symlinks=False)
        elif at_bak != m.old:
            raise _inconsistent(journal_path, bak)
        if m.role == "private" and not os.path.islink(bak):
            os.chmod(bak, 0o600)  # a secret's backup is 0600, whatever the old file's mode was
        fsync_dir(os.path.dirname(os.path.abspath(bak)))
        os.replace(new, cur)  # the old bytes stay at the backup name: nothing is lost
        fsync_dir(os.path.dirname(os.path.abspath(cur)))
    kept = None
    n = os.path.join(directory, journal.next_dir)
    if os.path.isdir(n) and not os.path.islink(n):
        try:
            os.rmdir(n)
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
            kept = backup_name(n)  # an API key or anything else put there is kept, not lost
            os.rename(n, kept)
    fsync_dir(directory)
    os.unlink(journal_path)
    fsync_dir(directory)
    return kept


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Ctrl-C and SIGTERM wait until the block is done, then act as they would have.

    Only the main thread can set handlers; elsewhere the block runs as it is (a signal then
    cuts it off like a SIGKILL, which the journal is for).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []

    def hold(signum: int, frame: FrameType | None) -> None:
        caught.append(signum)

    saved: dict[int, Any] = {}
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            saved[sig] = signal.signal(sig, hold)
        yield
    finally:
        for num, handler in saved.items():
            signal.signal(num, signal.SIG_DFL if handler is None else handler)
        for num in dict.fromkeys(caught):
            signal.raise_signal(num)
