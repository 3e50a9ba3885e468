"""rotate: the next pair beside the live one, a swap no crash or signal leaves half-done."""

from __future__ import annotations

import json
import os
import random
import re
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import run_cli
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

import qredo_openssl as q
from qredo_openssl import _journal, _rotate
from qredo_openssl._errors import QredoOpenSSLError
from qredo_openssl._pem import fingerprint

real = pytest.mark.real_openssl
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
BAK = r"\.\d{8}T\d{6}Z(\.\d+)?\.bak"


def mode(p: Path) -> int:
    return stat.S_IMODE(p.lstat().st_mode)


def tree(root: Path) -> dict[str, tuple[bytes | None, int]]:
    """Every name under ``root`` with its bytes (None for a directory) and mode."""
    out: dict[str, tuple[bytes | None, int]] = {}
    for p in sorted(root.rglob("*")):
        data = None if p.is_dir() else p.read_bytes()
        out[str(p.relative_to(root))] = (data, mode(p))
    return out


def private_keys(root: Path) -> set[bytes]:
    """The bytes of every private key file anywhere under ``root``."""
    return {
        p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and b"PRIVATE KEY-----" in p.read_bytes()[:64]
    }


@pytest.fixture(scope="module")
def new_key() -> tuple[bytes, bytes]:
    """A second 2048-bit key (PKCS#1 PEM, SPKI PEM), made by the independent oracle."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private, public


@pytest.fixture
def key_dir(keys, tmp_path: Path) -> Path:
    """A key directory holding the session's live pair."""
    d = tmp_path / "keys"
    d.mkdir(mode=0o700)
    shutil.copyfile(keys.pkcs1, d / "private.pem")
    shutil.copyfile(keys.public, d / "public.pem")
    os.chmod(d / "private.pem", 0o600)
    os.chmod(d / "public.pem", 0o644)
    return d


def put_next(d: Path, new_key: tuple[bytes, bytes]) -> None:
    """What ``rotate start`` leaves, without spending a genrsa on it."""
    n = d / "next"
    n.mkdir(mode=0o700)
    (n / "private.pem").write_bytes(new_key[0])
    (n / "public.pem").write_bytes(new_key[1])
    os.chmod(n / "private.pem", 0o600)


@pytest.fixture
def rotating(key_dir: Path, new_key: tuple[bytes, bytes]) -> Path:
    put_next(key_dir, new_key)
    return key_dir


def assert_rotated(d: Path, old: bytes, old_public: bytes, new_key: tuple[bytes, bytes]) -> None:
    """The new pair at the final names, the old pair in backups, nothing else left."""
    assert (d / "private.pem").read_bytes() == new_key[0]
    assert (d / "public.pem").read_bytes() == new_key[1]
    names = sorted(p.name for p in d.iterdir())
    assert len(names) == 4, names
    priv_bak = [n for n in names if re.fullmatch(r"private\.pem" + BAK, n)]
    pub_bak = [n for n in names if re.fullmatch(r"public\.pem" + BAK, n)]
    assert len(priv_bak) == len(pub_bak) == 1, names
    assert (d / priv_bak[0]).read_bytes() == old
    assert mode(d / priv_bak[0]) == 0o600
    assert (d / pub_bak[0]).read_bytes() == old_public


@real
def test_full_cycle(key_dir: Path, keys):
    old, old_public = keys.pkcs1.read_bytes(), keys.public.read_bytes()
    r = run_cli("rotate", "start", str(key_dir))
    assert r.returncode == 0, r.stderr
    n = key_dir / "next"
    assert r.stdout == (n / "public.pem").read_text()
    assert "rotate finish" in r.stderr
    assert "Upload Public Key" in r.stderr
    assert (mode(n), mode(n / "private.pem"), mode(n / "public.pem")) == (0o700, 0o600, 0o644)
    assert sorted(p.name for p in n.iterdir()) == ["private.pem", "public.pem"]
    new_key = ((n / "private.pem").read_bytes(), (n / "public.pem").read_bytes())
    assert new_key[0].startswith(b"-----BEGIN RSA PRIVATE KEY-----\n")
    assert (
        serialization.load_pem_private_key(new_key[0], None)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        == new_key[1]
    )

    before = tree(key_dir)
    r = run_cli("rotate", "start", str(key_dir))
    assert r.returncode == 4
    assert "already in progress" in r.stderr
    assert tree(key_dir) == before

    r = run_cli("rotate", "status", str(key_dir))
    assert r.returncode == 0, r.stderr
    assert fingerprint(old_public) in r.stdout
    assert fingerprint(new_key[1]) in r.stdout
    assert "half-done no" in " ".join(r.stdout.split())

    r = run_cli("rotate", "finish", str(key_dir))
    assert r.returncode == 0, r.stderr
    assert fingerprint(new_key[1]) in r.stderr
    assert_rotated(key_dir, old, old_public, new_key)
    assert run_cli("check", str(key_dir)).returncode == 0

    after = tree(key_dir)
    r = run_cli("rotate", "finish", str(key_dir))
    assert r.returncode == 1
    assert "no rotation in progress" in r.stderr
    assert tree(key_dir) == after
    assert "Traceback" not in r.stderr


def test_start_dry_run_writes_nothing(key_dir: Path, make_fake):
    fake = make_fake("3.0")
    before = tree(key_dir)
    r = run_cli("--json", "rotate", "start", "--dry-run", "--openssl", str(fake.path), str(key_dir))
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["dry_run"] is True
    assert doc["next_dir"] == str(key_dir / "next")
    assert doc["commands"][0][1:] == ["genrsa", "-traditional", "-out", "private.pem", "2048"]
    assert tree(key_dir) == before
    assert [c[0] for c in fake.calls()] == ["version"]


def test_start_with_fake_openssl_and_refusals(key_dir: Path, make_fake, tmp_path: Path):
    fake = make_fake("1.1.1")
    r = run_cli("--json", "rotate", "start", "--openssl", str(fake.path), str(key_dir))
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["public_pem"] == (key_dir / "next" / "public.pem").read_text()
    assert doc["fingerprint"] == fingerprint(doc["public_pem"].encode())
    assert doc["private"] == str(key_dir / "next" / "private.pem")
    assert doc["dry_run"] is False
    assert ["genrsa", "-out", "private.pem", "2048"] in fake.calls()  # no -traditional on 1.1.1
    assert (key_dir / "next" / "private.pem").exists()
    # no current key: nothing to rotate (exit 1), before any OpenSSL runs
    empty = tmp_path / "empty"
    empty.mkdir()
    r = run_cli("rotate", "start", "--openssl", "/nonexistent", str(empty))
    assert r.returncode == 1
    assert "keygen" in r.stderr
    assert list(empty.iterdir()) == []


def test_failed_start_leaves_no_next_dir(key_dir: Path, make_fake):
    fake = make_fake("3.0", genrsa_action="exit 1")
    r = run_cli("rotate", "start", "--openssl", str(fake.path), str(key_dir))
    assert r.returncode == 3
    assert sorted(p.name for p in key_dir.iterdir()) == ["private.pem", "public.pem"]


def test_token_key_is_refused(key_dir: Path):
    (key_dir / "private.uri").write_text("pkcs11:token=T;object=O\n")
    r = run_cli("rotate", "start", "--openssl", "/nonexistent", str(key_dir))
    assert r.returncode == 1
    assert "PKCS#11" in r.stderr
    assert "keygen --pkcs11" in r.stderr
    assert not (key_dir / "next").exists()


def test_abort(rotating: Path, keys):
    current = tree(rotating)
    nxt = {k: v for k, v in current.items() if k.startswith("next")}
    r = run_cli("rotate", "abort", str(rotating))
    assert r.returncode == 0, r.stderr
    kept = [p for p in rotating.iterdir() if re.fullmatch("next" + BAK, p.name)]
    assert len(kept) == 1
    assert kept[0].is_dir()
    assert mode(kept[0]) == 0o700
    assert {k.replace(kept[0].name, "next", 1): v for k, v in tree(rotating).items()} == current
    assert tree(kept[0]) == {k[len("next/") :]: v for k, v in nxt.items() if k != "next"}
    assert (rotating / "private.pem").read_bytes() == keys.pkcs1.read_bytes()

    r = run_cli("--json", "rotate", "abort", str(rotating))
    assert r.returncode == 1
    assert "no rotation in progress" in json.loads(r.stdout)["error"]["message"]
    r = run_cli("rotate", "start", "--dry-run", str(rotating))  # a new rotation may start
    assert r.returncode == 0, r.stderr


def test_status_json_shape(rotating: Path, keys, new_key):
    r = run_cli("--json", "rotate", "status", str(rotating))
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert set(doc) == {"current", "next", "half_done"}
    assert set(doc["current"]) == set(doc["next"]) == {"fingerprint", "since"}
    assert doc["current"]["fingerprint"] == fingerprint(keys.public.read_bytes())
    assert doc["next"]["fingerprint"] == fingerprint(new_key[1])
    assert ISO.match(doc["current"]["since"])
    assert ISO.match(doc["next"]["since"])
    os.utime(rotating / "private.pem", (0, 86400 * 365))
    doc = json.loads(run_cli("--json", "rotate", "status", str(rotating)).stdout)
    assert doc["current"]["since"] == "1971-01-01T00:00:00Z"
    assert doc["half_done"] is False

    shutil.rmtree(rotating / "next")
    doc = json.loads(run_cli("--json", "rotate", "status", str(rotating)).stdout)
    assert doc["next"] is None
    assert doc["half_done"] is False
    r = run_cli("--json", "rotate", "status", str(rotating / "nope"))
    assert r.returncode == 1
    assert json.loads(r.stdout)["error"]["code"] == 1


@real
def test_check_reports_a_rotation_in_progress(rotating: Path, tmp_path: Path):
    def pending(d: Path) -> list[dict[str, str]]:
        r = run_cli("--json", "check", str(d))
        assert r.returncode == 0, r.stderr
        return [f for f in json.loads(r.stdout) if f["name"] == "rotate.pending"]

    [f] = pending(rotating)
    assert f["status"] == "warn"
    assert f"rotate finish {rotating}" in f["message"]
    (rotating / "rotate.journal").write_text("{")
    [f] = pending(rotating)
    assert "a rotate finish was interrupted" in f["message"]
    assert run_cli("rotate", "finish", str(rotating)).returncode == 0
    assert pending(rotating) == []


class ProbeFailed(QredoOpenSSLError):
    def __init__(self, code: int) -> None:
        super().__init__(f"probe: exit {code}")
        self.exit_code = code


@real
@pytest.mark.parametrize("code", [5, 6, 3])
def test_failing_probe_changes_nothing(rotating: Path, code: int):
    seen: list[q.KeyPaths] = []

    def probe(paths: q.KeyPaths) -> None:
        seen.append(paths)
        raise ProbeFailed(code)

    before = tree(rotating)
    paths = q.KeyPaths.in_dir(str(rotating))
    with pytest.raises(ProbeFailed) as info:
        _rotate.finish_rotation(paths, q.detect_openssl(), probe=probe)
    assert info.value.exit_code == code
    assert tree(rotating) == before
    assert seen[0].private == str(rotating / "next" / "private.pem")
    assert seen[0].apikey == str(rotating / "apikey")  # the API key stays DIR's


@real
def test_passing_probe_promotes(rotating: Path, keys, new_key):
    seen: list[bytes] = []
    paths = q.KeyPaths.in_dir(str(rotating))
    r = _rotate.finish_rotation(
        paths, q.detect_openssl(), probe=lambda p: seen.append(Path(p.private).read_bytes())
    )
    assert seen == [new_key[0]]  # it was given the next key, before the swap
    assert r.fingerprint == fingerprint(new_key[1])
    assert r.old_fingerprint == fingerprint(keys.public.read_bytes())
    assert not r.resumed
    assert r.kept_next is None
    assert_rotated(rotating, keys.pkcs1.read_bytes(), keys.public.read_bytes(), new_key)


def test_probe_usage_errors_change_nothing(rotating: Path):
    # The probe itself, against a real server, is in tests/test_send.py.
    before = tree(rotating)
    r = run_cli("rotate", "finish", "--probe", "https://api.example", str(rotating))
    assert r.returncode == 2
    assert "use https://api.example/" in r.stderr
    r = run_cli("rotate", "finish", "--cacert", "ca.pem", str(rotating))
    assert r.returncode == 2
    assert tree(rotating) == before


@real
def test_bad_next_pair_changes_nothing(rotating: Path, keys):
    shutil.copyfile(keys.public, rotating / "next" / "public.pem")  # not the next key's half
    before = tree(rotating)
    r = run_cli("rotate", "finish", str(rotating))
    assert r.returncode == 1
    assert "public.matches" in r.stderr
    assert "nothing was changed" in r.stderr
    assert tree(rotating) == before


@real
def test_other_files_in_next_are_kept(rotating: Path, keys, new_key):
    (rotating / "next" / "apikey").write_text("QUJD\n")
    r = run_cli("--json", "rotate", "finish", str(rotating))
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert re.fullmatch(re.escape(str(rotating / "next")) + BAK, doc["kept_next"])
    assert Path(doc["kept_next"], "apikey").read_text() == "QUJD\n"
    assert doc["fingerprint"] == fingerprint(new_key[1])
    assert [Path(b).read_bytes() for b in doc["backups"]] == [
        keys.pkcs1.read_bytes(),
        keys.public.read_bytes(),
    ]


def test_nested_usage_errors():
    r = run_cli("rotate")
    assert r.returncode == 2
    assert "qredo-openssl rotate" in r.stderr
    r = run_cli("--json", "rotate", "frob")
    assert r.returncode == 2
    assert "invalid choice" in json.loads(r.stdout)["error"]["message"]
    r = run_cli("rotate", "status", "--bits", "2048")
    assert r.returncode == 2


def test_help_ends_with_examples_and_exit_codes():
    for sub in ("start", "status", "finish", "abort"):
        r = run_cli("rotate", sub, "--help")
        assert r.returncode == 0
        text = r.stdout
        assert "examples:" in text
        assert f"qredo-openssl rotate {sub}" in text
        assert text.rstrip().split("exit codes:")[-1].strip().startswith("0")


def test_signals_are_held_while_swapping():
    reached = []

    def swap() -> None:
        with _journal.signals_held():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.01)  # the signal arrives here, and waits
            reached.append(True)

    with pytest.raises(KeyboardInterrupt):
        swap()
    assert reached == [True]


# -- crashes: a finish cut off at every step, then completed ------------------------------


class Crash(BaseException):
    """A SIGKILL, in-process: nothing of ours catches it, no ``finally`` of ours cleans up."""


MUTATIONS = ("link", "chmod", "replace", "rmdir", "rename", "unlink")


def crash_at(monkeypatch, root: Path, k: int, error: BaseException | None = None) -> list[str]:
    """Make the k-th file operation under ``root`` raise :class:`Crash` (or ``error``)."""
    done: list[str] = []
    for name in MUTATIONS:
        real_op = getattr(os, name)

        def op(*a, _name=name, _real=real_op, **kw):
            if str(a[0]).startswith(str(root)):
                if len(done) == k:
                    done.append(f"({_name} failed)")  # once: what follows runs
                    raise error or Crash(_name)
                done.append(_name)
            return _real(*a, **kw)

        monkeypatch.setattr(os, name, op)
    return done


@real
def test_crash_at_every_step_then_finish(rotating: Path, keys, new_key, monkeypatch):
    openssl = q.detect_openssl()
    old, old_public = keys.pkcs1.read_bytes(), keys.public.read_bytes()
    template = rotating.parent / "template"
    shutil.copytree(rotating, template)
    paths = q.KeyPaths.in_dir(str(rotating))
    k = 0
    while True:
        shutil.rmtree(rotating)
        shutil.copytree(template, rotating)
        with monkeypatch.context() as m:
            done = crash_at(m, rotating, k)
            try:
                _rotate.finish_rotation(paths, openssl)
            except Crash:
                pass
            else:
                break  # k is past the last step
        assert private_keys(rotating) >= {old, new_key[0]}, (k, done)
        st = _rotate.rotation_status(paths)
        assert st.half_done is (rotating / "rotate.journal").exists(), (k, done)
        if st.half_done:
            r = run_cli("rotate", "abort", str(rotating))
            assert r.returncode == 4
            assert "cut off half-way" in r.stderr
            assert run_cli("rotate", "start", "--dry-run", str(rotating)).returncode == 4
        # completing needs no OpenSSL: its checks were passed before the journal was written
        no_openssl = ("--openssl", "/nonexistent") if st.half_done else ()
        r = run_cli("--json", "rotate", "finish", *no_openssl, str(rotating))
        assert r.returncode == 0, (k, done, r.stderr)
        assert json.loads(r.stdout)["resumed"] is st.half_done
        assert_rotated(rotating, old, old_public, new_key)
        k += 1
    assert done == ["chmod", "link", "chmod", "replace", "link", "replace", "rmdir", "unlink"]
    assert k == len(done)


@real
@pytest.mark.parametrize(("k", "changed"), [(1, False), (3, True)], ids=["link", "replace"])
def test_a_refused_step(rotating: Path, keys, new_key, monkeypatch, k, changed):
    """A filesystem error: at the first step nothing changed and no journal is left; later,
    the journal stays for the next finish to complete."""
    before = tree(rotating)
    with monkeypatch.context() as m:
        crash_at(m, rotating, k, OSError(1, "Operation not permitted"))
        r = run_cli("rotate", "finish", str(rotating))
    assert r.returncode == 1
    assert "Operation not permitted" in r.stderr
    assert "Traceback" not in r.stderr
    assert (rotating / "rotate.journal").exists() is changed
    if not changed:
        assert "nothing was changed" in r.stderr
        assert tree(rotating) == before
    else:
        assert f"rotate finish {rotating}" in r.stderr
        assert private_keys(rotating) == {keys.pkcs1.read_bytes(), new_key[0]}
    assert run_cli("rotate", "finish", str(rotating)).returncode == 0
    assert_rotated(rotating, keys.pkcs1.read_bytes(), keys.public.read_bytes(), new_key)


@real
def test_symlinks_in_next_are_refused(rotating: Path, tmp_path: Path):
    target = tmp_path / "elsewhere.pem"
    (rotating / "next" / "private.pem").rename(target)
    (rotating / "next" / "private.pem").symlink_to(target)
    before = tree(rotating)
    r = run_cli("rotate", "finish", str(rotating))
    assert r.returncode == 1
    assert "symbolic link" in r.stderr
    assert tree(rotating) == before


@real
def test_a_reader_never_finds_the_key_missing(rotating: Path, keys, new_key):
    """While finish swaps, the live names always hold the old file or the new one."""
    import threading

    seen: set[bytes] = set()
    missing: list[str] = []
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            for name in ("private.pem", "public.pem"):
                try:
                    seen.add((rotating / name).read_bytes())
                except FileNotFoundError:
                    missing.append(name)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        _rotate.finish_rotation(q.KeyPaths.in_dir(str(rotating)), q.detect_openssl())
    finally:
        stop.set()
        reader.join()
    assert missing == []
    assert seen <= {keys.pkcs1.read_bytes(), keys.public.read_bytes(), *new_key}


@real
def test_torn_journal_is_dropped(rotating: Path, keys, new_key, monkeypatch):
    """Cut off while writing the journal: no step was taken; finish starts afresh."""
    (rotating / "rotate.journal").write_bytes(b'{"format": "qredo-openssl rotate journal", "ver')
    st = _rotate.rotation_status(q.KeyPaths.in_dir(str(rotating)))
    assert st.half_done is False
    assert st.next is not None
    doc = json.loads(run_cli("--json", "rotate", "status", str(rotating)).stdout)
    assert doc["half_done"] is False
    r = run_cli("rotate", "finish", str(rotating))
    assert r.returncode == 0, r.stderr
    assert_rotated(rotating, keys.pkcs1.read_bytes(), keys.public.read_bytes(), new_key)


def test_changed_file_is_not_moved_blindly(rotating: Path, new_key, monkeypatch):
    """A journal whose files changed since: refused, one line, every key still there."""
    paths = q.KeyPaths.in_dir(str(rotating))
    with monkeypatch.context() as m:
        crash_at(m, rotating, 3)  # after both links... of the private key, before its replace
        with pytest.raises(Crash):
            _rotate.finish_rotation(paths, q.detect_openssl())
    (rotating / "next" / "private.pem").write_bytes(b"someone else's\n")
    keys_before = private_keys(rotating)
    r = run_cli("rotate", "finish", str(rotating))
    assert r.returncode == 1
    assert "neither the old nor the new" in r.stderr
    assert private_keys(rotating) == keys_before


def _planted(d: Path, **changes: object) -> None:
    """A complete journal naming what this rotation does not own."""
    move = {"role": "private", "current": "private.pem", "next": "next/private.pem",
            "backup": "private.pem.20260101T000000Z.bak", "old": "0" * 64, "new": "1" * 64}
    pub = {**move, "role": "public", "current": "public.pem", "next": "next/public.pem",
           "backup": "public.pem.20260101T000000Z.bak"}
    doc = {"format": _journal.JOURNAL_FORMAT, "version": _journal.JOURNAL_VERSION,
           "moves": [move, pub], "next_dir": "next", "old_fingerprint": None,
           "new_fingerprint": "x", "complete": True}
    doc.update(changes)
    (d / "rotate.journal").write_text(json.dumps(doc))


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"moves": [], "next_dir": "VICTIM"}, id="next-dir-outside"),
        pytest.param({"next_dir": "../victim"}, id="next-dir-dotdot"),
        pytest.param({"moves": [{"role": "private", "current": "../victim/file",
                                 "next": "next/private.pem", "backup": "../victim/file.bak",
                                 "old": "0" * 64, "new": "1" * 64}]}, id="current-outside"),
        pytest.param({"moves": []}, id="no-moves"),
    ],
)  # fmt: skip
def test_a_journal_naming_foreign_files_is_never_acted_on(
    rotating: Path, tmp_path: Path, changes: dict[str, object]
) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "file").write_text("mine")
    if changes.get("next_dir") == "VICTIM":
        changes["next_dir"] = str(victim)
    _planted(rotating, **changes)
    before = sorted(p.name for p in rotating.iterdir())
    r = run_cli("rotate", "finish", str(rotating))
    assert r.returncode == 1, r.stdout + r.stderr
    assert "does not own" in r.stderr
    assert (victim / "file").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("victim")) == ["victim"]
    assert sorted(p.name for p in rotating.iterdir()) == before


# -- real processes: SIGKILL at random points, SIGTERM ------------------------------------

SLOW = r"""
import os, sys, time
import pathlib  # first: on 3.9 pathlib's accessor takes os.open at import, as a method if patched
root, log = sys.argv[1], sys.argv[2]
def slowed(name):
    real = getattr(os, name)
    def op(*a, **kw):
        path = str(a[0])
        marked = path.startswith(root) and (
            name != "open" or (path == root and a[1] & os.O_DIRECTORY)  # the lock: before all
        )
        if marked:
            with open(log, "a") as f:
                f.write(name + "\n")
            time.sleep(0.02)
        return real(*a, **kw)
    setattr(os, name, op)
for n in ("open", "link", "chmod", "replace", "rmdir", "unlink"):
    slowed(n)
sys.argv = ["qredo-openssl", *sys.argv[3:]]
from qredo_openssl._console import console_main
console_main()
"""


def _spawn(d: Path, log: Path | None) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "NO_COLOR")}
    if log is None:
        argv = [sys.executable, "-m", "qredo_openssl", "rotate", "finish", str(d)]
    else:
        argv = [sys.executable, "-c", SLOW, str(d), str(log), "rotate", "finish", str(d)]
    return subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )


def _marks(log: Path) -> int:
    return len(log.read_text().split()) if log.exists() else 0


def _kill_at(d: Path, log: Path | None, mark: int, delay: float, sig: int) -> tuple[int, str]:
    proc = _spawn(d, log)
    deadline = time.monotonic() + 30
    while log is not None and _marks(log) < mark and proc.poll() is None:
        assert time.monotonic() < deadline, "the marks never came"
        time.sleep(0.002)
    time.sleep(delay)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    return proc.returncode, err


@real
def test_sigkill_at_random_points_then_finish(rotating: Path, keys, new_key):
    rng = random.Random()
    seed = rng.randrange(1 << 30)
    rng.seed(seed)
    old, old_public = keys.pkcs1.read_bytes(), keys.public.read_bytes()
    # marks 1-9: the lock, the journal's chmod, link, chmod, replace, link, replace, rmdir,
    # unlink (see SLOW); each run is killed before the op of its mark, or at a random time
    runs = [(f"m{i}", i, rng.uniform(0, 0.02)) for i in range(1, 10)]
    runs += [(f"t{i}", None, rng.uniform(0.05, 0.6)) for i in range(3)]  # plain, a random time
    dirs = {}
    for name, _, _ in runs:
        dirs[name] = rotating.parent / name
        shutil.copytree(rotating, dirs[name])

    def one(run: tuple[str, int | None, float]) -> tuple[int, str]:
        name, mark, delay = run
        log = None if mark is None else rotating.parent / f"{name}.log"
        return _kill_at(dirs[name], log, mark or 0, delay, signal.SIGKILL)

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(one, runs))
    for (name, mark, delay), (code, err) in zip(runs, results):
        d = dirs[name]
        why = f"seed {seed}, run {name}, mark {mark}, delay {delay:.3f}: {code} {err}"
        assert "Traceback" not in err, why
        assert private_keys(d) >= {old, new_key[0]}, why
        st = json.loads(run_cli("--json", "rotate", "status", str(d)).stdout)
        journal = _journal.read_journal(str(d / "rotate.journal"))  # a SIGKILL may tear it
        assert st["half_done"] is isinstance(journal, _journal.Journal), why
        r = run_cli("rotate", "finish", str(d))
        finished = r.returncode == 1 and "no rotation in progress" in r.stderr
        assert r.returncode == 0 or finished, why + r.stderr
        assert_rotated(d, old, old_public, new_key)
        assert private_keys(d) == {old, new_key[0]}, why


@real
def test_two_finishes_at_once(rotating: Path, keys, new_key):
    procs = [_spawn(rotating, None) for _ in range(2)]
    results = [(p.communicate(timeout=60)[1], p.returncode) for p in procs]
    assert sorted(code for _, code in results) == [0, 1], results
    assert_rotated(rotating, keys.pkcs1.read_bytes(), keys.public.read_bytes(), new_key)


@real
@pytest.mark.parametrize(
    ("mark", "expect"),
    [
        pytest.param(1, "old", id="at-the-lock"),
        pytest.param(3, "new", id="at-the-first-link"),
        pytest.param(6, "new", id="between-the-two-replaces"),
    ],
)
def test_sigterm_during_finish_leaves_old_or_new(rotating: Path, keys, new_key, mark, expect):
    log = rotating.parent / "marks.log"
    code, err = _kill_at(rotating, log, mark, 0.005, signal.SIGTERM)
    assert code == 130, err
    assert "Traceback" not in err
    assert not (rotating / "rotate.journal").exists()
    if expect == "old":
        assert "nothing was changed" in err
        assert (rotating / "private.pem").read_bytes() == keys.pkcs1.read_bytes()
        assert (rotating / "public.pem").read_bytes() == keys.public.read_bytes()
        assert (rotating / "next" / "private.pem").read_bytes() == new_key[0]
    else:
        assert "the rotation was completed" in err
        assert_rotated(rotating, keys.pkcs1.read_bytes(), keys.public.read_bytes(), new_key)


def test_a_start_cut_off_is_reported_and_dropped(key_dir: Path):
    """A SIGKILLed start leaves next/ without a pair: status says so, finish refuses, abort."""
    (key_dir / "next" / ".qredo-openssl-x").mkdir(parents=True)
    r = run_cli("--json", "rotate", "status", str(key_dir))
    assert json.loads(r.stdout)["next"] == {"fingerprint": None, "since": None}
    r = run_cli("rotate", "status", str(key_dir))
    assert "rotate abort" in r.stderr
    r = run_cli("rotate", "finish", str(key_dir))
    assert r.returncode == 1
    assert "private.exists" in r.stderr
    assert run_cli("rotate", "abort", str(key_dir)).returncode == 0
    names = sorted(p.name for p in key_dir.iterdir())
    assert names[1:] == ["private.pem", "public.pem"]
    assert re.fullmatch("next" + BAK, names[0])


def test_status_imports_nothing_heavy(rotating: Path):
    from test_imports import HEAVY, imported

    mods = imported("--json", "rotate", "status", str(rotating))
    assert [m for m in HEAVY if m in mods] == []


@real
def test_check_on_a_half_done_finish_advises_rotate_finish(rotating: Path, keys, new_key):
    """Cut off between the two swaps (new private.pem, old public.pem): the pair does not
    match, and the one safe step is rotate finish, not pubkey --force (which would write a
    public.pem the journal does not know, and leave the rotation impossible to complete)."""
    paths = q.KeyPaths.in_dir(str(rotating))
    with pytest.MonkeyPatch.context() as m:
        done = crash_at(m, rotating, 4)  # the public key's link, after the private replace
        with pytest.raises(Crash):
            _rotate.finish_rotation(paths, q.detect_openssl())
    assert done[-2:] == ["replace", "(link failed)"]
    finish = ["qredo-openssl", "rotate", "finish", str(rotating)]
    r = run_cli("--json", "check", str(rotating))
    assert r.returncode == 1, r.stdout
    found = {f["name"]: f for f in json.loads(r.stdout)}
    assert found["public.matches"]["status"] == "fail"
    assert found["public.matches"]["fix"] == finish
    assert found["rotate.pending"]["fix"] == finish
    assert "pubkey" not in r.stdout
    r = run_cli("check", str(rotating))
    assert r.returncode == 1
    row = next(line for line in r.stdout.splitlines() if "public.matches" in line)
    assert row.endswith(f"; run: qredo-openssl rotate finish {rotating}")
    assert "cut off half-way" in row
    assert "pubkey" not in r.stdout
    assert run_cli("rotate", "finish", str(rotating)).returncode == 0
    assert_rotated(rotating, keys.pkcs1.read_bytes(), keys.public.read_bytes(), new_key)
    assert run_cli("check", str(rotating)).returncode == 0


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(["pubkey", "--force"], id="pubkey-force"),
        pytest.param(["pubkey"], id="pubkey"),
        pytest.param(["convert"], id="convert"),
        pytest.param(["keygen", "--force"], id="keygen-force"),
        pytest.param(["keygen", "--skip-existing"], id="keygen-skip-existing"),
        pytest.param(["keygen"], id="keygen"),
        pytest.param(["keygen", "--pkcs11", "pkcs11:token=t;object=k"], id="keygen-pkcs11"),
    ],
)
def test_nothing_rewrites_a_key_of_a_half_done_finish(rotating: Path, keys, new_key, argv):
    """Mid-swap, a new key, a rewritten public.pem or a converted private.pem would leave the
    rotation impossible to complete: each is refused (exit 4), with rotate finish as its fix,
    and nothing changes; rotate finish then completes it."""
    paths = q.KeyPaths.in_dir(str(rotating))
    with pytest.MonkeyPatch.context() as m:
        crash_at(m, rotating, 4)  # the public key's link, after the private replace
        with pytest.raises(Crash):
            _rotate.finish_rotation(paths, q.detect_openssl())
    before = {p.name: p.read_bytes() for p in rotating.iterdir() if p.is_file()}
    r = run_cli("--json", *argv, str(rotating))
    assert r.returncode == 4, r.stderr
    error = json.loads(r.stdout)["error"]
    assert error["fix"] == ["qredo-openssl", "rotate", "finish", str(rotating)]
    assert "mid-rotation" in error["message"]
    assert {p.name: p.read_bytes() for p in rotating.iterdir() if p.is_file()} == before
    assert run_cli("rotate", "finish", str(rotating)).returncode == 0
    assert_rotated(rotating, keys.pkcs1.read_bytes(), keys.public.read_bytes(), new_key)


def test_a_key_file_named_in_a_half_done_dir_is_refused_too(rotating: Path, tmp_path: Path):
    """--private/--public naming files of a DIR mid-rotation, from another DIR: refused."""
    paths = q.KeyPaths.in_dir(str(rotating))
    with pytest.MonkeyPatch.context() as m:
        crash_at(m, rotating, 4)
        with pytest.raises(Crash):
            _rotate.finish_rotation(paths, q.detect_openssl())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    r = run_cli("pubkey", "--force", "--private", str(rotating / "private.pem"),
                "--public", str(rotating / "public.pem"), str(elsewhere))  # fmt: skip
    assert r.returncode == 4, r.stderr
    assert r.stderr.rstrip().endswith(f"; run: qredo-openssl rotate finish {rotating}")
    token_dir = tmp_path / "token"  # a DIR naming a token key writes public.pem elsewhere
    token_dir.mkdir()
    (token_dir / "private.uri").write_text("pkcs11:token=t;object=k\n")
    r = run_cli("pubkey", "--force", "--public", str(rotating / "public.pem"), str(token_dir))
    assert r.returncode == 4, r.stderr
    assert r.stderr.rstrip().endswith(f"; run: qredo-openssl rotate finish {rotating}")


def _refusal(call) -> QredoOpenSSLError:
    with pytest.raises(QredoOpenSSLError) as info:
        call()
    return info.value


@real
def test_rotate_hints_are_fix_data(key_dir: Path, new_key, tmp_path: Path, monkeypatch):
    """Each next step rotate advises is ``.fix`` (an argv), shown as ``; run: ...``, and a
    JSON field where the CLI renders the error as a document."""
    from qredo_openssl._cli._base import error_doc, error_message

    openssl = q.detect_openssl()
    d = str(key_dir)
    paths = q.KeyPaths.in_dir(d)
    plan = q.plan_keygen(openssl)
    cmd = ("qredo-openssl",)
    cases: list[tuple[QredoOpenSSLError, tuple[str, ...]]] = []

    gone = q.KeyPaths.in_dir(str(tmp_path / "gone"))
    cases.append((_refusal(lambda: _rotate.check_can_start(gone)), (*cmd, "keygen", gone.dir)))
    empty = tmp_path / "empty"
    empty.mkdir()
    no_key = q.KeyPaths.in_dir(str(empty))
    cases.append((_refusal(lambda: _rotate.start_rotation(no_key, plan)),
                  (*cmd, "keygen", str(empty))))  # fmt: skip
    cases.append((_refusal(lambda: _rotate.finish_rotation(paths, openssl)),
                  (*cmd, "rotate", "start", d)))  # fmt: skip
    put_next(key_dir, new_key)
    cases.append((_refusal(lambda: _rotate.check_can_start(paths)),
                  (*cmd, "rotate", "finish", d)))  # fmt: skip
    (key_dir / "public.pem").rename(key_dir / "public.away")
    cases.append((_refusal(lambda: _rotate.finish_rotation(paths, openssl)),
                  (*cmd, "pubkey", d)))  # fmt: skip
    (key_dir / "public.away").rename(key_dir / "public.pem")
    good_public = (key_dir / "next" / "public.pem").read_bytes()
    (key_dir / "next" / "public.pem").write_bytes((key_dir / "public.pem").read_bytes())
    cases.append((_refusal(lambda: _rotate.finish_rotation(paths, openssl)),
                  (*cmd, "rotate", "abort", d)))  # fmt: skip
    (key_dir / "next" / "public.pem").write_bytes(good_public)
    with monkeypatch.context() as m:  # a filesystem that refuses a later step
        crash_at(m, key_dir, 3, OSError(1, "Operation not permitted"))
        cases.append((_refusal(lambda: _rotate.finish_rotation(paths, openssl)),
                      (*cmd, "rotate", "finish", d)))  # fmt: skip
    assert _rotate.rotation_status(paths).half_done
    cases.append((_refusal(lambda: _rotate.abort_rotation(paths)),
                  (*cmd, "rotate", "finish", d)))  # fmt: skip
    cases.append((_refusal(lambda: _rotate.check_can_start(paths)),
                  (*cmd, "rotate", "finish", d)))  # fmt: skip

    for error, fix in cases:
        assert error.fix == fix, str(error)
        assert shlex.join(fix) not in str(error)  # said once: as the fix
        assert error_message(error).endswith(f"; run: {shlex.join(fix)}")
        assert error_doc(error)["fix"] == list(fix)
    r = run_cli("rotate", "abort", d)
    assert r.returncode == 4
    assert r.stderr.rstrip().endswith(f"; run: qredo-openssl rotate finish {d}")
    r = run_cli("--json", "rotate", "abort", d)  # the error main() reports carries it too
    assert r.returncode == 4
    assert json.loads(r.stdout)["error"]["fix"] == ["qredo-openssl", "rotate", "finish", d]


@real
def test_an_interrupt_that_leaves_a_half_done_finish_gives_its_fix(rotating: Path, monkeypatch):
    """An interrupt not held (raised by code, not a signal) between the swaps: exit 130, and
    the command that completes it, as text and as the JSON error's fix."""
    finish = ["qredo-openssl", "rotate", "finish", str(rotating)]
    with monkeypatch.context() as m:
        crash_at(m, rotating, 4, KeyboardInterrupt())
        r = run_cli("--json", "rotate", "finish", str(rotating))
    assert r.returncode == 130, r.stderr
    error = json.loads(r.stdout)["error"]
    assert error["fix"] == finish
    assert error["message"] == f"interrupted half-way; complete it; run: {shlex.join(finish)}"
    assert r.stderr == f"error: {error['message']}\n"
    assert run_cli("rotate", "finish", str(rotating)).returncode == 0
