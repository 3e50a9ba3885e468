"""Hardening (issue 10): what trying to break the tool found, each pinned by a test."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_cli

import qredo_openssl as q
from qredo_openssl import _files

K = "c2VjcmV0LWtleS1mb3ItdGVzdHM="  # a valid Base64 API key


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


# -- 4. a backup of a secret is 0600 ---------------------------------------------------------


def test_apikey_backup_is_private(tmp_path: Path) -> None:
    target = tmp_path / "apikey"
    target.write_text(K + "\n")
    target.chmod(0o644)
    saved = q.save_apikey(str(target), K, force=True)
    (backup,) = saved.backups
    assert _mode(Path(backup)) == 0o600
    assert _mode(target) == 0o600


def test_keygen_force_backup_of_private_is_private(make_fake, tmp_path: Path) -> None:
    fake = make_fake("3.0")
    d = tmp_path / "keys"
    assert run_cli("keygen", "--openssl", str(fake.path), str(d)).returncode == 0
    (d / "private.pem").chmod(0o644)
    r = run_cli("--json", "keygen", "--force", "--openssl", str(fake.path), str(d))
    assert r.returncode == 0, r.stderr
    backups = sorted(d.glob("*.bak"))
    private_bak = [b for b in backups if b.name.startswith("private.pem.")]
    public_bak = [b for b in backups if b.name.startswith("public.pem.")]
    assert _mode(private_bak[0]) == 0o600
    assert _mode(public_bak[0]) == 0o644  # not a secret: left as it was


# -- 8. --force swaps with a rename: a reader never finds the name empty ----------------------


READER = """
import os, sys
path, stop = sys.argv[1], sys.argv[2]
missing = reads = 0
print("ready", flush=True)
while not os.path.exists(stop):
    try:
        os.close(os.open(path, os.O_RDONLY))
        reads += 1
    except FileNotFoundError:
        missing += 1
print(reads, missing)
"""


def test_forced_replace_never_leaves_the_name_empty(tmp_path: Path) -> None:
    """A reader process (in parallel, not under our GIL) opening the file all along."""
    target = tmp_path / "apikey"
    stop = tmp_path / "stop"
    q.save_apikey(str(target), K)
    reader = subprocess.Popen(
        [sys.executable, "-c", READER, str(target), str(stop)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert reader.stdout is not None
        assert reader.stdout.readline() == "ready\n"
        for _ in range(20):
            q.save_apikey(str(target), K, force=True)
    finally:
        stop.touch()
        out, _ = reader.communicate(timeout=30)
    reads, missing = map(int, out.split())
    assert reads > 0
    assert missing == 0
    assert len(list(tmp_path.glob("apikey.*.bak"))) == 20


def test_forced_replace_keeps_the_name_at_every_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same, deterministic: after every link, unlink and rename the publisher makes."""
    target = tmp_path / "apikey"
    q.save_apikey(str(target), K)
    empty: list[str] = []

    def watched(name: str) -> None:
        real = getattr(os, name)

        def call(*args: object, **kwargs: object) -> object:
            result = real(*args, **kwargs)
            if not os.path.lexists(target):
                empty.append(name)
            return result

        monkeypatch.setattr(_files.os, name, call)

    for name in ("link", "unlink", "rename", "replace"):
        watched(name)
    for _ in range(20):
        q.save_apikey(str(target), K, force=True)
    assert empty == []


# -- 11. a filesystem without hard links: the fallback really copies --------------------------


def _no_links(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(_files.os, "link", refuse)


def test_link_fallback_copies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _no_links(monkeypatch)
    target = tmp_path / "apikey"
    q.save_apikey(str(target), K)
    assert target.read_text() == K + "\n"
    assert _mode(target) == 0o600
    with pytest.raises(q.RefusedOverwriteError):  # still never clobbers
        q.save_apikey(str(target), K)
    saved = q.save_apikey(str(target), K, force=True)
    (backup,) = saved.backups
    assert Path(backup).read_text() == K + "\n"
    assert target.read_text() == K + "\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["apikey", Path(backup).name])


def test_link_fallback_never_follows_a_dangling_symlink(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _no_links(monkeypatch)
    target = tmp_path / "apikey"
    target.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(q.RefusedOverwriteError):
        q.save_apikey(str(target), K)
    assert not (tmp_path / "elsewhere").exists()
