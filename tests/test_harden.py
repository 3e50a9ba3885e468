"""Hardening (issue 10): what trying to break the tool found, each pinned by a test."""

from __future__ import annotations

import errno
import json
import os
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import run_cli, spawn_cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import qredo_openssl as q
from qredo_openssl import _files

K = "c2VjcmV0LWtleS1mb3ItdGVzdHM="  # a valid Base64 API key


DATA = Path(__file__).parent / "data"


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


# -- 2. one bad batch line stays on its line ------------------------------------------------


class _NoOpenSSL(q.Signer):
    """A Signer whose signature costs nothing: these tests are about the lines, not RSA."""

    def signature(self, payload: bytes) -> bytes:
        return b"sig"


def _signer(tmp_path: Path) -> q.Signer:
    from qredo_openssl._sign import SigningKey

    return _NoOpenSSL(None, SigningKey("k", ()), None, None)  # type: ignore[arg-type]


def _json_lines() -> st.SearchStrategy[bytes]:
    """JSON objects with batch keys (and others) holding any JSON value, any Unicode."""
    # st.text() never draws surrogates; JSON's "\ud800" escapes carry them all the same
    lone = st.integers(0xD800, 0xDFFF).map(chr)
    surrogates = st.lists(st.one_of(lone, st.characters()), min_size=1, max_size=4).map("".join)
    scalars = st.one_of(
        st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=30), surrogates
    )
    values = st.recursive(
        scalars,
        lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
        max_leaves=6,
    )
    url = st.sampled_from(["https://x.example/a", "http://127.0.0.1/"]) | scalars
    some = st.one_of(scalars, scalars, values)
    names = ["method", "body", "body_file", "timestamp", "nonce", "x"]
    docs = st.fixed_dictionaries({"url": url}, optional={k: some for k in names})
    return docs.map(lambda d: json.dumps(d).encode())


GOOD = b'{"url": "https://x.example/a", "timestamp": 1700000000}'
BAD_LINES = {
    "deep-nesting": b"[" * 100_000 + b"]" * 100_000,
    "deep-object": b'{"url": ' + b'{"a": ' * 50_000 + b"1" + b"}" * 50_001,
    "5000-digits": b'{"url": "https://x.example/", "timestamp": ' + b"9" * 5000 + b"}",
    "lone-surrogate-body": b'{"url": "https://x.example/", "body": "\\ud800"}',
    "nul-body-file": b'{"url": "https://x.example/", "body_file": "a\\u0000b"}',
    "surrogate-body-file": b'{"url": "https://x.example/", "body_file": "\\ud800"}',
    "surrogate-url": b'{"url": "https://x.example/\\udcff"}',
    "float": b'{"url": "https://x.example/", "timestamp": 1e400}',
}


@pytest.mark.parametrize("bad", BAD_LINES.values(), ids=BAD_LINES.keys())
def test_batch_bad_line_stays_on_its_line(tmp_path: Path, bad: bytes) -> None:
    from qredo_openssl._batch import sign_batch

    items = sign_batch(_signer(tmp_path), [GOOD, bad, GOOD], jobs=2)
    assert [i.line for i in items] == [1, 2, 3]
    assert items[0].result is not None
    assert items[2].result is not None
    assert items[1].error is not None
    assert str(items[1].error).startswith("line 2: ")
    assert items[1].to_json()["error"]["code"] == 1


@given(st.lists(st.one_of(st.binary(max_size=200), _json_lines()), min_size=1, max_size=5))
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_batch_any_line(lines: list[bytes]) -> None:
    from qredo_openssl._batch import sign_batch

    items = sign_batch(_signer(Path(".")), [GOOD, *lines], jobs=2)
    assert [i.line for i in items] == list(range(1, len(lines) + 2))
    assert items[0].result is not None
    for item in items:
        assert (item.result is None) != (item.error is None)
        json.dumps(item.to_json())  # every outcome can be reported


def test_batch_cli_json_one_document(keys, tmp_path: Path) -> None:
    batch = tmp_path / "batch.jsonl"
    batch.write_bytes(b"\n".join([GOOD, *BAD_LINES.values(), GOOD]) + b"\n")
    private = str(keys.pkcs1)
    r = run_cli("--json", "sign", "--batch", str(batch), "--private", private, str(tmp_path))
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr
    doc = json.loads(r.stdout)
    assert doc["failed"] == len(BAD_LINES)
    assert "x-sign" in doc["results"][0]["headers"]
    assert "x-sign" in doc["results"][-1]["headers"]


def test_batch_body_file_is_found_beside_the_batch(keys, tmp_path: Path) -> None:
    (tmp_path / "jobs").mkdir()
    (tmp_path / "jobs" / "body.json").write_bytes(b'{"a": 1}')
    (tmp_path / "jobs" / "b.jsonl").write_text(
        json.dumps({"url": "https://x.example/", "body_file": "body.json"}) + "\n"
    )
    args = ("--json", "sign", "--private", str(keys.pkcs1))
    r = run_cli(*args, "--batch", "jobs/b.jsonl", str(tmp_path), cwd=tmp_path)
    assert r.returncode == 0, r.stdout
    assert json.loads(r.stdout)["failed"] == 0
    # from standard input, a relative body_file is found in the current directory
    line = (tmp_path / "jobs" / "b.jsonl").read_bytes()
    r = run_cli(*args, "--batch", "-", str(tmp_path), cwd=tmp_path / "jobs", input=line)
    assert json.loads(r.stdout)["failed"] == 0
    r = run_cli(*args, "--batch", "-", str(tmp_path), cwd=tmp_path, input=line)
    assert json.loads(r.stdout)["failed"] == 1


def test_batch_bodies_held_at_once_are_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from qredo_openssl import _batch

    monkeypatch.setattr(_batch, "BODY_BUDGET", 1000, raising=False)
    for i in range(8):
        (tmp_path / f"b{i}").write_bytes(b"x" * 800)
    held: list[int] = []
    peak: list[int] = [0]
    lock = threading.Lock()
    real_read = _batch.read_body

    def read_body(path: str, *a: object, **kw: object) -> bytes:
        with lock:
            held.append(1)
            peak[0] = max(peak[0], len(held))
        time.sleep(0.02)
        return real_read(path)

    class Slow(_NoOpenSSL):
        def signature(self, payload: bytes) -> bytes:
            time.sleep(0.02)
            with lock:
                held.pop()
            return b"sig"

    from qredo_openssl._sign import SigningKey

    signer = Slow(None, SigningKey("k", ()), None, None)  # type: ignore[arg-type]
    monkeypatch.setattr(_batch, "read_body", read_body)
    lines = [
        json.dumps({"url": "https://x.example/", "body_file": f"b{i}"}).encode() for i in range(8)
    ]
    items = _batch.sign_batch(signer, lines, jobs=4, base=str(tmp_path))
    assert all(i.result is not None for i in items), [str(i.error) for i in items]
    assert peak[0] == 1  # 800 + 800 > 1000: one body at a time


# -- 1. multi-DIR keygen: each result at once, truthful interrupts, --skip-existing -----------


def test_keygen_many_reports_each_dir(make_fake, tmp_path: Path) -> None:
    fake = make_fake("3.0")
    dirs = [str(tmp_path / f"k{i}") for i in range(3)]
    r = run_cli("keygen", "-j", "1", "--openssl", str(fake.path), *dirs)
    assert r.returncode == 0, r.stderr
    for n, d in enumerate(dirs, start=1):
        assert f"[{n}/3] {d}: Wrote {d}/private.pem" in r.stderr
        label = next(line for line in r.stdout.splitlines() if line.startswith(f"# {d}: "))
        assert label.split(": ")[1].startswith("SHA256:")
    assert r.stdout.count("-----BEGIN PUBLIC KEY-----") == 3
    assert "3 DIRs: 3 new pairs, 0 failed" in r.stderr
    assert r.stderr.count("Next: ") == 1


def _sleep_in(name: str, pids: Path) -> str:
    """A genrsa action: sleep (recording its pid) when run for the DIR called ``name``."""
    return f'case "$PWD" in */{name}/*) echo $$ >> {pids}; exec sleep 60;; esac'


def _wait_for(predicate, what: str, limit: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + limit
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


@pytest.mark.parametrize(
    ("sig", "flags"),
    [
        pytest.param(signal.SIGINT, ("--json",), id="SIGINT-json"),
        pytest.param(signal.SIGTERM, ("-f",), id="SIGTERM-force"),
    ],
)
def test_keygen_interrupt_names_the_dirs_kept(make_fake, tmp_path: Path, sig, flags) -> None:
    pids = tmp_path / "pids"
    fake = make_fake("3.0", genrsa_action=_sleep_in("k2", pids))
    dirs = [tmp_path / f"k{i}" for i in range(3)]
    if "-f" in flags:
        for d in dirs:
            d.mkdir(mode=0o700)
            (d / "private.pem").write_text("old\n")
    argv = ["keygen", *flags, "-j", "3", "--openssl", str(fake.path), *map(str, dirs)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "qredo_openssl", *argv],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    _wait_for(lambda: pids.exists() and pids.read_text().strip(), "genrsa in k2")
    # done: published, checked, and their private temporary directories gone
    _wait_for(
        lambda: all(
            (d / "public.pem").exists() and not list(d.glob(".qredo-openssl-*")) for d in dirs[:2]
        ),
        "k0 and k1 to be done",
    )
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert "nothing was kept" not in err
    assert f"kept the checked pairs already made in {dirs[0]}, {dirs[1]}" in err
    assert sorted(p.name for p in dirs[2].iterdir()) == (["private.pem"] if "-f" in flags else [])
    if "-f" in flags:
        assert "old keys are in the backups" in err
        assert (dirs[2] / "private.pem").read_text() == "old\n"
        assert len(list(dirs[0].glob("private.pem.*.bak"))) == 1
    else:
        doc = json.loads(out)
        assert doc["kept"] == [str(d) for d in dirs[:2]]
        assert doc["error"]["code"] == 130
        assert [k["ok"] for k in doc["keys"]] == [True, True]


def test_keygen_skip_existing(make_fake, tmp_path: Path) -> None:
    fake = make_fake("3.0")
    o = ("--openssl", str(fake.path))
    k0, k1, half, bad = (tmp_path / n for n in ("k0", "k1", "half", "bad"))
    assert run_cli("keygen", *o, str(k0), str(bad)).returncode == 0
    before = (k0 / "private.pem").read_bytes()
    r = run_cli("--json", "keygen", "--skip-existing", *o, str(k0), str(k1))
    assert r.returncode == 0, r.stdout
    doc = json.loads(r.stdout)
    assert [k["skipped"] for k in doc["keys"]] == [True, False]
    assert (k0 / "private.pem").read_bytes() == before
    assert doc["keys"][0]["public_pem"] == (k0 / "public.pem").read_text()
    assert (k1 / "public.pem").exists()
    r = run_cli("keygen", "--skip-existing", *o, str(k0))
    assert r.returncode == 0
    assert "left the existing pair as it is" in r.stderr
    # half a pair, or a pair that fails its checks: still refused
    half.mkdir()
    (half / "private.pem").write_bytes(before)
    (half / "private.pem").chmod(0o600)
    (bad / "private.pem").chmod(0o644)
    for d, why in ((half, "public.exists"), (bad, "private.mode")):
        r = run_cli("keygen", "--skip-existing", *o, str(d))
        assert r.returncode == 4, r.stderr
        assert why in r.stderr
    r = run_cli("keygen", "--skip-existing", "-f", *o, str(k0))
    assert r.returncode == 2
    assert "--skip-existing and --force" in r.stderr


@pytest.mark.parametrize("command", ["keygen", "pubkey", "apikey"])
def test_f_is_force(command: str) -> None:
    r = run_cli(command, "--help")
    assert "-f, --force" in r.stdout


# -- 3. one DIR's disk error is that DIR's error ---------------------------------------------


def _fail_for(monkeypatch: pytest.MonkeyPatch, name: str, where: str, err: int) -> None:
    real = getattr(os, name)

    def failing(*args: object, **kwargs: object) -> object:
        if any(where in str(a) for a in args):
            raise OSError(err, os.strerror(err))
        return real(*args, **kwargs)

    monkeypatch.setattr(_files.os, name, failing)


@pytest.mark.parametrize(
    ("name", "err", "says"),
    [
        pytest.param("link", errno.ENOSPC, "disk full", id="ENOSPC-publish"),
        pytest.param("fsync", errno.EIO, "Input/output error", id="EIO-fsync"),
    ],
)
def test_keygen_disk_error_in_one_dir(
    make_fake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, err: int, says: str
) -> None:
    fake = make_fake("3.0")
    dirs = [tmp_path / f"k{i}" for i in range(3)]
    if name == "fsync":  # fsync gets a descriptor: fail the one of k1's directory
        real_fsync = os.fsync

        def fsync(fd: int) -> None:
            if os.readlink(f"/proc/self/fd/{fd}").endswith("/k1"):
                raise OSError(err, os.strerror(err))
            real_fsync(fd)

        monkeypatch.setattr(_files.os, "fsync", fsync)
    else:
        _fail_for(monkeypatch, name, "/k1/", err)
    r = run_cli("--json", "keygen", "--openssl", str(fake.path), *map(str, dirs))
    assert r.returncode == 1, r.stdout
    doc = json.loads(r.stdout)
    assert [k["ok"] for k in doc["keys"]] == [True, False, True]
    message = doc["keys"][1]["error"]["message"]
    assert message == f"cannot write {dirs[1]}/private.pem: {says}"
    assert os.listdir(dirs[1]) == []  # no key, no temporary directory
    assert (dirs[2] / "public.pem").exists()


def test_genrsa_writing_nothing_on_a_full_disk_says_so(
    make_fake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from qredo_openssl import _keygen

    fake = make_fake("3.0", genrsa_action="exit 0")
    real = os.statvfs
    monkeypatch.setattr(
        _keygen.os,
        "statvfs",
        lambda p: (
            os.statvfs_result((4096, 4096, 1, 1, 0, 0, 1, 1, 0, 255))
            if ".qredo-openssl-" in str(p)
            else real(p)
        ),
    )
    r = run_cli("keygen", "--openssl", str(fake.path), str(tmp_path / "k"))
    assert r.returncode == 3
    assert "wrote no private.pem: disk full in" in r.stderr


# -- 7. directories: 0700 from birth, parents included; dir.mode and dir.leftovers -----------


def test_every_created_directory_is_0700(make_fake, tmp_path: Path) -> None:
    fake = make_fake("3.0")
    old = os.umask(0)
    try:
        r = run_cli("keygen", "--openssl", str(fake.path), "nest/a/keys", cwd=tmp_path)
    finally:
        os.umask(old)
    assert r.returncode == 0, r.stderr
    for d in ("nest", "nest/a", "nest/a/keys"):
        assert _mode(tmp_path / d) == 0o700, d


def test_apikey_parents_are_0700_too(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        q.save_apikey(str(tmp_path / "x" / "y" / "apikey"), K)
    finally:
        os.umask(old)
    assert _mode(tmp_path / "x") == _mode(tmp_path / "x" / "y") == 0o700


def _dir_findings(d: Path) -> dict[str, q.Finding]:
    from qredo_openssl._checks import check_dir

    return {f.name: f for f in check_dir(str(d))}


def test_dir_mode(tmp_path: Path) -> None:
    d = tmp_path / "keys"
    d.mkdir(mode=0o700)
    assert _dir_findings(d)["dir.mode"].status == "ok"
    d.chmod(0o777)
    f = _dir_findings(d)["dir.mode"]
    assert f.status == "warn"
    assert "0777" in f.message
    assert f.fix == ("chmod", "700", str(d))


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give a directory away")
def test_dir_owned_by_another_user(tmp_path: Path) -> None:
    d = tmp_path / "keys"
    d.mkdir(mode=0o700)
    os.chown(d, 4242, -1)
    f = _dir_findings(d)["dir.mode"]
    assert f.status == "warn"
    assert "owned by uid 4242" in f.message


def test_dir_leftovers(tmp_path: Path) -> None:
    d = tmp_path / "keys"
    d.mkdir(mode=0o700)
    assert _dir_findings(d)["dir.leftovers"].status == "ok"
    (d / ".qredo-openssl-abc123").mkdir()
    (d / ".qredo-openssl-abc123" / "private.pem").write_text("secret")
    f = _dir_findings(d)["dir.leftovers"]
    assert f.status == "warn"
    assert "may hold a private key" in f.message
    assert f.fix == ("rm", "-rf", "--", str(d / ".qredo-openssl-abc123"))


# -- new user: every fix hint runs as printed ------------------------------------------------


def _fix_in(text: str) -> list[str]:
    line = next(x for x in text.splitlines() if "run: " in x)
    return shlex.split(line.split("run: ", 1)[1])


def test_fix_hints_run_as_printed(keys, tmp_path: Path) -> None:
    d = tmp_path / "some keys"
    d.mkdir(mode=0o700)
    shutil.copy(keys.pkcs8, d / "private.pem")
    shutil.copy(keys.public, d / "public.pem")
    (d / "private.pem").chmod(0o600)
    r = run_cli("check", str(d))
    assert r.returncode == 1
    fix = _fix_in(r.stdout)
    assert fix == ["qredo-openssl", "convert", str(d)]
    assert f"run: qredo-openssl convert '{d}'" in r.stdout  # shell-quoted as printed
    assert run_cli(*fix[1:]).returncode == 0
    (d / "private.pem").chmod(0o644)
    fix = _fix_in(run_cli("check", str(d)).stdout)
    assert fix[:2] == ["chmod", "600"]
    subprocess.run(fix, check=True)
    assert run_cli("check", str(d)).returncode == 0


def test_fix_names_overridden_paths(keys, tmp_path: Path) -> None:
    shutil.copy(keys.pkcs1, tmp_path / "my.key")
    (tmp_path / "my.key").chmod(0o600)
    (tmp_path / "stale.pub").write_bytes((DATA / "TEST-KEY-DO-NOT-USE-public.pem").read_bytes())
    args = ("--private", str(tmp_path / "my.key"), "--public", str(tmp_path / "stale.pub"))
    r = run_cli("check", *args, str(tmp_path))
    fix = _fix_in(r.stdout)
    assert fix == ["qredo-openssl", "pubkey", "--force", *args]
    assert run_cli(*fix[1:]).returncode == 0
    assert run_cli("check", *args, str(tmp_path)).returncode == 0


def test_missing_key_points_at_the_path(tmp_path: Path) -> None:
    for argv in (
        ("sign", "--url", "https://x.example/", str(tmp_path)),
        ("check", str(tmp_path)),
        ("doctor", str(tmp_path)),
    ):
        r = run_cli(*argv)
        shown = r.stdout + r.stderr
        assert str(tmp_path / "private.pem") in shown, argv
        assert "keygen " + str(tmp_path) not in shown, argv
        assert "keygen '" not in shown, argv


# -- 5. a FIFO at a key's name is refused at once --------------------------------------------


def _bounded(argv: tuple[str, ...], fifo: Path) -> subprocess.CompletedProcess[str]:
    """run_cli in a thread; if it blocks on the FIFO, unblock it and fail (never hang)."""
    box: list[subprocess.CompletedProcess[str]] = []
    t = threading.Thread(target=lambda: box.append(run_cli(*argv)))
    t.start()
    t.join(timeout=20)
    if t.is_alive():
        fd = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)  # a writer: the blocked open returns
        os.close(fd)
        t.join()
        pytest.fail(f"{argv[0]} waited on the FIFO {fifo}")
    return box[0]


@pytest.mark.parametrize("name", ["private.pem", "public.pem", "apikey"])
@pytest.mark.parametrize("command", ["sign", "verify", "check"])
def test_fifo_is_refused_at_once(keys, tmp_path: Path, name: str, command: str) -> None:
    d = tmp_path / "keys"
    d.mkdir(mode=0o700)
    shutil.copy(keys.pkcs1, d / "private.pem")
    shutil.copy(keys.public, d / "public.pem")
    (d / "private.pem").chmod(0o600)
    (d / "apikey").write_text(K + "\n")
    (d / "apikey").chmod(0o600)
    (d / name).unlink()
    os.mkfifo(d / name, 0o600)
    argv: tuple[str, ...] = {
        "sign": ("sign", "--url", "https://x.example/", str(d)),
        "verify": ("verify", "--url", "https://x.example/", "--timestamp", "1",
                   "--signature", "AAAA", str(d)),
        "check": ("check", str(d)),
    }[command]  # fmt: skip
    r = _bounded(argv, d / name)
    assert "Traceback" not in r.stderr
    if command == "verify" and name != "public.pem":
        return  # verify reads only public.pem
    if command == "sign" and name == "public.pem":
        assert r.returncode == 0, r.stderr  # sign does not need public.pem
        return
    assert r.returncode == 1, r.stderr
    assert "not a regular file" in r.stdout + r.stderr


# -- 6. names that are not UTF-8 never cause a traceback --------------------------------------

LOCALES = {
    # C.UTF-8: Python's stdout then escapes what is not UTF-8 (surrogateescape)
    "C.UTF-8": {"LC_ALL": "C.UTF-8"},
    # as under en_US.UTF-8 (not installed here): a strict UTF-8 stdout
    "strict-UTF-8": {"LC_ALL": "C.UTF-8", "PYTHONIOENCODING": "utf-8"},
}


def _spawn_bytes(*args: str, cwd: Path, locale: str) -> subprocess.CompletedProcess[bytes]:
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "NO_COLOR")}
    env.pop("PYTHONIOENCODING", None)
    env.update(LOCALES[locale])
    return subprocess.run(
        [sys.executable, "-m", "qredo_openssl", *args],
        capture_output=True, env=env, cwd=cwd, timeout=120, check=False,
    )  # fmt: skip


@pytest.mark.parametrize("locale", LOCALES)
def test_non_utf8_names(keys, make_fake, tmp_path: Path, locale: str) -> None:
    d = os.fsdecode(b"d\xff")  # a Latin-1 name: not UTF-8
    fake = ("--openssl", str(make_fake("3.0").path))  # keys copied, not made: fast
    r = _spawn_bytes("doctor", *fake, d, cwd=tmp_path, locale=locale)
    assert r.returncode == 0, r.stderr
    assert b"Traceback" not in r.stderr
    assert b"no key files in d\xff " in r.stdout  # the name's own bytes, as ls shows them
    r = _spawn_bytes("keygen", *fake, d, cwd=tmp_path, locale=locale)
    assert r.returncode == 0, r.stderr
    assert b"-----BEGIN PUBLIC KEY-----" in r.stdout
    r = _spawn_bytes("check", *fake, d, cwd=tmp_path, locale=locale)
    assert r.returncode == 0, r.stdout + r.stderr
    (tmp_path / os.fsdecode(b"b\xff.json")).write_bytes(b"{}")
    r = _spawn_bytes(
        "sign", "--format", "curl", "--url", "https://x.example/", "--body",
        os.fsdecode(b"b\xff.json"), "--private", str(keys.pkcs1), str(tmp_path),
        cwd=tmp_path, locale=locale,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert b"b\xff.json" in r.stdout
    r = _spawn_bytes("sign", "--url", "https://x.example/", d, cwd=tmp_path, locale=locale)
    assert b"Traceback" not in r.stderr
    assert r.stderr.startswith(b"error: ")


# -- 10. signals: 130 from the first line, never swallowed, every child reaped ---------------


def _children(state: str | None = None) -> list[int]:
    """This process's children (in ``state``, e.g. ``Z``), from /proc."""
    found = []
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rsplit(") ", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == os.getpid() and (state is None or fields[0] == state):
            found.append(int(stat_file.parent.name))
    return found


def test_interrupted_keygen_leaves_no_zombies(make_fake, tmp_path: Path) -> None:
    from qredo_openssl._errors import Interrupted

    pids = tmp_path / "pids"
    fake = make_fake("3.0", genrsa_action=f"echo $$ >> {pids}; exec sleep 60")
    dirs = [str(tmp_path / f"k{i}") for i in range(3)]

    def interrupt() -> None:
        _wait_for(lambda: pids.exists() and len(pids.read_text().split()) >= 2, "genrsa")
        os.kill(os.getpid(), signal.SIGTERM)

    def raise_interrupted(signum: int, frame: object) -> None:
        raise Interrupted

    old = signal.signal(signal.SIGTERM, raise_interrupted)
    t = threading.Thread(target=interrupt)
    t.start()
    try:
        r = run_cli("keygen", "-j", "2", "--openssl", str(fake.path), *dirs)
    finally:
        t.join()
        signal.signal(signal.SIGTERM, old)
    assert r.returncode == 130, r.stderr
    assert "interrupted; no key was written" in r.stderr
    assert _children("Z") == []
    for pid in map(int, pids.read_text().split()):
        assert pid not in _children()


def _slow_dgst(tmp_path: Path, pids: Path) -> Path:
    """An openssl whose ``dgst`` sleeps (recording its pid); the rest is the real one."""
    from conftest import REAL_OPENSSL

    fake = tmp_path / "slow" / "openssl"
    fake.parent.mkdir()
    fake.write_text(
        "#!/bin/sh\n"
        f'case "$1" in dgst) echo $$ >> {shlex.quote(str(pids))}; exec sleep 60;; esac\n'
        f'exec {shlex.quote(str(REAL_OPENSSL))} "$@"\n'
    )
    fake.chmod(0o755)
    return fake


@pytest.mark.parametrize("how", ["SIGTERM", "SIGINT"])
@pytest.mark.parametrize("when", ["waiting", "starting"])
def test_interrupted_sign_reaps_its_child(
    keys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str, when: str
) -> None:
    """Ctrl-C while OpenSSL runs, or while sh is still starting it (after the fork)."""
    import sh

    from qredo_openssl._errors import Interrupted

    pids = tmp_path / "pids"
    fake = _slow_dgst(tmp_path, pids)
    sig = getattr(signal, how)
    oproc = sh.RunningCommand.__init__.__globals__["OProc"]  # sh's process class
    real_init = oproc.__init__

    forked: list[int] = []

    def started(self: object, *args: object, **kwargs: object) -> None:
        real_init(self, *args, **kwargs)
        if "dgst" in str(args):
            forked.append(self.pid)  # type: ignore[attr-defined]
            os.kill(os.getpid(), sig)  # lands before sh hands the process back

    def interrupt() -> None:
        _wait_for(lambda: pids.exists() and pids.read_text().strip(), "dgst")
        os.kill(os.getpid(), sig)

    def raise_interrupted(signum: int, frame: object) -> None:
        raise Interrupted if signum == signal.SIGTERM else KeyboardInterrupt

    old = signal.signal(sig, raise_interrupted)
    t = threading.Thread(target=interrupt)
    if when == "starting":
        monkeypatch.setattr(oproc, "__init__", started)
    else:
        t.start()
    try:
        r = run_cli(
            "sign", "--openssl", str(fake), "--url", "https://x.example/",
            "--private", str(keys.pkcs1), str(tmp_path),
        )  # fmt: skip
    finally:
        if t.is_alive():
            t.join()
        signal.signal(sig, old)
    assert r.returncode == 130, r.stderr
    assert r.stderr.strip().endswith("error: interrupted")
    assert _children("Z") == []
    started_pids = forked + (list(map(int, pids.read_text().split())) if pids.exists() else [])
    assert started_pids
    assert not set(started_pids) & set(_children())


def _handler_installed(pid: int, sig: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    caught = int(next(x for x in status.splitlines() if x.startswith("SigCgt:")).split()[1], 16)
    return bool(caught & (1 << (sig - 1)))


def _blocking_cli(tmp_path: Path, **kw: object) -> subprocess.Popen[bytes]:
    """``sign --batch -`` waiting on a standard input that stays open: a run that lasts."""
    return subprocess.Popen(
        [sys.executable, "-m", "qredo_openssl", "sign", "--batch", "-", str(tmp_path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL), **kw,
    )  # type: ignore[call-overload]  # fmt: skip


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_right_after_the_first_line_exits_130(tmp_path: Path, sig: int) -> None:
    """Sent as soon as the console script's handler is in (its first line), again and again."""
    for _ in range(4):
        proc = _blocking_cli(tmp_path)
        pid = proc.pid
        _wait_for(lambda pid=pid: _handler_installed(pid, signal.SIGTERM), "the handler", 60)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, err
        assert b"Traceback" not in err
        assert err.strip().endswith(b"error: interrupted")


def test_ctrl_c_inside_generated_code_exits_130_under_python_m(tmp_path: Path) -> None:
    """Ctrl-C that lands while a dataclass or namedtuple is being made (code run by exec())
    exits 130, not by SIGINT: CPython would otherwise remember it and kill the process."""
    (tmp_path / "sitecustomize.py").write_text(
        "import qredo_openssl._cli as cli\n"
        "def main(argv=None):\n"
        "    exec('raise KeyboardInterrupt')\n"
        "cli.main = main\n"
    )
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
    proc = spawn_cli("check", str(tmp_path), env=env)
    assert proc.returncode == 130, proc.stderr
    assert proc.stderr.strip() == "error: interrupted"


def _console_exit_code(monkeypatch: pytest.MonkeyPatch) -> object:
    """Run the console script in-process (no core limit, fresh signal records), restore the
    signal handlers it installs, and return its exit code."""
    from qredo_openssl import _console

    monkeypatch.setattr(_console, "_no_core_dumps", lambda: None)
    monkeypatch.setattr(_console, "_received", [])
    monkeypatch.setattr(_console, "_ending", [])
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with pytest.raises(SystemExit) as exit_:
            _console.console_main()
    finally:
        for s, h in saved.items():
            signal.signal(s, h)
    return exit_.value.code


def test_a_swallowed_signal_still_exits_130(monkeypatch: pytest.MonkeyPatch) -> None:
    """A signal whose exception something caught (a fork hook) is not lost."""
    from qredo_openssl import _cli
    from qredo_openssl._errors import Interrupted

    def swallowing_main() -> int:
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        except Interrupted:
            pass
        return 0

    monkeypatch.setattr(_cli, "main", swallowing_main)
    assert _console_exit_code(monkeypatch) == 130


def test_a_signal_in_a_weakref_callback_still_stops_the_run(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Python only prints an exception raised in a callback: no traceback, and no going on."""
    import weakref

    from qredo_openssl import _cli

    reached: list[str] = []

    def main_with_a_callback() -> int:
        class Thing:
            pass

        thing = Thing()

        def callback(ref: object) -> None:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)  # the handler runs here, inside the callback

        ref = weakref.ref(thing, callback)
        del thing  # as importlib's module-lock callbacks do during an import
        time.sleep(1)  # the signal, sent again, lands here at the latest
        reached.append("after")
        return 0 if ref is not None else 1

    monkeypatch.setattr(_cli, "main", main_with_a_callback)
    monkeypatch.setattr(sys, "unraisablehook", sys.unraisablehook)
    assert _console_exit_code(monkeypatch) == 130
    assert reached == []
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip().endswith("error: interrupted")


# -- 9. no core dumps ------------------------------------------------------------------------


def _core_limit(pid: int) -> str:
    limits = Path(f"/proc/{pid}/limits").read_text().splitlines()
    return " ".join(next(x for x in limits if x.startswith("Max core file size")).split()[4:6])


def test_console_script_sets_core_limit_zero(tmp_path: Path) -> None:
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_CORE)
    if hard == 0 and os.geteuid() != 0:
        pytest.skip("cores are off for this user already: nothing to prove")

    def allow_cores() -> None:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        resource.setrlimit(resource.RLIMIT_CORE, (1 << 20, max(hard, 1 << 20)))

    proc = subprocess.Popen(
        [sys.executable, "-m", "qredo_openssl", "sign", "--batch", "-", str(tmp_path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        preexec_fn=allow_cores,
    )  # fmt: skip
    try:
        _wait_for(lambda: _handler_installed(proc.pid, signal.SIGTERM), "start-up", 60)
        _wait_for(lambda: _core_limit(proc.pid) == "0 0", "core limit 0", 10)
    finally:
        proc.kill()
        proc.communicate()


def test_in_process_main_leaves_the_core_limit_alone() -> None:
    import resource

    before = resource.getrlimit(resource.RLIMIT_CORE)
    handlers = (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))
    assert run_cli("--version").returncode == 0
    assert resource.getrlimit(resource.RLIMIT_CORE) == before
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers


# -- new user: usage errors, --help, --json --version ----------------------------------------


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (("keygen", "--bit", "2048"), "qredo-openssl keygen: unrecognized argument: --bit; "
         "did you mean --bits?"),
        (("kegen",), "invalid choice: 'kegen'"),
        (("kegen",), "did you mean keygen?"),
        (("sign", "--urll", "x"), "qredo-openssl sign: unrecognized argument: --urll; "
         "did you mean --url?"),
        (("keygen", "--traditional", "alway"), "did you mean always?"),
        (("pubkey", "a", "b"), "qredo-openssl pubkey: unrecognized argument: b"),
        (("keygen", "-j", "0"), "qredo-openssl keygen: argument -j/--jobs: '0' is not a whole "
         "number of at least 1"),
        (("check", "--timeout", "0"), "qredo-openssl check: --timeout must be"),
    ],
)  # fmt: skip
def test_usage_errors_suggest(argv: tuple[str, ...], says: str) -> None:
    r = run_cli(*argv)
    assert r.returncode == 2
    assert says in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


COMMANDS = ("keygen", "pubkey", "convert", "check", "doctor", "apikey", "sign", "verify")


@pytest.mark.parametrize("command", COMMANDS)
def test_help_ends_with_examples_and_exit_codes(command: str) -> None:
    r = run_cli(command, "--help")
    assert r.returncode == 0
    assert "examples:\n  qredo-openssl " in r.stdout
    assert r.stdout.strip().splitlines()[-1].startswith("exit codes: 0 ")
    assert "130 interrupted" in r.stdout


def test_sign_usage_shows_url_as_required() -> None:
    usage = run_cli("sign", "--help").stdout.split("\n\n")[0]
    assert "sign --url URL " in usage
    assert "[--url" not in usage
    assert "sign --batch FILE" in usage


@pytest.mark.parametrize("order", [("--json", "--version"), ("--version", "--json")])
def test_json_version(order: tuple[str, str]) -> None:
    r = run_cli(*order)
    assert r.returncode == 0
    assert json.loads(r.stdout) == {"version": q.__version__}
    r = run_cli("--json", "--help")
    assert r.stdout.startswith("usage: ")  # help is for people


def test_quick_start_keys_are_ignored_by_git() -> None:
    ignore = (Path(__file__).parent.parent / ".gitignore").read_text().splitlines()
    assert "keys/" in ignore
