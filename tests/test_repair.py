"""pubkey and convert: repair a key setup without ever losing a key.

``cryptography`` is the independent oracle: the converted key must be the same key, in
exactly the PKCS#1 form Go's ``x509.ParsePKCS1PrivateKey`` loads.
"""

from __future__ import annotations

import json
import shlex
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import HAS_TRADITIONAL, REAL_OPENSSL, VERSIONS, Fake, Keys, run_cli
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from helpers import assert_no_traceback, leftovers, mode

import qredo_openssl as q
from qredo_openssl._pem import fingerprint

PKCS1 = b"-----BEGIN RSA PRIVATE KEY-----"


def backups(d: Path, name: str = "private.pem") -> list[Path]:
    return sorted(d.glob(f"{name}.*.bak"))


def load_pkcs1(path: Path) -> rsa.RSAPrivateKey:
    """Load with cryptography and insist on PKCS#1: re-serialising gives the same bytes."""
    data = path.read_bytes()
    assert data.startswith(PKCS1)
    key = serialization.load_pem_private_key(data, password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    again = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,  # PKCS#1 for RSA
        serialization.NoEncryption(),
    )
    assert again == data
    return key


def modulus(path: Path) -> int:
    # Numbers only: load_pkcs1 is the oracle that validates (its primality tests cost
    # ~50 ms a key; this is called twice a test).
    data = path.read_bytes()
    key = serialization.load_pem_private_key(data, None, unsafe_skip_rsa_key_validation=True)
    assert isinstance(key, rsa.RSAPrivateKey)
    return key.private_numbers().public_numbers.n


def put(d: Path, name: str, data: bytes, perm: int = 0o600) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    p = d / name
    p.write_bytes(data)
    p.chmod(perm)
    return p


@pytest.fixture
def pkcs8_dir(tmp_path: Path, keys: Keys) -> Path:
    """A PKCS#8 private.pem with the public.pem made from it, as OpenSSL 3 users end up."""
    d = tmp_path / "keys"
    put(d, "private.pem", keys.pkcs8.read_bytes())
    put(d, "public.pem", keys.public.read_bytes(), 0o644)
    return d


# --- convert ---------------------------------------------------------------------------


def test_convert_pkcs8(pkcs8_dir: Path, keys: Keys) -> None:
    original = (pkcs8_dir / "private.pem").read_bytes()
    assert run_cli("check", str(pkcs8_dir)).returncode == 1
    r = run_cli("convert", str(pkcs8_dir))
    assert_no_traceback(r)
    assert r.returncode == 0, r.stderr
    key = load_pkcs1(pkcs8_dir / "private.pem")
    assert key.private_numbers().public_numbers.n == modulus(keys.pkcs8)  # the same key
    assert mode(pkcs8_dir / "private.pem") == 0o600
    [bak] = backups(pkcs8_dir)
    assert bak.read_bytes() == original  # the original is kept, byte for byte
    assert bak.name in r.stderr
    assert leftovers(pkcs8_dir) == []
    # The old public.pem still matches: check passes without touching it.
    assert (pkcs8_dir / "public.pem").read_bytes() == keys.public.read_bytes()
    r = run_cli("--json", "check", str(pkcs8_dir))
    assert r.returncode == 0, r.stdout
    found = {f["name"]: f["status"] for f in json.loads(r.stdout)}
    assert (found["private.format"], found["public.matches"]) == ("ok", "ok")


@pytest.mark.real_openssl
def test_convert_bare_openssl3_genrsa(tmp_path: Path) -> None:
    """The issue's case: a key made by hand with a bare OpenSSL 3 ``genrsa``."""
    assert REAL_OPENSSL is not None
    v = q.detect_openssl(REAL_OPENSSL).version
    if not (v.flavour == "OpenSSL" and v.major is not None and v.major >= 3):
        pytest.skip(f"the system OpenSSL is {v.raw}, not 3.x")
    d = tmp_path / "by-hand"
    d.mkdir()
    subprocess.run([REAL_OPENSSL, "genrsa", "-out", "private.pem", "2048"], cwd=d, check=True)
    subprocess.run(
        [REAL_OPENSSL, "rsa", "-in", "private.pem", "-outform", "PEM", "-pubout",
         "-out", "public.pem"], cwd=d, check=True, capture_output=True,
    )  # fmt: skip
    assert (d / "private.pem").read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    n = modulus(d / "private.pem")
    r = run_cli("--json", "convert", str(d))
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["written"] == str(d / "private.pem")
    assert doc["commands"][0][1:] == [
        "rsa", "-in", str(d / "private.pem"), "-traditional", "-out", "private.pem"
    ]  # fmt: skip
    assert modulus(d / "private.pem") == n
    load_pkcs1(d / "private.pem")
    assert run_cli("check", str(d)).returncode == 0


def test_convert_already_pkcs1_does_nothing(tmp_path: Path, keys: Keys) -> None:
    d = tmp_path / "k"
    put(d, "private.pem", keys.pkcs1.read_bytes())
    before = (d / "private.pem").stat()
    r = run_cli("--json", "convert", str(d))
    assert r.returncode == 0
    doc = json.loads(r.stdout)
    assert (doc["written"], doc["backups"], doc["commands"]) == (None, [], [])
    assert "nothing to do" in doc["message"]
    assert (d / "private.pem").stat().st_ino == before.st_ino
    assert backups(d) == []


def test_convert_world_readable_pkcs8(pkcs8_dir: Path) -> None:
    (pkcs8_dir / "private.pem").chmod(0o644)
    r = run_cli("convert", str(pkcs8_dir))
    assert r.returncode == 0, r.stderr
    assert mode(pkcs8_dir / "private.pem") == 0o600
    [bak] = backups(pkcs8_dir)
    assert mode(bak) == 0o600  # a backup is a private key too
    assert "was 0644" in r.stderr


def test_convert_bom(tmp_path: Path, keys: Keys) -> None:
    """A BOM fails private.format; convert rewrites it clean where OpenSSL can read it."""
    d = tmp_path / "k"
    put(d, "private.pem", b"\xef\xbb\xbf" + keys.pkcs1.read_bytes())
    r = run_cli("convert", str(d))
    assert_no_traceback(r)
    if r.returncode == 0:  # OpenSSL 3 skips the BOM
        assert (d / "private.pem").read_bytes() == keys.pkcs1.read_bytes()
        assert len(backups(d)) == 1
    else:  # OpenSSL 1.x cannot read it: a bad input file, left alone
        assert r.returncode == 1
        assert "BOM" in r.stderr


@pytest.mark.parametrize(
    ("make", "says"),
    [
        pytest.param(lambda k: b"", "empty", id="empty"),
        pytest.param(lambda k: k.public.read_bytes(), "public key", id="public-key"),
        pytest.param(lambda k: k.pkcs1.read_bytes()[:900], "truncated", id="truncated"),
        pytest.param(None, "no private key", id="missing"),
    ],
)
def test_convert_refuses_bad_input(
    tmp_path: Path, keys: Keys, make: Callable[[Keys], bytes] | None, says: str
) -> None:
    d = tmp_path / "k"
    d.mkdir()
    if make is not None:
        put(d, "private.pem", make(keys))
    before = sorted(p.name for p in d.iterdir())
    r = run_cli("convert", str(d))
    assert_no_traceback(r)
    assert r.returncode == 1
    assert says in r.stderr
    assert sorted(p.name for p in d.iterdir()) == before


@pytest.fixture(scope="module")
def odd_keys(tmp_path_factory: pytest.TempPathFactory, keys: Keys) -> dict[str, bytes]:
    """An encrypted PKCS#8 key (passphrase from a file) and a PKCS#8 EC key."""
    assert REAL_OPENSSL is not None
    d = tmp_path_factory.mktemp("odd")
    (d / "pass").write_text("s3cret\n")
    enc = subprocess.run(
        [REAL_OPENSSL, "pkcs8", "-topk8", "-v2", "aes-256-cbc", "-in", str(keys.pkcs1),
         "-passout", f"file:{d / 'pass'}"], check=True, capture_output=True,
    ).stdout  # fmt: skip
    ec = subprocess.run(
        [REAL_OPENSSL, "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
        check=True, capture_output=True,
    ).stdout  # fmt: skip
    return {"encrypted": enc, "ec": ec}


@pytest.mark.parametrize(("kind", "says"), [("encrypted", "passphrase"), ("ec", "not an RSA")])
@pytest.mark.parametrize("command", ["convert", "pubkey"])
def test_repair_refuses_unusable_keys(
    tmp_path: Path, odd_keys: dict[str, bytes], kind: str, says: str, command: str
) -> None:
    d = tmp_path / "k"
    original = put(d, "private.pem", odd_keys[kind]).read_bytes()
    r = run_cli(command, str(d))
    assert_no_traceback(r)
    assert r.returncode == 1
    assert says in r.stderr
    assert (d / "private.pem").read_bytes() == original
    assert sorted(p.name for p in d.iterdir()) == ["private.pem"]


# --- convert across OpenSSL flavours ---------------------------------------------------

# OpenSSL 1.x and LibreSSL ``rsa`` write PKCS#1 by default; the fake passes ``rsa`` to the
# real OpenSSL 3, which would write PKCS#8. This wrapper plays 1.x: it logs the argv it was
# given, then hands the fake a ``-traditional`` for key-writing ``rsa`` calls.
EMULATE_1X = r"""#!/bin/sh
{{ sep=; for a in "$@"; do printf '%s%s' "$sep" "$a"; sep='	'; done; printf '\n'; }} >> {log}
if [ "$1" = rsa ]; then
  writes=no
  for a in "$@"; do
    case "$a" in -out) writes=yes ;; -pubout|-traditional) writes=no; break ;; esac
  done
  [ $writes = yes ] && exec {fake} "$@" -traditional
fi
exec {fake} "$@"
"""


def emulating_1x(fake: Fake, tmp_path: Path) -> Fake:
    path = tmp_path / "as-1x" / "openssl"
    path.parent.mkdir()
    log = tmp_path / "as-1x.log"
    path.write_text(EMULATE_1X.format(log=shlex.quote(str(log)), fake=shlex.quote(str(fake.path))))
    path.chmod(0o755)
    return Fake(path, log)


@pytest.mark.parametrize("flavour", list(VERSIONS))
def test_convert_per_flavour(
    flavour: str, make_fake: Callable[..., Fake], pkcs8_dir: Path, keys: Keys, tmp_path: Path
) -> None:
    fake = make_fake(flavour)
    trad = HAS_TRADITIONAL[flavour]
    openssl = fake if trad else emulating_1x(fake, tmp_path)
    r = run_cli("--openssl", str(openssl.path), "convert", str(pkcs8_dir))
    assert_no_traceback(r)
    assert r.returncode == 0, r.stderr
    flag = ["-traditional"] if trad else []
    private = str(pkcs8_dir / "private.pem")
    convert = ["rsa", "-in", private, *flag, "-out", "private.pem"]
    assert convert in openssl.calls()
    if not trad:  # never offered to an OpenSSL whose rsa/genrsa reject it
        assert not [c for c in openssl.calls() if "-traditional" in c]
    if flavour == "garbage":  # version unreadable: genrsa -help was asked, not guessed
        assert ["genrsa", "-help"] in openssl.calls()
    assert modulus(pkcs8_dir / "private.pem") == modulus(keys.pkcs8)
    load_pkcs1(pkcs8_dir / "private.pem")


@pytest.mark.parametrize("flavour", ["1.1.1", "libressl"])
def test_convert_failure_leaves_the_original(
    flavour: str, make_fake: Callable[..., Fake], pkcs8_dir: Path
) -> None:
    """Without the emulation the fake's plain ``rsa`` still writes PKCS#8: convert notices,
    puts the original back, and leaves no backup or temporary directory."""
    original = (pkcs8_dir / "private.pem").read_bytes()
    fake = make_fake(flavour)
    r = run_cli("--openssl", str(fake.path), "convert", str(pkcs8_dir))
    assert_no_traceback(r)
    assert r.returncode == 3
    assert "left unchanged" in r.stderr
    assert (pkcs8_dir / "private.pem").read_bytes() == original
    assert sorted(p.name for p in pkcs8_dir.iterdir()) == ["private.pem", "public.pem"]


def test_convert_traditional_never_on_openssl3_explains(
    make_fake: Callable[..., Fake], pkcs8_dir: Path
) -> None:
    fake = make_fake("3.0")
    r = run_cli("--openssl", str(fake.path), "convert", "--traditional", "never", str(pkcs8_dir))
    assert r.returncode == 3
    assert "--traditional always" in r.stderr
    assert backups(pkcs8_dir) == []


def test_convert_openssl_failure_is_exit_3(make_fake: Callable[..., Fake], pkcs8_dir: Path) -> None:
    fake = make_fake("3.0")
    fail = 'case "$*" in *"-out private.pem"*) echo "rsa: disk on fire" >&2; exit 1;; esac\n'
    fake.path.write_text(fake.path.read_text().replace('case "$cmd" in', fail + 'case "$cmd" in'))
    r = run_cli("--openssl", str(fake.path), "convert", str(pkcs8_dir))
    assert_no_traceback(r)
    assert r.returncode == 3
    assert "disk on fire" in r.stderr
    assert sorted(p.name for p in pkcs8_dir.iterdir()) == ["private.pem", "public.pem"]


# --- pubkey ----------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["pkcs1", "pkcs8"])
def test_pubkey(form: str, tmp_path: Path, keys: Keys) -> None:
    d = tmp_path / "k"
    put(d, "private.pem", getattr(keys, form).read_bytes())
    r = run_cli("pubkey", str(d))
    assert_no_traceback(r)
    assert r.returncode == 0, r.stderr
    public = d / "public.pem"
    assert public.read_bytes() == keys.public.read_bytes()
    assert r.stdout == public.read_text()  # the PEM to paste into the Web App
    assert mode(public) == 0o644
    assert "Fingerprint: SHA256:" in r.stderr
    assert ("convert" in r.stderr) == (form == "pkcs8")  # a warning: still PKCS#8
    assert leftovers(d) == []


def test_pubkey_json_and_argv(make_fake: Callable[..., Fake], tmp_path: Path, keys: Keys) -> None:
    d = tmp_path / "k"
    put(d, "private.pem", keys.pkcs1.read_bytes())
    fake = make_fake("1.1.1")
    r = run_cli("--openssl", str(fake.path), "--json", "pubkey", str(d))
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    argv = [
        "rsa",
        "-in",
        str(d / "private.pem"),
        "-outform",
        "PEM",
        "-pubout",
        "-out",
        "public.pem",
    ]
    assert doc["commands"] == [[str(fake.path), *argv]]
    assert argv in fake.calls()
    assert doc["public_pem"] == keys.public.read_text()
    assert doc["fingerprint"] == fingerprint(keys.public.read_bytes())
    assert doc["warnings"] == []


def test_pubkey_never_clobbers(tmp_path: Path, keys: Keys) -> None:
    d = tmp_path / "k"
    put(d, "private.pem", keys.pkcs1.read_bytes())
    put(d, "public.pem", b"an old public key\n", 0o644)
    r = run_cli("pubkey", str(d))
    assert_no_traceback(r)
    assert r.returncode == 4
    assert (d / "public.pem").read_bytes() == b"an old public key\n"
    r = run_cli("pubkey", "--force", str(d))
    assert r.returncode == 0, r.stderr
    assert (d / "public.pem").read_bytes() == keys.public.read_bytes()
    [bak] = backups(d, "public.pem")
    assert bak.read_bytes() == b"an old public key\n"
    assert run_cli("check", str(d)).returncode == 0


def test_pubkey_fixes_a_mismatch(tmp_path: Path, keys: Keys) -> None:
    """The issue's stale public.pem: check names it, pubkey --force repairs it."""
    d = tmp_path / "k"
    put(d, "private.pem", keys.pkcs1.read_bytes())
    assert REAL_OPENSSL is not None
    other = subprocess.run(
        [REAL_OPENSSL, "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:1024"],
        check=True, capture_output=True,
    ).stdout  # fmt: skip
    stale = subprocess.run(
        [REAL_OPENSSL, "pkey", "-pubout"], input=other, check=True, capture_output=True
    ).stdout
    put(d, "public.pem", stale, 0o644)
    r = run_cli("check", str(d))
    assert r.returncode == 1
    assert "pubkey --force" in r.stdout
    assert run_cli("pubkey", "--force", str(d)).returncode == 0
    assert run_cli("check", str(d)).returncode == 0
