"""Safe file publishing: private temporary directories, no-clobber links, backups."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from ._errors import BadInputError, RefusedOverwriteError, UsageError, WriteError

# A key rotation in progress (``rotate``): the next pair lives in DIR/next/; a finish that is
# swapping the pairs writes its steps down in DIR/rotate.journal first.
NEXT_DIR = "next"
ROTATE_JOURNAL = "rotate.journal"
# A directory whose private key lives in a PKCS#11 token names it here (``keygen --pkcs11``).
URI_NAME = "private.uri"


def ensure_dir(path: str) -> None:
    """Create a key directory if missing, and every missing parent, each 0700; refuse a file.

    ``os.makedirs`` gives the parents it creates the umask's mode (0777 under umask 000).
    """
    missing: list[str] = []
    here = os.path.abspath(path)
    while not os.path.lexists(here) and os.path.dirname(here) != here:
        missing.append(here)
        here = os.path.dirname(here)
    for d in reversed(missing):
        try:
            os.mkdir(d, 0o700)
        except FileExistsError:
            continue  # made meanwhile by someone else: not ours to change
        except OSError as exc:
            msg = f"cannot create {path}: {exc.strerror}"
            raise BadInputError(msg) from None
        os.chmod(d, 0o700)  # a umask may have taken the owner's own bits
    if not os.path.isdir(path):
        msg = f"{path} exists and is not a directory"
        raise BadInputError(msg)


TEMP_PREFIX = ".qredo-openssl-"


@contextlib.contextmanager
def private_tempdir(near: str) -> Iterator[str]:
    """A 0700 temporary directory inside ``near``, removed on the way out whatever happens."""
    try:
        tmp = tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=near)
    except OSError as exc:
        raise write_error(near, exc, "cannot write in") from None
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def refuse_existing(paths: Sequence[str]) -> None:
    """Raise :class:`RefusedOverwriteError` if anything (even a dangling symlink) is at a path."""
    taken = [p for p in paths if os.path.lexists(p)]
    if taken:
        msg = f"{', '.join(taken)} already exist{'s' if len(taken) == 1 else ''}; "
        msg += "refusing to overwrite (use --force to keep a backup and replace)"
        raise RefusedOverwriteError(msg)


def backup_name(path: str, now: float | None = None) -> str:
    """``NAME.YYYYmmddTHHMMSSZ.bak`` beside ``path``; ``.1``, ``.2``... if that is taken."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    base = f"{path}.{stamp}"
    candidate, n = f"{base}.bak", 0
    while os.path.lexists(candidate):
        n += 1
        candidate = f"{base}.{n}.bak"
    return candidate


def fsync_dir(path: str) -> None:
    """Make the names in ``path`` (links, renames, unlinks) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_fsync_dir = fsync_dir


def write_private(path: str, data: bytes, mode: int = 0o600) -> None:
    """Create ``path`` exclusively with ``mode`` from birth, write and flush it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(path, mode)  # the umask may have taken bits away; give exactly ``mode``


_NO_LINK = (errno.EXDEV, errno.EPERM, errno.ENOTSUP, errno.EMLINK)


def write_error(path: str, exc: OSError, doing: str = "cannot write") -> WriteError:
    """``exc`` as a :class:`WriteError` naming ``path`` (the final name), "disk full" if so."""
    if exc.errno == errno.ENOSPC:
        why = "disk full"
    elif exc.errno == errno.EDQUOT:
        why = "disk quota exceeded"
    else:
        why = exc.strerror or str(exc)
    return WriteError(f"{doing} {path}: {why}")


def _ident(path: str) -> tuple[int, int] | None:
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def keep_private(path: str) -> int | None:
    """Make a regular file at ``path`` 0600 if group/other had access; return the old mode."""
    st = os.lstat(path)
    mode = stat.S_IMODE(st.st_mode)
    if stat.S_ISREG(st.st_mode) and mode & 0o077:
        os.chmod(path, 0o600)
        return mode
    return None


@dataclass
class Publisher:
    """Publishes finished files at their final names, all or nothing.

    A new file is hard-linked (``os.link`` fails with EEXIST for anything at the name, even a
    dangling symlink: exactly "never clobber"). With ``force``, whatever is at a name is first
    hard-linked to a backup name, then the new file is renamed over the final name, so a
    reader finds the old file or the new one there, never nothing. A backup of a ``secret``
    is made 0600. If anything fails, the files this publisher placed are taken back (only if
    they are still ours) and the old files return to their names.
    """

    force: bool = False
    backups: list[str] = field(default_factory=list)
    _published: list[tuple[str, tuple[int, int] | None]] = field(default_factory=list)
    _moved: list[tuple[str, str]] = field(default_factory=list)

    def publish(self, tmp: str, final: str, *, secret: bool = False) -> None:
        """Place ``tmp`` at ``final``; an OSError becomes a :class:`WriteError` naming ``final``."""
        try:
            self._publish(tmp, final, secret)
            _fsync_dir(os.path.dirname(os.path.abspath(final)))
        except OSError as exc:
            raise write_error(final, exc) from None

    def _publish(self, tmp: str, final: str, secret: bool) -> None:
        linked = False
        if self.force and os.path.lexists(final):
            bak, linked = _backup(final)
            self._moved.append((final, bak))
            self.backups.append(bak)
            if secret:
                keep_private(bak)
        if linked:
            _replace_with(tmp, final)
        else:
            try:
                _link_or_copy(tmp, final)
            except FileExistsError:
                msg = f"{final} already exists; refusing to overwrite (use --force to replace)"
                raise RefusedOverwriteError(msg) from None
        self._published.append((final, _ident(final)))

    def rollback(self) -> None:
        placed = dict(self._published)
        for final, bak in reversed(self._moved):
            with contextlib.suppress(OSError):
                ours = final in placed and _ident(final) == placed.pop(final)
                if ours and os.path.isdir(bak) and not os.path.islink(bak):
                    os.unlink(final)
                    os.rename(bak, final)
                elif ours or not os.path.lexists(final):
                    os.rename(bak, final)  # the old file back, in one step
                elif _ident(final) == _ident(bak):
                    os.unlink(bak)  # the old file never left its name
                else:
                    continue  # someone else's file is there now: keep the backup
                self.backups.remove(bak)
        for final, ident in placed.items():
            with contextlib.suppress(OSError):
                if ident is not None and _ident(final) == ident:
                    os.unlink(final)
        self._published.clear()
        self._moved.clear()


def _backup(path: str) -> tuple[str, bool]:
    """Keep whatever is at ``path`` under a fresh backup name, never replacing an older backup.

    A hard link (True: the file stays at ``path`` too, to be replaced by a rename); a link to
    the new name fails if another ``--force`` took it first (``os.rename`` would silently
    replace it). A directory, or a filesystem without hard links: renamed (False).
    """
    while True:
        bak = backup_name(path)
        try:
            os.link(path, bak, follow_symlinks=False)
        except FileExistsError:
            continue
        except OSError:
            if os.path.lexists(bak):
                continue
            os.rename(path, bak)
            return bak, False
        return bak, True


def _replace_with(tmp: str, final: str) -> None:
    """Rename a copy of ``tmp`` over ``final`` (made beside it: a rename cannot cross disks)."""
    with private_tempdir(os.path.dirname(os.path.abspath(final))) as near:
        staged = os.path.join(near, "f")
        try:
            os.link(tmp, staged)
        except OSError as exc:
            if exc.errno not in _NO_LINK:
                raise
            shutil.copy2(tmp, staged)
        os.replace(staged, final)


def _link_or_copy(tmp: str, final: str) -> None:
    try:
        os.link(tmp, final)
    except OSError as exc:
        if exc.errno not in _NO_LINK:
            raise
        _copy_exclusive(tmp, final)


def _copy_exclusive(tmp: str, final: str) -> None:
    """Another filesystem, or one without hard links: create ``final`` exclusively and copy.

    ``O_EXCL`` keeps "never clobber" (a dangling symlink at the name fails too); the file has
    the source's mode from birth. A failure part-way removes what was written.
    """
    mode = stat.S_IMODE(os.stat(tmp).st_mode)
    fd = os.open(final, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        with os.fdopen(fd, "wb") as dst, open(tmp, "rb") as src:
            shutil.copyfileobj(src, dst)
            dst.flush()
            os.fchmod(dst.fileno(), mode)
            os.fsync(dst.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(final)
        raise


@contextlib.contextmanager
def publishing(force: bool = False) -> Iterator[Publisher]:
    """Yield a :class:`Publisher`; on any exception (Ctrl-C included) undo what it published."""
    pub = Publisher(force=force)
    try:
        yield pub
    except BaseException:
        pub.rollback()
        raise


@dataclass(frozen=True)
class KeyPaths:
    """The three files of a key directory; any one may be overridden."""

    dir: str
    private: str
    public: str
    apikey: str

    @classmethod
    def in_dir(
        cls,
        directory: str = ".",
        *,
        private: str | None = None,
        public: str | None = None,
        apikey: str | None = None,
    ) -> KeyPaths:
        return cls(
            directory,
            private or os.path.join(directory, "private.pem"),
            public or os.path.join(directory, "public.pem"),
            apikey or os.path.join(directory, "apikey"),
        )

    def __post_init__(self) -> None:
        # One file in two roles would let publishing one replace (and back up) the other.
        names = [os.path.normpath(os.path.abspath(p)) for p in (self.private, self.public)]
        names.append(os.path.normpath(os.path.abspath(self.apikey)))
        if len(set(names)) < 3:
            msg = "the private key, public key and API key must be three different files"
            raise UsageError(msg)
