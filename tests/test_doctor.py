"""doctor: the OpenSSL in use, the -traditional decision, keygen's exact commands, and check.

Fake OpenSSLs play every version of the matrix; they log argv, so the test can tell a
decision made from the version line from one made by probing ``genrsa -help``.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import HAS_TRADITIONAL, VERSIONS, Fake, FreshKeygen, Keys, run_cli
from helpers import assert_no_traceback

FLAVOURS = {
    "1.0.2": ("OpenSSL", "1.0.2k"),
    "1.1.1": ("OpenSSL", "1.1.1w"),
    "3.0": ("OpenSSL", "3.0.7"),
    "3.5": ("OpenSSL", "3.5.0"),
    "quictls": ("OpenSSL", "3.1.5"),
    "libressl": ("LibreSSL", "3.3.6"),
    "garbage": ("unknown", None),
}


def keygen_commands(openssl: str, traditional: bool) -> list[list[str]]:
    flag = ["-traditional"] if traditional else []
    return [
        [openssl, "genrsa", *flag, "-out", "private.pem", "2048"],
        [openssl, "rsa", "-in", "private.pem", "-outform", "PEM", "-pubout", "-out", "public.pem"],
    ]


def test_matrix_is_complete() -> None:
    assert set(FLAVOURS) == set(VERSIONS) == set(HAS_TRADITIONAL)


@pytest.mark.parametrize("flavour", list(VERSIONS))
def test_doctor_json(flavour: str, make_fake: Callable[..., Fake], tmp_path: Path) -> None:
    fake = make_fake(flavour)
    empty = tmp_path / "empty"
    empty.mkdir()
    r = run_cli("--openssl", str(fake.path), "--json", "doctor", str(empty))
    assert_no_traceback(r)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    o = doc["openssl"]
    assert (o["path"], o["source"], o["raw"]) == (str(fake.path), "--openssl", VERSIONS[flavour])
    assert (o["flavour"], o["version"]) == FLAVOURS[flavour]
    assert o["traditional"]["use"] is HAS_TRADITIONAL[flavour]
    assert doc["usable"] is True
    assert doc["commands"] == keygen_commands(str(fake.path), HAS_TRADITIONAL[flavour])
    assert doc["checks"] is None  # no key files: nothing to check
    probed = ["genrsa", "-help"] in fake.calls()
    assert probed is (flavour == "garbage")  # the version decides; only "unknown" probes
    assert not [c for c in fake.calls() if c[0] == "genrsa" and "-help" not in c]  # no keys made
    assert list(empty.iterdir()) == []


@pytest.mark.parametrize("flavour", list(VERSIONS))
def test_doctor_human(flavour: str, make_fake: Callable[..., Fake], tmp_path: Path) -> None:
    fake = make_fake(flavour)
    r = run_cli("--openssl", str(fake.path), "doctor", str(tmp_path / "none"))
    assert_no_traceback(r)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert f"version     {VERSIONS[flavour]}" in lines
    yes_no = "yes" if HAS_TRADITIONAL[flavour] else "no"
    assert any(line.startswith(f"traditional {yes_no}: ") for line in lines)
    for argv in keygen_commands(str(fake.path), HAS_TRADITIONAL[flavour]):
        assert "  " + shlex.join(argv) in lines  # copy-pasteable
    assert f"no key files in {tmp_path / 'none'} (looked for " in r.stdout
    assert "keygen" not in r.stdout.split("no key files")[1]  # never suggests a new key
    assert "\x1b[" not in r.stdout + r.stderr


@pytest.mark.parametrize(
    ("mode", "use"), [("always", True), ("never", False)], ids=["always", "never"]
)
@pytest.mark.parametrize("flavour", ["1.1.1", "3.0"])
def test_doctor_override(
    flavour: str, mode: str, use: bool, make_fake: Callable[..., Fake], tmp_path: Path
) -> None:
    fake = make_fake(flavour)
    r = run_cli(
        "--openssl", str(fake.path), "--json", "doctor", "--traditional", mode, str(tmp_path)
    )
    doc = json.loads(r.stdout)
    assert doc["openssl"]["traditional"] == {"use": use, "reason": f"--traditional {mode}"}
    assert doc["commands"] == keygen_commands(str(fake.path), use)


def test_doctor_source_env(make_fake: Callable[..., Fake], tmp_path: Path) -> None:
    fake = make_fake("3.5")
    r = run_cli("--json", "doctor", str(tmp_path), env={"QREDO_OPENSSL": str(fake.path)})
    doc = json.loads(r.stdout)
    assert (doc["openssl"]["source"], doc["openssl"]["path"]) == ("QREDO_OPENSSL", str(fake.path))


def test_doctor_checks_key_dir(make_fake: Callable[..., Fake], tmp_path: Path, keys: Keys) -> None:
    """Key files present: doctor includes check's findings, and still exits 0 (usable)."""
    d = tmp_path / "k"
    d.mkdir()
    (d / "private.pem").write_bytes(keys.pkcs8.read_bytes())
    (d / "private.pem").chmod(0o644)
    fake = make_fake("3.0")
    r = run_cli("--openssl", str(fake.path), "--json", "doctor", str(d))
    assert r.returncode == 0, r.stderr
    found = {f["name"]: f["status"] for f in json.loads(r.stdout)["checks"]}
    assert found["private.format"] == found["private.mode"] == found["public.exists"] == "fail"
    r = run_cli("--openssl", str(fake.path), "doctor", str(d))
    assert r.returncode == 0
    assert "qredo-openssl convert" in r.stdout
    assert "3 failed: private.format, private.mode, public.exists" in r.stderr


@pytest.mark.parametrize(
    "broken",
    [
        pytest.param("missing", id="missing"),
        pytest.param("version-fails", id="version-fails"),
        pytest.param("not-executable", id="not-executable"),
    ],
)
def test_doctor_unusable(broken: str, make_fake: Callable[..., Fake], tmp_path: Path) -> None:
    if broken == "missing":
        path = tmp_path / "no-such-openssl"
    elif broken == "version-fails":
        fake = make_fake("3.0", version_action="echo 'libcrypto.so.3: cannot open' >&2; exit 127")
        path = fake.path
    else:
        path = tmp_path / "openssl"
        path.write_text("not a program\n")
        path.chmod(0o644)
    r = run_cli("--openssl", str(path), "--json", "doctor", str(tmp_path))
    assert_no_traceback(r)
    assert r.returncode == 3
    doc = json.loads(r.stdout)  # exactly one document, the error inside it
    assert doc["usable"] is False
    assert doc["error"]["code"] == 3
    assert doc["openssl"]["source"] == "--openssl"
    r = run_cli("--openssl", str(path), "doctor", str(tmp_path))
    assert_no_traceback(r)
    assert r.returncode == 3
    assert "not usable" in r.stderr
    assert "error:" in r.stderr
    if broken == "version-fails":
        assert "cannot open" in r.stderr  # OpenSSL's own stderr is shown


@pytest.mark.real_openssl
def test_doctor_real_openssl_fresh_keys(fresh_keygen: FreshKeygen) -> None:
    assert fresh_keygen.result.returncode == 0
    r = run_cli("--json", "doctor", str(fresh_keygen.dir))
    assert r.returncode == 0
    doc = json.loads(r.stdout)
    assert doc["usable"] is True
    assert all(f["status"] in ("ok", "skip") for f in doc["checks"])
