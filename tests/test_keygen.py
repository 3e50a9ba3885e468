"""keygen: the documented commands on every OpenSSL, checked, published safely."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import HAS_TRADITIONAL, VERSIONS, run_cli
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from helpers import assert_no_traceback, leftovers, mode

import qredo_openssl as q
from qredo_openssl._pem import fingerprint

GENRSA = ["genrsa", "-out", "private.pem", "2048"]
GENRSA_TRAD = ["genrsa", "-traditional", "-out", "private.pem", "2048"]
PUBOUT = ["rsa", "-in", "private.pem", "-outform", "PEM", "-pubout", "-out", "public.pem"]
real = pytest.mark.real_openssl


@pytest.mark.parametrize("flavour", list(VERSIONS))
def test_keygen_matrix(make_fake, tmp_path, flavour):
    fake = make_fake(flavour)
    d = tmp_path / "keys"
    r = run_cli("keygen", "--openssl", str(fake.path), str(d))
    assert r.returncode == 0, r.stderr
    assert_no_traceback(r)
    calls = fake.calls()
    genrsa = GENRSA_TRAD if HAS_TRADITIONAL[flavour] else GENRSA
    assert genrsa in calls
    assert (GENRSA if HAS_TRADITIONAL[flavour] else GENRSA_TRAD) not in calls
    assert PUBOUT in calls
    # one more call checks what landed; genrsa has just proved the primes, so no -check
    check = [c for c in calls if c[:2] == ["rsa", "-in"] and c != PUBOUT]
    assert check == [["rsa", "-in", str(d / "private.pem"), "-text", "-pubout"]]
    probe = flavour == "garbage"  # genrsa -help, only when the version line is unreadable
    assert len(calls) == 4 + probe  # version, genrsa, pubout, the check
    assert (d / "private.pem").read_bytes().startswith(b"-----BEGIN RSA PRIVATE KEY-----\n")
    assert (d / "public.pem").read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----\n")
    assert mode(d / "private.pem") == 0o600
    assert mode(d / "public.pem") == 0o644
    assert mode(d) == 0o700
    assert leftovers(d) == []
    # stdout is the public key, ready to paste; the rest is on stderr
    assert r.stdout == (d / "public.pem").read_text()
    assert "Fingerprint: SHA256:" in r.stderr
    assert "Upload Public Key" in r.stderr


@pytest.mark.parametrize(
    ("flavour", "has_traditional"),
    [
        pytest.param("3.0", True, id="3.0"),
        pytest.param("1.1.1", False, id="1.1.1"),
        pytest.param("libressl", False, id="libressl"),
        pytest.param("garbage", True, id="garbage-probe-lists"),
        pytest.param("garbage", False, id="garbage-probe-silent"),
    ],
)
def test_dry_run(make_fake, tmp_path, flavour, has_traditional):
    fake = make_fake(flavour, has_traditional=has_traditional)
    d = tmp_path / "keys"
    r = run_cli("keygen", "--dry-run", "--openssl", str(fake.path), str(d))
    assert r.returncode == 0, r.stderr
    genrsa = GENRSA_TRAD if has_traditional else GENRSA
    assert r.stdout.splitlines() == [
        " ".join([str(fake.path), *genrsa]),
        " ".join([str(fake.path), *PUBOUT]),
    ]
    assert f"-traditional: {'yes' if has_traditional else 'no'}" in r.stderr
    assert not d.exists()
    assert all(c[0] in ("version", "genrsa") for c in fake.calls())
    assert not any("-out" in c for c in fake.calls())


@real
def test_dry_run_real_openssl_3(tmp_path):
    v = q.detect_openssl().version
    r = run_cli("keygen", "--dry-run", str(tmp_path / "k"))
    assert r.returncode == 0
    genrsa = r.stdout.splitlines()[0].split()
    assert ("-traditional" in genrsa) is (v.flavour == "OpenSSL" and (v.major or 0) >= 3)


@real
def test_keygen_real_openssl_oracle(fresh_keygen):
    """The independent oracle: cryptography agrees the files are what Qredo documents."""
    d, r = fresh_keygen.dir, fresh_keygen.result
    assert r.returncode == 0, r.stderr
    private_bytes = (d / "private.pem").read_bytes()
    key = serialization.load_pem_private_key(private_bytes, password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    assert key.key_size == 2048
    assert key.public_key().public_numbers().e == 65537
    pkcs1 = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    assert pkcs1 == private_bytes
    spki = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert spki == (d / "public.pem").read_bytes()
    fp = fingerprint(spki)
    assert f"Fingerprint: {fp}" in r.stderr
    check = run_cli("check", str(d))
    assert check.returncode == 0, check.stdout


@pytest.mark.parametrize(
    ("setup", "target"),
    [
        pytest.param(
            lambda d: (d / "private.pem").write_bytes(b"old private"), "private.pem", id="private"
        ),
        pytest.param(
            lambda d: (d / "public.pem").write_bytes(b"old public"), "public.pem", id="public"
        ),
        pytest.param(
            lambda d: (d / "private.pem").symlink_to(d / "gone"),
            "private.pem",
            id="dangling-private",
        ),
        pytest.param(
            lambda d: (d / "public.pem").symlink_to(d / "gone"), "public.pem", id="dangling-public"
        ),
        pytest.param(lambda d: (d / "private.pem").mkdir(), "private.pem", id="directory"),
    ],
)
def test_never_clobber(make_fake, tmp_path, setup, target):
    fake = make_fake("3.0")
    d = tmp_path / "keys"
    d.mkdir()
    setup(d)
    before = {
        p.name: (os.readlink(p) if p.is_symlink() else p.is_dir() or p.read_bytes())
        for p in d.iterdir()
    }
    r = run_cli("keygen", "--openssl", str(fake.path), str(d))
    assert r.returncode == 4
    assert_no_traceback(r)
    assert target in r.stderr
    assert "--force" in r.stderr
    after = {
        p.name: (os.readlink(p) if p.is_symlink() else p.is_dir() or p.read_bytes())
        for p in d.iterdir()
    }
    assert after == before
    assert not any(c[0] == "genrsa" for c in fake.calls())


def test_force_keeps_backups(make_fake, tmp_path):
    fake = make_fake("3.0")
    d = tmp_path / "keys"
    d.mkdir()
    (d / "private.pem").write_bytes(b"old private")
    (d / "public.pem").symlink_to(d / "gone")
    r = run_cli("keygen", "--force", "--json", "--openssl", str(fake.path), str(d))
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    backups = doc["keys"][0]["backups"]
    assert len(backups) == 2
    pattern = re.compile(r"(private|public)\.pem\.\d{8}T\d{6}Z\.bak$")
    assert all(pattern.search(b) for b in backups)
    priv_bak = next(Path(b) for b in backups if "private" in b)
    pub_bak = next(Path(b) for b in backups if "public" in b)
    assert priv_bak.read_bytes() == b"old private"
    assert os.readlink(pub_bak) == str(d / "gone")
    assert (d / "private.pem").read_bytes().startswith(b"-----BEGIN RSA PRIVATE KEY-----")
    assert leftovers(d) == []


@pytest.mark.parametrize(
    ("kwargs", "args", "says"),
    [
        pytest.param(
            {"genrsa_action": "echo 'genrsa: boom' >&2; exit 1"}, [], "genrsa: boom", id="fails"
        ),
        pytest.param({"genrsa_action": "exit 0"}, [], "wrote no private.pem", id="writes-nothing"),
        pytest.param(
            {"genrsa_action": "exec sleep 30"},
            ["--timeout", "1"],
            "timed out after 1 s",
            id="hangs",
        ),
        pytest.param(
            {"version_action": "exit 1"}, [], "openssl version failed", id="version-fails"
        ),
        pytest.param(
            {"has_traditional": False},
            ["--traditional", "always"],
            "Unrecognized flag",
            id="flag-rejected",
        ),
    ],
)
def test_openssl_failures(make_fake, tmp_path, kwargs, args, says):
    fake = make_fake("3.0", **kwargs)
    d = tmp_path / "keys"
    r = run_cli("keygen", *args, "--openssl", str(fake.path), str(d))
    assert r.returncode == 3, r.stderr
    assert_no_traceback(r)
    assert says in r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1
    assert not (d / "private.pem").exists()
    assert not (d / "public.pem").exists()
    if d.exists():
        assert leftovers(d) == []


def test_pkcs8_written_is_refused(make_fake, tmp_path):
    """--traditional never on OpenSSL 3 yields PKCS#8: the check refuses it, nothing lands."""
    fake = make_fake("3.0")
    d = tmp_path / "keys"
    r = run_cli("keygen", "--traditional", "never", "--openssl", str(fake.path), str(d))
    assert r.returncode == 3
    assert "PKCS#8" in r.stderr
    assert "--traditional always" in r.stderr
    assert sorted(p.name for p in d.iterdir()) == []


def test_missing_openssl(tmp_path):
    r = run_cli("keygen", "--openssl", str(tmp_path / "nope"), str(tmp_path / "k"))
    assert r.returncode == 3
    assert_no_traceback(r)
    assert r.stderr.strip().splitlines()[-1].startswith("error: OpenSSL not found")
    r = run_cli("--json", "keygen", str(tmp_path / "k"), env={"QREDO_OPENSSL": "/no/openssl"})
    assert r.returncode == 3
    assert json.loads(r.stdout) == {
        "error": {"code": 3, "message": r.stderr.split("error: ", 1)[1].strip()}
    }


def test_bits(make_fake, tmp_path):
    fake = make_fake("1.1.1")
    r = run_cli("keygen", "--bits", "1024", "--openssl", str(fake.path), str(tmp_path / "a"))
    assert r.returncode == 2
    assert "invalid choice" in r.stderr
    r = run_cli("keygen", "--dry-run", "--bits", "4096", "--openssl", str(fake.path), str(tmp_path))
    assert r.returncode == 0
    assert "Qredo documents 2048-bit keys" in r.stderr
    assert r.stdout.splitlines()[0].endswith("genrsa -out private.pem 4096")


def test_many_dirs_json(make_fake, tmp_path):
    fake = make_fake("3.5")
    dirs = [tmp_path / f"k{i}" for i in range(5)]
    (tmp_path / "k3").mkdir()
    (tmp_path / "k3" / "public.pem").write_text("taken")
    r = run_cli("--json", "keygen", "-j", "2", "--openssl", str(fake.path), *map(str, dirs))
    assert r.returncode == 4
    doc = json.loads(r.stdout)
    assert doc["openssl"]["version"] == "3.5.0"
    assert doc["openssl"]["flavour"] == "OpenSSL"
    assert doc["openssl"]["traditional"]["use"] is True
    assert [k["dir"] for k in doc["keys"]] == [str(d) for d in dirs]
    assert [k["ok"] for k in doc["keys"]] == [True, True, True, False, True]
    assert doc["keys"][3]["error"]["code"] == 4
    assert doc["error"]["code"] == 4
    ok = doc["keys"][0]
    assert ok["fingerprint"] == fingerprint((dirs[0] / "public.pem").read_bytes())
    assert ok["bits"] == 2048
    assert ok["commands"][0][1:] == GENRSA_TRAD
    assert ok["commands"][1][1:] == PUBOUT
    assert ok["private"] == str(dirs[0] / "private.pem")
    assert (tmp_path / "k3" / "public.pem").read_text() == "taken"


def test_four_keygens_race_one_dir(tmp_path, make_fake):
    # A fake genrsa (a copy of a session key) finishes at once: the four processes meet
    # where the race is, at publishing, and the test does not wait for four real keys.
    fake = make_fake("3.0")
    d = tmp_path / "keys"
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "qredo_openssl", "keygen", "--openssl", str(fake.path), str(d)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for _ in range(4)
    ]  # fmt: skip
    errs = [p.communicate(timeout=120)[1] for p in procs]
    assert not any("Traceback" in e for e in errs)
    assert sorted(p.returncode for p in procs) == [0, 4, 4, 4], errs
    key = serialization.load_pem_private_key((d / "private.pem").read_bytes(), None)
    spki = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert spki == (d / "public.pem").read_bytes()
    assert sorted(p.name for p in d.iterdir()) == ["private.pem", "public.pem"]


def _wait_for(predicate, what: str, limit: float = 30.0) -> None:
    deadline = time.monotonic() + limit
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("ndirs", [1, 3], ids=["one-dir", "three-dirs"])
def test_interrupt_leaves_nothing(make_fake, tmp_path, sig, ndirs):
    pids = tmp_path / "genrsa.pids"
    fake = make_fake("3.0", genrsa_action=f"echo $$ >> {pids}; exec sleep 60")
    dirs = [tmp_path / f"keys{i}" for i in range(ndirs)]
    argv = ["keygen", "--openssl", str(fake.path), *map(str, dirs)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "qredo_openssl", *argv],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        # a shell's background job inherits SIGINT ignored; Python then keeps ignoring it
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    want = min(ndirs, os.cpu_count() or 1)
    _wait_for(lambda: pids.exists() and len(pids.read_text().split()) >= want, "genrsa to start")
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert "interrupted" in err
    for pid in map(int, pids.read_text().split()):
        _wait_for(lambda pid=pid: not _alive(pid), f"genrsa {pid} to go")
    for d in dirs:
        assert not d.exists() or sorted(p.name for p in d.iterdir()) == []


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (killed but not yet reaped by an exited parent) counts as gone
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


def test_publish_failure_cleans_up(make_fake, tmp_path, monkeypatch):
    """If publishing the public key fails, the private key that landed is taken back."""
    from qredo_openssl import _files

    fake = make_fake("3.0")
    openssl = q.detect_openssl(str(fake.path))
    plan = q.plan_keygen(openssl)
    real_link = os.link

    def flaky_link(src, dst, **kw):
        if str(dst).endswith("public.pem"):
            raise OSError(28, "No space left on device")
        return real_link(src, dst, **kw)

    monkeypatch.setattr(_files.os, "link", flaky_link)
    d = tmp_path / "keys"
    with pytest.raises(q.QredoOpenSSLError, match=r"public\.pem: disk full"):
        q.generate_keypair(q.KeyPaths.in_dir(str(d)), plan)
    assert sorted(p.name for p in d.iterdir()) == []


def test_api_generate_keypair(make_fake, tmp_path):
    fake = make_fake("1.1.1")
    openssl = q.detect_openssl(str(fake.path))
    plan = q.plan_keygen(openssl)
    assert not plan.traditional.use
    paths = q.KeyPaths.in_dir(str(tmp_path / "k"))
    result = q.generate_keypair(paths, plan)
    assert result.fingerprint == fingerprint((tmp_path / "k" / "public.pem").read_bytes())
    assert {f.name: f.status for f in result.findings}["public.matches"] == "ok"
    with pytest.raises(q.RefusedOverwriteError):
        q.generate_keypair(paths, plan)


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(
            ["keygen", "--force", "--private", "{d}/same.pem", "--public", "{d}/same.pem"],
            id="keygen",
        ),
        pytest.param(
            ["pubkey", "--force", "--public", "{d}/private.pem"], id="pubkey-onto-private"
        ),
    ],
)
def test_one_file_in_two_roles_is_refused(make_fake, tmp_path, argv):
    fake = make_fake("3.0")
    d = tmp_path / "keys"
    d.mkdir()
    (d / "private.pem").write_bytes(b"KEY")
    (d / "same.pem").write_bytes(b"SAME")
    r = run_cli(*[a.format(d=d) for a in argv], "--openssl", str(fake.path), str(d))
    assert r.returncode == 2, r.stderr
    assert "three different files" in r.stderr
    assert (d / "private.pem").read_bytes() == b"KEY"
    assert (d / "same.pem").read_bytes() == b"SAME"
    assert sorted(p.name for p in d.iterdir()) == ["private.pem", "same.pem"]


def test_backups_never_replace_older_backups(tmp_path, monkeypatch):
    """Two --force runs in the same second pick the same backup name: the second gets another."""
    from qredo_openssl import _files

    target = tmp_path / "private.pem"
    taken = tmp_path / "private.pem.20260101T000000Z.bak"
    taken.write_bytes(b"OLDER BACKUP")
    target.write_bytes(b"OLD KEY")
    names = iter([str(taken), str(taken) + ".1.bak"])
    monkeypatch.setattr(_files, "backup_name", lambda path, now=None: next(names))
    new = tmp_path / "new"
    new.write_bytes(b"NEW KEY")
    with _files.publishing(force=True) as pub:
        pub.publish(str(new), str(target))
    assert taken.read_bytes() == b"OLDER BACKUP"
    assert pub.backups == [str(taken) + ".1.bak"]
    assert Path(pub.backups[0]).read_bytes() == b"OLD KEY"
    assert target.read_bytes() == b"NEW KEY"


@real
def test_skip_existing_size_is_data_not_message_text(keys, tmp_path, monkeypatch):
    """--skip-existing reports the existing key's size from OpenSSL's facts, whatever words
    the private.bits finding uses."""
    from helpers import key_pair

    from qredo_openssl import _checks

    d = key_pair(tmp_path / "k", keys)
    real_finding = _checks.Finding

    def reworded(name, status, message, fix=None):
        if name == "private.bits":
            message = f"a modulus of {message}"
        return real_finding(name, status, message, fix)

    monkeypatch.setattr(_checks, "Finding", reworded)
    plan = q.plan_keygen(q.detect_openssl())
    r = q.generate_keypair(q.KeyPaths.in_dir(str(d)), plan, skip_existing=True)
    assert r.skipped
    assert r.bits == 2048
    assert next(f for f in r.findings if f.name == "private.bits").message.startswith("a mod")
