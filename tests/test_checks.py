"""check: every case of a real-world corpus, made once per session with the real OpenSSL.

Each case is a key directory; the test asserts its named finding and status (in-process
and through the CLI), the documented exit code, and that no traceback escapes.
"""

from __future__ import annotations

import base64
import json
import os
import random
import re
import shlex
import stat
import subprocess
import tracemalloc
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import REAL_OPENSSL, Fake, FreshKeygen, Keys, run_cli
from helpers import assert_no_traceback

import qredo_openssl as q
from qredo_openssl._checks import Status, any_failed
from qredo_openssl._openssl import parse_version
from qredo_openssl._pem import frame_pem

DATA = Path(__file__).parent / "data"
HUGE = 100 * 1024 * 1024
WORKERS = 2 * (os.cpu_count() or 1)  # OpenSSL and Python children: mostly CPU
COLOUR_SGR = re.compile(r"\x1b\[(?:\d+;)*(?:3[0-8]|9[0-7])[;m]")  # a foreground colour
PASSPHRASE = "correct horse battery staple\n"


@dataclass
class Case:
    """A corpus entry: what to build, and the finding (name, status) it must give."""

    build: Callable[[Path, Corpus], None]
    name: str
    status: Status
    says: str  # a word the finding's message must contain
    exit: int


class Corpus:
    """Builds key directories with the real OpenSSL (never a secret in argv)."""

    def __init__(self, root: Path, keys: Keys) -> None:
        assert REAL_OPENSSL is not None
        self.root = root
        self.keys = keys
        version = parse_version(self.openssl_out("version").decode())
        # rsa/genrsa write PKCS#1 on 1.x and LibreSSL; OpenSSL 3 needs -traditional.
        self.trad = ["-traditional"] if version.needs_traditional else []
        self.passfile = root / "passphrase"
        self.passfile.write_text(PASSPHRASE)
        self._other: bytes | None = None

    def other_public(self) -> bytes:
        """The public half of a second, unrelated 2048-bit key."""
        if self._other is None:
            self._other = self.openssl_out("rsa", "-pubout", stdin=self.rsa(2048))
        return self._other

    def openssl_out(self, *args: str, cwd: Path | None = None, stdin: bytes = b"") -> bytes:
        assert REAL_OPENSSL is not None
        argv = [REAL_OPENSSL, *args]
        return subprocess.run(argv, check=True, capture_output=True, cwd=cwd, input=stdin).stdout

    def put(self, d: Path, name: str, data: bytes, mode: int = 0o600) -> Path:
        p = d / name
        p.write_bytes(data)
        p.chmod(mode)
        return p

    def pair(self, d: Path, private: bytes, public: bytes | None = None) -> None:
        """``private.pem`` (0600) and, unless given, the matching ``public.pem``."""
        self.put(d, "private.pem", private)
        if public is None:
            public = self.openssl_out("rsa", "-in", str(d / "private.pem"), "-pubout")
        self.put(d, "public.pem", public, 0o644)

    def rsa(self, bits: int, *extra: str) -> bytes:
        """A fresh PKCS#1 RSA key from genrsa (made in a scratch directory)."""
        scratch = self.root / f"gen-{bits}-{'-'.join(extra) or 'f4'}"
        scratch.mkdir()
        self.openssl_out("genrsa", *self.trad, *extra, "-out", "k.pem", str(bits), cwd=scratch)
        return (scratch / "k.pem").read_bytes()


def good(d: Path, c: Corpus) -> None:
    c.pair(d, c.keys.pkcs1.read_bytes(), c.keys.public.read_bytes())


def pkcs8(d: Path, c: Corpus) -> None:
    c.pair(d, c.keys.pkcs8.read_bytes(), c.keys.public.read_bytes())


def encrypted_pkcs1(d: Path, c: Corpus) -> None:
    pw = f"file:{c.passfile}"
    key = c.openssl_out("rsa", "-in", str(c.keys.pkcs1), *c.trad, "-aes256", "-passout", pw)
    c.pair(d, key, c.keys.public.read_bytes())


def encrypted_pkcs8(d: Path, c: Corpus) -> None:
    pw = f"file:{c.passfile}"
    args = ("pkcs8", "-topk8", "-v2", "aes-256-cbc", "-in", str(c.keys.pkcs1), "-passout", pw)
    c.pair(d, c.openssl_out(*args), c.keys.public.read_bytes())


def ec_sec1(d: Path, c: Corpus) -> None:
    c.put(d, "private.pem", c.openssl_out("ecparam", "-genkey", "-name", "prime256v1", "-noout"))


def ec_pkcs8(d: Path, c: Corpus) -> None:
    key = c.openssl_out("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256")
    c.put(d, "private.pem", key)


def rsa_1024(d: Path, c: Corpus) -> None:
    c.pair(d, c.rsa(1024))


def rsa_4096(d: Path, c: Corpus) -> None:
    # A stored test key: genrsa 4096 takes 0.5 to 10 s, the longest step of the corpus.
    c.pair(d, (DATA / "TEST-KEY-4096-DO-NOT-USE-private.pem").read_bytes())


def exponent_3(d: Path, c: Corpus) -> None:
    c.pair(d, c.rsa(2048, "-3"))


def der(d: Path, c: Corpus) -> None:
    key = c.openssl_out("rsa", "-in", str(c.keys.pkcs1), *c.trad, "-outform", "DER")
    c.pair(d, key, c.keys.public.read_bytes())


def empty(d: Path, c: Corpus) -> None:
    c.pair(d, b"", c.keys.public.read_bytes())


def truncated(d: Path, c: Corpus) -> None:
    pem = c.keys.pkcs1.read_bytes()
    c.pair(d, pem[: len(pem) // 2], c.keys.public.read_bytes())


def truncated_body(d: Path, c: Corpus) -> None:
    """BEGIN and END lines intact, most of the Base64 body gone."""
    lines = c.keys.pkcs1.read_bytes().splitlines(keepends=True)
    c.pair(d, b"".join(lines[:8] + lines[-1:]), c.keys.public.read_bytes())


def random_bytes(d: Path, c: Corpus) -> None:
    data = bytes(random.Random(1).getrandbits(8) for _ in range(700))
    assert data[:1] != b"\x30"  # or it would read as DER
    c.pair(d, data, c.keys.public.read_bytes())


def public_at_private(d: Path, c: Corpus) -> None:
    c.pair(d, c.keys.public.read_bytes(), c.keys.public.read_bytes())


def corrupt_modulus(d: Path, c: Corpus) -> None:
    """A well-formed PKCS#1 block whose modulus is not p*q: OpenSSL's -check catches it."""
    block = frame_pem(c.keys.pkcs1.read_bytes())
    assert block is not None
    assert block.der is not None
    damaged = bytearray(block.der)
    damaged[100] ^= 0xFF  # inside n
    b64 = base64.encodebytes(bytes(damaged)).replace(b"\n", b"")
    body = b"\n".join(b64[i : i + 64] for i in range(0, len(b64), 64))
    pem = b"-----BEGIN RSA PRIVATE KEY-----\n" + body + b"\n-----END RSA PRIVATE KEY-----\n"
    c.pair(d, pem, c.keys.public.read_bytes())


def crlf(d: Path, c: Corpus) -> None:
    pem = c.keys.pkcs1.read_bytes().replace(b"\n", b"\r\n")
    c.pair(d, pem, c.keys.public.read_bytes())


def bom(d: Path, c: Corpus) -> None:
    c.pair(d, b"\xef\xbb\xbf" + c.keys.pkcs1.read_bytes(), c.keys.public.read_bytes())


def huge(d: Path, c: Corpus) -> None:
    with open(d / "private.pem", "wb") as f:
        f.truncate(HUGE)  # sparse: instant, and no disk used
    (d / "private.pem").chmod(0o600)
    c.put(d, "public.pem", c.keys.public.read_bytes(), 0o644)


def huge_public(d: Path, c: Corpus) -> None:
    c.put(d, "private.pem", c.keys.pkcs1.read_bytes())
    with open(d / "public.pem", "wb") as f:
        f.truncate(HUGE)


def mismatched_public(d: Path, c: Corpus) -> None:
    c.pair(d, c.keys.pkcs1.read_bytes(), c.other_public())


def mode_0644(d: Path, c: Corpus) -> None:
    c.pair(d, c.keys.pkcs1.read_bytes(), c.keys.public.read_bytes())
    (d / "private.pem").chmod(0o644)


def directory(d: Path, c: Corpus) -> None:
    (d / "private.pem").mkdir()
    c.put(d, "public.pem", c.keys.public.read_bytes(), 0o644)


def symlink(d: Path, c: Corpus) -> None:
    target = c.put(d, "real-key.pem", c.keys.pkcs1.read_bytes())
    (d / "private.pem").symlink_to(target.name)
    c.put(d, "public.pem", c.keys.public.read_bytes(), 0o644)


def dangling_symlink(d: Path, c: Corpus) -> None:
    (d / "private.pem").symlink_to("gone.pem")
    c.put(d, "public.pem", c.keys.public.read_bytes(), 0o644)


def missing_private(d: Path, c: Corpus) -> None:
    c.put(d, "public.pem", c.keys.public.read_bytes(), 0o644)


def missing_public(d: Path, c: Corpus) -> None:
    c.put(d, "private.pem", c.keys.pkcs1.read_bytes())


def pkcs1_public(d: Path, c: Corpus) -> None:
    """``BEGIN RSA PUBLIC KEY`` is not the SubjectPublicKeyInfo Qredo's upload takes."""
    pub = c.openssl_out("rsa", "-in", str(c.keys.pkcs1), "-RSAPublicKey_out")
    c.pair(d, c.keys.pkcs1.read_bytes(), pub)


CASES = {
    "good": Case(good, "public.matches", "ok", "public half", 0),
    "pkcs8": Case(pkcs8, "private.format", "fail", "convert", 1),
    "encrypted-pkcs1": Case(encrypted_pkcs1, "private.encrypted", "fail", "passphrase", 1),
    "encrypted-pkcs8": Case(encrypted_pkcs8, "private.encrypted", "fail", "passphrase", 1),
    "ec-sec1": Case(ec_sec1, "private.format", "fail", "EC", 1),
    "ec-pkcs8": Case(ec_pkcs8, "private.format", "fail", "not an RSA key", 1),
    "rsa-1024": Case(rsa_1024, "private.bits", "fail", "1024", 1),
    "rsa-4096": Case(rsa_4096, "private.bits", "warn", "4096", 0),  # SPEC: warn, so exit 0
    "exponent-3": Case(exponent_3, "private.exponent", "fail", "e = 3", 1),
    "der": Case(der, "private.format", "fail", "DER", 1),
    "empty": Case(empty, "private.format", "fail", "empty", 1),
    "truncated": Case(truncated, "private.format", "fail", "truncated", 1),
    "truncated-body": Case(truncated_body, "private.valid", "fail", "OpenSSL", 1),
    "random-bytes": Case(random_bytes, "private.format", "fail", "not PEM", 1),
    "public-at-private": Case(public_at_private, "private.format", "fail", "public key", 1),
    "corrupt-modulus": Case(corrupt_modulus, "private.valid", "fail", "consistency", 1),
    "crlf": Case(crlf, "private.format", "ok", "CRLF", 0),
    "bom": Case(bom, "private.format", "fail", "BOM", 1),
    "100mb": Case(huge, "private.format", "fail", "KiB", 1),
    "100mb-public": Case(huge_public, "public.format", "fail", "KiB", 1),
    "mismatched-public": Case(mismatched_public, "public.matches", "fail", "pubkey", 1),
    "mode-0644": Case(mode_0644, "private.mode", "fail", "chmod 600", 1),
    "directory": Case(directory, "private.exists", "fail", "directory", 1),
    "symlink": Case(symlink, "private.exists", "ok", "symlink", 0),
    "dangling-symlink": Case(dangling_symlink, "private.exists", "fail", "dangling", 1),
    "missing-private": Case(missing_private, "private.exists", "fail", "no private key", 1),
    "missing-public": Case(missing_public, "public.exists", "fail", "no public key", 1),
    "pkcs1-public": Case(pkcs1_public, "public.format", "fail", "RSA PUBLIC KEY", 1),
}


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory, keys: Keys) -> dict[str, Path]:
    """Every case's directory, built once (the 4096-bit key is the slow one)."""
    root = tmp_path_factory.mktemp("corpus")
    c = Corpus(root, keys)
    c.other_public()  # shared by cases: make it before they run side by side
    dirs = {case_id: root / case_id for case_id in CASES}

    def build(case_id: str) -> None:
        dirs[case_id].mkdir()
        CASES[case_id].build(dirs[case_id], c)

    with ThreadPoolExecutor(max_workers=WORKERS) as pool:  # OpenSSL children run in parallel
        list(pool.map(build, CASES))
    return dirs


@pytest.fixture(scope="session")
def cli_json(corpus: dict[str, Path]) -> dict[str, dict[str, Any]]:
    """Each case's entry of one ``qredo-openssl --json check DIR...`` over the whole corpus.

    One call checks every DIR in parallel; one DIR's JSON (the list) is the same findings
    document, tested by test_check_cli_plain_text and tests/test_check_many.py.
    """
    r = run_cli("--json", "check", *map(str, corpus.values()))
    assert_no_traceback(r)
    assert r.returncode == 1, r.stderr  # some cases fail
    doc = json.loads(r.stdout)  # exactly one JSON document
    assert [e["dir"] for e in doc["dirs"]] == list(map(str, corpus.values()))
    return dict(zip(corpus, doc["dirs"]))


@pytest.fixture(scope="session")
def real() -> q.OpenSSL:
    return q.detect_openssl(REAL_OPENSSL)


@pytest.fixture(scope="session")
def findings(corpus: dict[str, Path], real: q.OpenSSL) -> dict[str, list[q.Finding]]:
    """``check_keys`` of every case, once, side by side (the library is thread-safe)."""
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        done = pool.map(lambda d: q.check_keys(q.KeyPaths.in_dir(str(d)), real), corpus.values())
        return dict(zip(corpus, done))


def by_name(findings: list[q.Finding]) -> dict[str, q.Finding]:
    return {f.name: f for f in findings}


NAMES = [
    *(f"private.{n}" for n in ("exists", "format", "encrypted", "valid", "bits", "exponent")),
    "private.mode",
    *(f"public.{n}" for n in ("exists", "format", "matches")),
    *(f"apikey.{n}" for n in ("exists", "format", "mode")),
    "dir.mode",
    "dir.leftovers",
]


@pytest.mark.parametrize("case_id", list(CASES))
def test_finding_in_process(case_id: str, findings: dict[str, list[q.Finding]]) -> None:
    case = CASES[case_id]
    found = findings[case_id]
    assert [f.name for f in found] == NAMES  # every check, in the stable order
    f = by_name(found)[case.name]
    shown = f.message + (" " + shlex.join(f.fix) if f.fix else "")  # the fix is data
    assert (f.status, case.says in shown) == (case.status, True), f
    assert any_failed(found) == (case.exit == 1)


@pytest.mark.parametrize("case_id", list(CASES))
def test_check_cli_json(case_id: str, cli_json: dict[str, dict[str, Any]]) -> None:
    case = CASES[case_id]
    entry = cli_json[case_id]
    assert entry["ok"] is (case.exit == 0), entry
    doc = entry["checks"]
    for f in doc:  # the fix is data: a field, and still shown in the message
        assert set(f) == {"name", "status", "message"} | ({"fix"} if "fix" in f else set())
        if "fix" in f:
            assert f["message"].endswith(f"; run: {shlex.join(f['fix'])}")
    found = {f["name"]: f for f in doc}
    assert found[case.name]["status"] == case.status


EXPECTED_STATUSES = {
    # The whole picture for the cases whose other findings matter to a user.
    "good": "ok ok ok ok ok ok ok ok ok ok",
    "pkcs8": "ok fail ok ok ok ok ok ok ok ok",  # OpenSSL still reads it: the rest is reported
    "encrypted-pkcs1": "ok ok fail skip skip skip ok ok ok skip",
    "encrypted-pkcs8": "ok fail fail skip skip skip ok ok ok skip",
    "ec-pkcs8": "ok fail skip skip skip skip ok fail skip skip",
    "crlf": "ok ok ok ok ok ok ok ok ok ok",
    "mode-0644": "ok ok ok ok ok ok fail ok ok ok",
    "directory": "fail skip skip skip skip skip skip ok ok skip",
    "100mb": "ok fail skip skip skip skip ok ok ok skip",
    "mismatched-public": "ok ok ok ok ok ok ok ok ok fail",
}


@pytest.mark.parametrize("case_id", list(EXPECTED_STATUSES))
def test_all_statuses(case_id: str, findings: dict[str, list[q.Finding]]) -> None:
    found = findings[case_id]
    keys = [f for f in found if not f.name.startswith(("apikey.", "dir."))]
    statuses = " ".join(f.status for f in keys)
    assert statuses == EXPECTED_STATUSES[case_id]


def test_bom_valid_is_whatever_openssl_says(findings: dict[str, list[q.Finding]]) -> None:
    # OpenSSL 3 skips a BOM, 1.x does not: the format check fails either way, because
    # Go's pem.Decode in the signing client does not skip it.
    found = by_name(findings["bom"])
    assert found["private.valid"].status in ("ok", "fail")
    assert found["private.format"].fix[:2] == ("qredo-openssl", "convert")


def test_huge_file_read_is_bounded(corpus: dict[str, Path], real: q.OpenSSL) -> None:
    tracemalloc.start()
    try:
        q.check_keys(q.KeyPaths.in_dir(str(corpus["100mb"])), real)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * 1024 * 1024  # a bounded prefix, not 100 MB


def test_one_openssl_call_for_a_healthy_pair(
    make_fake: Callable[..., Fake], corpus: dict[str, Path]
) -> None:
    fake = make_fake("3.0")
    r = run_cli("--openssl", str(fake.path), "check", str(corpus["good"]))
    assert r.returncode == 0, r.stderr
    calls = [c for c in fake.calls() if c != ["version"]]
    private = str(corpus["good"] / "private.pem")
    assert calls == [["rsa", "-in", private, "-check", "-text", "-pubout"]]


@pytest.mark.parametrize("case_id", ["good", "pkcs8", "mode-0644", "directory", "100mb"])
def test_check_cli_plain_text(case_id: str, corpus: dict[str, Path]) -> None:
    r = run_cli("check", str(corpus[case_id]))
    assert_no_traceback(r)
    assert r.returncode == CASES[case_id].exit
    assert "\x1b[" not in r.stdout + r.stderr  # not a terminal: no colour, no table borders
    lines = r.stdout.splitlines()
    assert [line.split()[1] for line in lines] == NAMES
    row = next(line for line in lines if line.split()[1] == CASES[case_id].name)
    assert row.split()[0] == CASES[case_id].status
    summary = "all checks passed" if CASES[case_id].exit == 0 else "failed:"
    assert summary in r.stderr


def test_check_cli_quiet_prints_only_the_failed_names(corpus: dict[str, Path]) -> None:
    r = run_cli("-q", "check", str(corpus["pkcs8"]))
    assert (r.returncode, r.stdout, r.stderr) == (1, "", "error: 1 failed: private.format\n")


@pytest.mark.parametrize(
    ("env", "colour"),
    [
        pytest.param({"FORCE_COLOR": "1"}, True, id="force-color"),
        pytest.param({"FORCE_COLOR": "1", "NO_COLOR": "1"}, False, id="no-color-wins"),
    ],
)
def test_check_rich_table(env: dict[str, str], colour: bool, corpus: dict[str, Path]) -> None:
    r = run_cli("check", str(corpus["pkcs8"]), env={**env, "COLUMNS": "120"})
    assert_no_traceback(r)
    assert r.returncode == 1
    assert "━" in r.stdout or "─" in r.stdout  # a rich table
    assert bool(COLOUR_SGR.search(r.stdout + r.stderr)) == colour  # NO_COLOR may keep bold
    assert "private.format" in r.stdout


@pytest.mark.real_openssl
def test_fresh_keygen_checks_clean(fresh_keygen: FreshKeygen) -> None:
    assert fresh_keygen.result.returncode == 0
    r = run_cli("check", str(fresh_keygen.dir))
    assert_no_traceback(r)
    assert r.returncode == 0, r.stdout
    assert "fail" not in r.stdout.split()


def test_check_override_paths(corpus: dict[str, Path], tmp_path: Path) -> None:
    """--private/--public name files outside DIR (a key stored elsewhere)."""
    good = corpus["good"]
    r = run_cli(
        "--json", "check", str(tmp_path),
        "--private", str(good / "private.pem"), "--public", str(good / "public.pem"),
    )  # fmt: skip
    assert r.returncode == 0, r.stdout
    assert all(f["status"] in ("ok", "skip") for f in json.loads(r.stdout))


def test_openssl_missing_is_exit_3(corpus: dict[str, Path], tmp_path: Path) -> None:
    r = run_cli("--json", "--openssl", str(tmp_path / "nope"), "check", str(corpus["good"]))
    assert_no_traceback(r)
    assert r.returncode == 3
    assert json.loads(r.stdout)["error"]["code"] == 3


def test_corpus_dirs_are_untouched_by_check(corpus: dict[str, Path]) -> None:
    """check only reads: no temporary directories or backups appear anywhere."""
    for d in corpus.values():
        names = {p.name for p in d.iterdir()}
        assert not {n for n in names if n.startswith(".qredo-openssl-") or n.endswith(".bak")}
    assert stat.S_IMODE(os.stat(corpus["mode-0644"] / "private.pem").st_mode) == 0o644


@pytest.mark.parametrize(
    ("bits", "exponent", "statuses"),
    [
        pytest.param(2048, 65537, ("ok", "ok"), id="qredo"),
        pytest.param(4096, 65537, ("warn", "ok"), id="4096"),
        pytest.param(1024, 3, ("fail", "fail"), id="small-e3"),
        pytest.param(None, None, ("fail", "fail"), id="unread"),
    ],
)
def test_bits_and_exponent_are_one_rule(bits, exponent, statuses) -> None:
    """A key file and a token key are judged by the same function of OpenSSL's facts."""
    from qredo_openssl._checks import RsaFacts, rsa_findings

    found = rsa_findings(RsaFacts(bits, exponent, None))
    assert [(f.name, f.status) for f in found] == list(
        zip(("private.bits", "private.exponent"), statuses)
    )


def test_bits_and_exponent_findings_are_made_in_one_module() -> None:
    package = Path(q.__file__).parent
    makers = {
        str(p.relative_to(package))
        for p in package.rglob("*.py")
        if re.search(r'Finding\(\s*"private\.(bits|exponent)"', p.read_text())
    }
    assert makers == {"_checks.py"}


def _logging_openssl(tmp_path: Path, body: str = "") -> tuple[Path, Path]:
    from helpers import logging_openssl

    return logging_openssl(tmp_path, body or f'exec {shlex.quote(str(REAL_OPENSSL))} "$@"')


@pytest.mark.real_openssl
def test_check_of_a_sound_pair_runs_one_openssl_child(keys: Keys, tmp_path: Path) -> None:
    """``openssl version`` is asked only when a check fails: a sound pair costs one child."""
    from helpers import key_pair

    d = key_pair(tmp_path / "k", keys)
    exe, log = _logging_openssl(tmp_path)
    r = run_cli("check", "--openssl", str(exe), str(d))
    assert r.returncode == 0, r.stderr
    assert log.read_text().split() == ["rsa"]
    (d / "public.pem").write_bytes(keys.public.read_bytes().replace(b"M", b"N", 1))
    log.unlink()
    r = run_cli("check", "--openssl", str(exe), str(d))
    assert r.returncode == 1
    assert log.read_text().split().count("version") == 1  # asked once a check failed


@pytest.mark.real_openssl
@pytest.mark.parametrize("many", [False, True], ids=["one-dir", "many-dirs"])
def test_check_with_a_binary_that_is_no_openssl_exits_3(keys: Keys, tmp_path: Path, many) -> None:
    from helpers import key_pair

    dirs = [str(key_pair(tmp_path / f"k{i}", keys)) for i in range(2 if many else 1)]
    exe, _ = _logging_openssl(tmp_path, "exit 0")  # runs, prints nothing: no OpenSSL
    r = run_cli("--json", "check", "--openssl", str(exe), *dirs)
    assert r.returncode == 3, r.stderr
    assert "printed no version" in json.loads(r.stdout)["error"]["message"]
    r = run_cli("check", "--openssl", str(exe), *dirs)
    assert r.returncode == 3, r.stderr
    assert "printed no version" in r.stderr
    assert "corrupt" not in r.stdout + r.stderr  # no table blamed the keys first
