"""Helpers shared by the test files (fixtures live in conftest.py)."""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from conftest import Keys


def assert_no_traceback(r: subprocess.CompletedProcess[str]) -> None:
    """What a user must never see, on either stream."""
    assert "Traceback" not in r.stderr
    assert "Traceback" not in r.stdout


def leftovers(d: Path) -> list[str]:
    """Temporary directories a run left behind in ``d``."""
    return sorted(p.name for p in d.iterdir() if p.name.startswith(".qredo-openssl-"))


def mode(p: Path) -> int:
    """Permission bits of ``p`` itself (a symlink is not followed)."""
    return stat.S_IMODE(p.lstat().st_mode)


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def key_pair(d: Path, keys: Keys) -> Path:
    """A healthy key directory: the session's PKCS#1 key (0600) and its public key (0644)."""
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    shutil.copyfile(keys.pkcs1, d / "private.pem")
    (d / "private.pem").chmod(0o600)
    shutil.copyfile(keys.public, d / "public.pem")
    (d / "public.pem").chmod(0o644)
    return d


def logging_openssl(tmp_path: Path, then: str) -> tuple[Path, Path]:
    """An ``openssl`` that notes its subcommand in a log, then runs the shell code ``then``
    (``exec REAL "$@"``, or ``exit 0`` for a binary that is no OpenSSL); and that log."""
    log = tmp_path / "calls.log"
    exe = tmp_path / "bin" / "openssl"
    exe.parent.mkdir()
    exe.write_text(f'#!/bin/sh\necho "$1" >> {shlex.quote(str(log))}\n{then}\n')
    exe.chmod(0o755)
    return exe, log
