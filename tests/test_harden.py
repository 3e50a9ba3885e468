"""Hardening (issue 10): what trying to break the tool found, each pinned by a test."""

from __future__ import annotations

import errno
import json
import os
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import run_cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
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
