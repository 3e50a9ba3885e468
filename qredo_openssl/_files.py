"""Safe file publishing: private temporary directories, no-clobber links, backups."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from ._errors import BadInputError, RefusedOverwriteError, UsageError

# A key rotation in progress (``rotate``): the next pair lives in DIR/next/; a finish that is
# swapping the pairs writes its steps down in DIR/rotate.journal first.
NEXT_DIR = "next"
ROTATE_JOURNAL = "rotate.journal"


def ensure_dir(path: str) -> None:
    """Create a key directory (0700) if missing; refuse a file in its place."""
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
    except FileExistsError:
        msg = f"{path} exists and is not a directory"
        raise BadInputError(msg) from None
    except OSError as exc:
        msg = f"cannot create {path}: {exc.strerror}"
        raise BadInputError(msg) from None


@contextlib.contextmanager
def private_tempdir(near: str) -> Iterator[str]:
    """A 0700 temporary directory inside ``near``, removed on the way out whatever happens."""
    try:
        tmp = tempfile.mkdtemp(prefix=".qredo-openssl-", dir=near)
    except OSError as exc:
        msg = f"cannot write in {near}: {exc.strerror}"
        raise BadInputError(msg) from None
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


@dataclass
class Publisher:
    """Publishes finished files at their final names, all or nothing.

    Each file is hard-linked (``os.link`` fails with EEXIST for anything at the name, even a
    dangling symlink: exactly "never clobber"). With ``force``, whatever is at a name is first
    renamed to a backup. If anything fails, the files this publisher linked are removed again
    (only if they are still ours) and backups are moved back.
    """

    force: bool = False
    backups: list[str] = field(default_factory=list)
    _published: list[tuple[str, str]] = field(default_factory=list)
    _moved: list[tuple[str, str]] = field(default_factory=list)

    def publish(self, tmp: str, final: str) -> None:
        if self.force and os.path.lexists(final):
            bak = _move_aside(final)
            self._moved.append((final, bak))
            self.backups.append(bak)
        try:
            _link_or_copy(tmp, final)
        except FileExistsError:
            msg = f"{final} already exists; refusing to overwrite (use --force to replace)"
            raise RefusedOverwriteError(msg) from None
        self._published.append((tmp, final))
        _fsync_dir(os.path.dirname(os.path.abspath(final)))

    def rollback(self) -> None:
        for tmp, final in reversed(self._published):
            with contextlib.suppress(OSError):
                if os.path.samefile(tmp, final):
                    os.unlink(final)
        for final, bak in reversed(self._moved):
            with contextlib.suppress(OSError):
                if not os.path.lexists(final):
                    os.rename(bak, final)
                    self.backups.remove(bak)
        self._published.clear()
        self._moved.clear()


def _move_aside(path: str) -> str:
    """Rename whatever is at ``path`` to a fresh backup name, never replacing an older backup.

    A link to the new name fails if another ``--force`` took it first (``os.rename`` would
    silently replace it); a directory cannot be hard-linked and is renamed.
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
            return bak
        os.unlink(path)
        return bak


def _link_or_copy(tmp: str, final: str) -> None:
    try:
        os.link(tmp, final)
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.ENOTSUP):
            raise
        # Another filesystem (or one without hard links): copy next to the target, then link.
        with private_tempdir(os.path.dirname(os.path.abspath(final))) as near:
            copy = os.path.join(near, "f")
            shutil.copy2(tmp, copy)
            os.link(copy, final)


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
