"""check of one DIR or many (in parallel), -q, a missing DIR; fingerprints; pubkey at rest."""

from __future__ import annotations

import base64
import hashlib
import json
import shlex
import stat
import subprocess
from pathlib import Path

import pytest
from conftest import REAL_OPENSSL, Keys, run_cli
from cryptography.hazmat.primitives import serialization
from helpers import assert_no_traceback, key_pair, mode


def oracle_fingerprint(public_pem: Path) -> str:
    """``SHA256:`` + Base64 of the SubjectPublicKeyInfo DER, computed by cryptography."""
    key = serialization.load_pem_public_key(public_pem.read_bytes())
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "SHA256:" + base64.b64encode(hashlib.sha256(der).digest()).decode().rstrip("=")


@pytest.fixture
def dirs(tmp_path: Path, keys: Keys) -> dict[str, Path]:
    """Two healthy DIRs and one whose private key is group/other-readable (a failed check)."""
    good1, good2 = key_pair(tmp_path / "good 1", keys), key_pair(tmp_path / "good2", keys)
    bad = key_pair(tmp_path / "bad", keys)
    (bad / "private.pem").chmod(0o644)
    return {"good1": good1, "good2": good2, "bad": bad}


def test_many_dirs_a_table_each_in_order_and_a_summary(dirs: dict[str, Path]) -> None:
    order = [dirs["good1"], dirs["bad"], dirs["good2"]]
    r = run_cli("check", *map(str, order))
    assert_no_traceback(r)
    assert r.returncode == 1
    headings = [line for line in r.stdout.splitlines() if line.endswith(":")]
    assert headings == [f"{d}:" for d in order]  # DIR order, whatever finished first
    assert r.stdout.count("private.mode") == 3  # one table per DIR
    assert f"{dirs['bad']}: 1 failed: private.mode" in r.stderr
    assert r.stderr.rstrip().endswith(f"1 of 3 DIRs failed: {dirs['bad']}")


def test_many_dirs_all_passing(dirs: dict[str, Path]) -> None:
    r = run_cli("check", "-j", "2", str(dirs["good1"]), str(dirs["good2"]))
    assert r.returncode == 0, r.stderr
    assert r.stderr.rstrip().endswith("all 2 DIRs passed")


def test_many_dirs_json(dirs: dict[str, Path], tmp_path: Path) -> None:
    missing = tmp_path / "no such dir"
    r = run_cli("--json", "check", str(dirs["good1"]), str(missing), str(dirs["bad"]))
    assert_no_traceback(r)
    assert r.returncode == 1
    doc = json.loads(r.stdout)  # exactly one document
    assert list(doc) == ["dirs"]
    good, gone, bad = doc["dirs"]
    assert (good["dir"], good["ok"]) == (str(dirs["good1"]), True)
    assert set(good) == {"dir", "ok", "checks"}
    assert all(set(f) <= {"name", "status", "message", "fix"} for f in good["checks"])
    assert gone == {
        "dir": str(missing),
        "ok": False,
        "error": {"code": 1, "message": f"{missing} does not exist: no key files to check"},
    }
    assert bad["ok"] is False
    assert {f["name"]: f["status"] for f in bad["checks"]}["private.mode"] == "fail"
    assert r.stderr == ""  # JSON mode: the document says it all


def test_one_dir_json_is_the_list_as_before(dirs: dict[str, Path]) -> None:
    r = run_cli("--json", "check", str(dirs["good1"]))
    assert r.returncode == 0
    assert isinstance(json.loads(r.stdout), list)


@pytest.mark.parametrize("json_mode", [False, True], ids=["text", "json"])
def test_missing_dir_is_one_error_naming_it(tmp_path: Path, json_mode: bool) -> None:
    missing = tmp_path / "typo"
    r = run_cli(*(["--json"] if json_mode else []), "check", str(missing))
    assert_no_traceback(r)
    assert r.returncode == 1
    assert r.stderr.splitlines() == [f"error: {missing} does not exist: no key files to check"]
    if json_mode:
        assert json.loads(r.stdout)["error"]["code"] == 1
    else:
        assert r.stdout == ""  # no table of "no such file" failures


def test_a_file_given_as_dir(dirs: dict[str, Path]) -> None:
    r = run_cli("check", str(dirs["good1"] / "public.pem"))
    assert r.returncode == 1
    assert "is not a directory" in r.stderr
    assert r.stdout == ""


def test_paths_given_separately_need_no_dir(dirs: dict[str, Path], tmp_path: Path) -> None:
    good = dirs["good1"]
    r = run_cli(
        "check", str(tmp_path / "absent"), "--private", str(good / "private.pem"),
        "--public", str(good / "public.pem"), "--apikey", str(tmp_path / "no-apikey"),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(["-j", "0", "a", "b"], id="jobs-0"),
        pytest.param(["--private", "x", "a", "b"], id="private-with-two-dirs"),
    ],
)
def test_usage_errors(argv: list[str]) -> None:
    r = run_cli("check", *argv)
    assert r.returncode == 2
    assert len(r.stderr.splitlines()) == 1


def test_quiet_keeps_errors_and_failed_names(dirs: dict[str, Path], tmp_path: Path) -> None:
    missing = tmp_path / "gone"
    r = run_cli("-q", "check", str(dirs["good1"]), str(dirs["bad"]), str(missing))
    assert r.returncode == 1
    assert r.stdout == ""
    assert r.stderr.splitlines() == [
        f"error: {dirs['bad']}: 1 failed: private.mode",
        f"error: {missing} does not exist: no key files to check",
    ]


def test_quiet_one_dir(dirs: dict[str, Path]) -> None:
    r = run_cli("-q", "check", str(dirs["bad"]))
    assert (r.returncode, r.stdout, r.stderr) == (1, "", "error: 1 failed: private.mode\n")
    r = run_cli("-q", "check", str(dirs["good1"]))
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")


RENDEZVOUS = r"""#!/bin/sh
# fake openssl: "rsa" waits (up to 20 s) until two of them run at once, then runs the real one.
if [ "$1" = rsa ]; then
  : > {dir}/started.$$
  i=0
  while [ "$(ls {dir} | wc -l)" -lt 2 ] && [ $i -lt 200 ]; do sleep 0.1; i=$((i+1)); done
  [ $i -lt 200 ] && echo together >> {log}
fi
exec {real} "$@"
"""


def test_dirs_are_checked_in_parallel(tmp_path: Path, keys: Keys) -> None:
    """Two OpenSSL checks meet: proof of parallel work that measures no time."""
    rendezvous, log = tmp_path / "rendezvous", tmp_path / "log"
    rendezvous.mkdir()
    fake = tmp_path / "openssl"
    fake.write_text(
        RENDEZVOUS.replace("{dir}", shlex.quote(str(rendezvous)))
        .replace("{log}", shlex.quote(str(log)))
        .replace("{real}", shlex.quote(str(REAL_OPENSSL)))
    )
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    a, b = key_pair(tmp_path / "a", keys), key_pair(tmp_path / "b", keys)
    r = run_cli("--openssl", str(fake), "check", "-j", "2", str(a), str(b))
    assert r.returncode == 0, r.stderr
    assert log.read_text().split() == ["together", "together"]


def test_check_and_doctor_show_the_fingerprint(dirs: dict[str, Path]) -> None:
    d = dirs["good1"]
    fp = oracle_fingerprint(d / "public.pem")
    for argv in (["check", str(d)], ["doctor", str(d)]):
        r = run_cli(*argv)
        row = next(line for line in r.stdout.splitlines() if "public.format" in line)
        assert row.endswith(f"fingerprint {fp}"), row
    doc = json.loads(run_cli("--json", "check", str(d)).stdout)
    assert {f["name"]: f["message"] for f in doc}["public.format"].endswith(fp)


@pytest.fixture(scope="module")
def other_public(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The public half of an unrelated key (1024 bits: quick to make)."""
    assert REAL_OPENSSL is not None
    private = subprocess.run(
        [REAL_OPENSSL, "genrsa", "1024"], check=True, capture_output=True
    ).stdout
    return subprocess.run(
        [REAL_OPENSSL, "rsa", "-pubout"], input=private, check=True, capture_output=True
    ).stdout


def test_fingerprint_of_a_public_key_that_does_not_match(
    tmp_path: Path, keys: Keys, other_public: bytes
) -> None:
    d = key_pair(tmp_path / "k", keys)
    (d / "public.pem").write_bytes(other_public)
    r = run_cli("--json", "check", str(d))
    assert r.returncode == 1
    found = {f["name"]: f for f in json.loads(r.stdout)}
    assert found["public.matches"]["status"] == "fail"
    assert found["public.format"]["message"].endswith(oracle_fingerprint(d / "public.pem"))


@pytest.mark.parametrize("force", [False, True], ids=["plain", "force"])
def test_pubkey_with_nothing_to_do(dirs: dict[str, Path], force: bool) -> None:
    d = dirs["good1"]
    before = {p.name: (p.read_bytes(), mode(p)) for p in d.iterdir()}
    r = run_cli("pubkey", *(["--force"] if force else []), str(d))
    assert_no_traceback(r)
    assert r.returncode == 0, r.stderr
    assert "nothing to do" in r.stderr
    assert r.stdout == (d / "public.pem").read_text()  # still the key, ready to paste
    assert {p.name: (p.read_bytes(), mode(p)) for p in d.iterdir()} == before  # no backup
    doc = json.loads(run_cli("--json", "pubkey", str(d)).stdout)
    assert (doc["written"], doc["backups"]) == (None, [])


def test_pubkey_still_refuses_a_public_key_that_does_not_match(
    tmp_path: Path, keys: Keys, other_public: bytes
) -> None:
    d = key_pair(tmp_path / "k", keys)
    (d / "public.pem").write_bytes(other_public)
    r = run_cli("pubkey", str(d))
    assert r.returncode == 4
    assert "refusing" in r.stderr
    assert (d / "public.pem").read_bytes() == other_public
