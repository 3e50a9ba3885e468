"""sign and verify: known answers, what the server accepts, secrets kept out of argv, batches.

``cryptography`` is the independent oracle: RSA PKCS#1 v1.5 is deterministic, so a signature
made by OpenSSL through this package must equal the one ``cryptography`` makes.
"""

from __future__ import annotations

import base64
import json
import os
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import REAL_OPENSSL, run_cli
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from hypothesis import given
from hypothesis import strategies as st

import qredo_openssl as q
from qredo_openssl._batch import sign_batch
from qredo_openssl._request import decode_signature, encode_signature
from qredo_openssl._request import now as sign_now
from qredo_openssl._sign import sign_request

DATA = Path(__file__).parent / "data"
TEST_PRIVATE = DATA / "TEST-KEY-DO-NOT-USE-private.pem"
TEST_PUBLIC = DATA / "TEST-KEY-DO-NOT-USE-public.pem"
URL = "https://api.qredo.network/api/v1/p/company"
TIMESTAMP = "1700000000"
# Base64 of {"key_id":"kid-TEST-ONLY","key":"bm90LWEtcmVhbC1rZXk"}: a well-formed, fake API key.
APIKEY = base64.b64encode(b'{"key_id":"kid-TEST-ONLY","key":"bm90LWEtcmVhbC1rZXk"}').decode()

BODIES = {
    "empty": b"",
    "json": b'{"name":"Acme Ltd","ref":"A1"}\n',
    "binary": bytes(range(256)),
    "crlf-non-ascii": b'{"memo": "caf\xc3\xa9 \xe2\x82\xac"}\r\nline 2\r\n\xff\xfe\x00',
}
# x-sign of TIMESTAMP + URL + body with the test key, computed once with `cryptography`
# (tests/data/README.md); test_known_answers_match_cryptography recomputes them.
KNOWN = {
    "empty": (
        "FSe8VNt5VheyrYcoBiZFWVxhMk2L4ybgEiUVPkctjqv0syZLgvE4T9AVBVvmNLXziJm2nf-rPBd2eQQi"
        "IZKIvEa8SoaGi_nCqKOzttYZk69DfNM_5MfpKvjQ9Xi7gk7gNEdoaxG4XFuzbsseWeYxsj7rKKA_57lp"
        "zQhPcPC4qiH5NRT2nGR1-fdznHCYzAWKuc4PC4pJAE0pnZnKekz1Y9xZuv1xg6ktx0RonK3Zh3Fh9u-B"
        "qbD6VMwc5oQ6AUCHiZGjtb4-uykng74J-MuZiatX4Mxed-X1QEwB02kgDh8JijlJRJO_i9kz2I5r5RWu"
        "Imy8GfJbYLYeS5AcgZIhcQ"
    ),
    "json": (
        "YkKq1XqSnq0THZl4V3Eq9i-D7mybYN0QKcMqhvXsgCtKw60LS3mZlSN6XAJJAxTdomae67dYsMBiqwav"
        "JX6rtoIBvbavn7XMOWyowQtds5hk8JNmz9zAfF7stuwcG7NO8nwcUJwVpOyuOHQaUS7Gn_n1UAgDboi3"
        "Kb996Wn2xKnnFeAkTrDea1d_MF3yMDCUhYp6ND3x37rfQZCA-fJpXRbK1LCnLbbauDeiLJ0bNWhCvAU2"
        "NgcJ1KsRxBzAnim-qOwXrWAVMlUE1CCeiA6cY9_Q_dRYWQidXOfbO3aCUMQQsCoVHH2apRVEvILeEzXM"
        "jBd2WeM55NEe3CiG_k2FhQ"
    ),
    "binary": (
        "wZ4gTc3QataZZVysglmttve2Jte-NEAGEkniJSiDiQbjovs07TNxWfps0C8NF4pf4nYJxormrMJO5OV3"
        "K4sl5_3WDi0YcC3u_lyKkfhfuA8ednEQGUPNByrBiI89ywndeZ7LYmp4dAvTAp7trozU-NxznRBp2QfR"
        "keLw8xlbLLkqu7JyLE6H-VOjcKn6f9Ep4d8RgxwNX-WvfFzRIih7kYBKL2yTce5P-3MyH44i6aTh39Bt"
        "kq7HsTBnTD6-F07bbBfmN4R4zOzCOUfUdh0u9N6_TKYg4EawoQqGwSwJl_Nij8Txy_aU8ANlRHkmajn7"
        "MJrw-MJjy14L1G8c5Fj5OQ"
    ),
    "crlf-non-ascii": (
        "t5A12TeOBcVaMC4GUcvrcb6_DFBEzfq2k3IGNTB9niWlwZgh0WH6f0S3t4inTt19Jy8j_vwBiRvoi27J"
        "1DPOd06sMTR804a6p2pEWekmZbeRUNeA7yfFoexV6OEeLQ8mS1ZvRoUFGZlvjEOjoSZ2pgwJJC8wCACw"
        "eadqutX9uemMmGmea8Qfs-_owjJXRDUaaz-Uf7AbG0r210bqHo-pzXaLKx3QFMW1Cx7N1rNUjrNkLg8B"
        "IfxF7bTZqvr3xFoQ57oT78fkoMH7PKMf6MwIjs0zzJCkJG30wOEjHxsypm-5-vNMl3wCPcjgwsffcRVJ"
        "HDLzWMt0yO0zfno9UrucCA"
    ),
}
CASES = [pytest.param(name, id=name) for name in BODIES]


def _private_key() -> rsa.RSAPrivateKey:
    key = serialization.load_pem_private_key(TEST_PRIVATE.read_bytes(), password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return key


def _public_key() -> rsa.RSAPublicKey:
    key = serialization.load_pem_public_key(TEST_PUBLIC.read_bytes())
    assert isinstance(key, rsa.RSAPublicKey)
    return key


def oracle_sign(stamp: str, url: str, body: bytes) -> str:
    """x-sign as Qredo's reference client makes it, with ``cryptography``."""
    sig = _private_key().sign(
        stamp.encode() + url.encode() + body, padding.PKCS1v15(), hashes.SHA256()
    )
    return base64.urlsafe_b64encode(sig).rstrip(b"=").decode()


def oracle_verifies(
    public: rsa.RSAPublicKey, stamp: str, url: str, body: bytes, x_sign: str
) -> bool:
    """Verify as the Qredo server does: strict URL-safe Base64 without padding, then PKCS#1 v1.5."""
    if "=" in x_sign or set(x_sign) & set("+/"):
        return False
    try:
        sig = base64.urlsafe_b64decode(x_sign + "=" * (-len(x_sign) % 4))
        public.verify(
            sig, stamp.encode() + url.encode() + body, padding.PKCS1v15(), hashes.SHA256()
        )
    except (InvalidSignature, ValueError):
        return False
    return True


@dataclass
class KeyDir:
    dir: Path
    paths: q.KeyPaths


def _keydir(d: Path, apikey: bool = True) -> KeyDir:
    d.mkdir(parents=True, exist_ok=True)
    shutil.copy(TEST_PRIVATE, d / "private.pem")
    (d / "private.pem").chmod(0o600)
    shutil.copy(TEST_PUBLIC, d / "public.pem")
    if apikey:
        (d / "apikey").write_text(APIKEY + "\n")
        (d / "apikey").chmod(0o600)
    return KeyDir(d, q.KeyPaths.in_dir(str(d)))


@pytest.fixture
def keydir(tmp_path: Path) -> KeyDir:
    return _keydir(tmp_path / "keys")


@pytest.fixture(scope="module")
def openssl() -> q.OpenSSL:
    return q.detect_openssl(REAL_OPENSSL)


@dataclass
class Ran:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def cli(monkeypatch, capsys, tmp_path):
    """Run the CLI in this process, in ``tmp_path``: fast. ``run_cli`` where a process matters."""
    from qredo_openssl._cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    monkeypatch.setattr(signal, "signal", lambda *a: None)  # leave pytest's SIGTERM alone

    def run(*args: str) -> Ran:
        capsys.readouterr()
        code = main(list(args))
        out, err = capsys.readouterr()
        return Ran(code, out, err)

    return run


def _headers(stdout: str) -> dict[str, str]:
    return dict(line.split(": ", 1) for line in stdout.splitlines())


# --- known answers -------------------------------------------------------------------------


@pytest.mark.parametrize("name", CASES)
def test_known_answers_match_cryptography(name):
    assert oracle_sign(TIMESTAMP, URL, BODIES[name]) == KNOWN[name]


@pytest.mark.parametrize("name", CASES)
def test_sign_request_known_answers(keydir, openssl, name):
    signed = sign_request(keydir.paths, openssl, URL, BODIES[name], timestamp=TIMESTAMP)
    assert signed.signature == KNOWN[name]
    assert signed.headers == {"x-api-key": APIKEY, "x-timestamp": TIMESTAMP, "x-sign": KNOWN[name]}
    assert signed.method == ("POST" if BODIES[name] else "GET")
    assert APIKEY not in repr(signed)  # the secret stays out of reprs and tracebacks


@pytest.mark.real_openssl
def test_cli_sign_known_answers_from_files_and_stdin(keydir, tmp_path):
    # Every body through the API above; here the CLI, from a file and from standard input.
    for name in ("binary",):
        (tmp_path / f"{name}.body").write_bytes(BODIES[name])
        r = run_cli("sign", "--url", URL, "--body", f"{name}.body", "--timestamp", TIMESTAMP,
                    str(keydir.dir), cwd=tmp_path)  # fmt: skip
        assert r.returncode == 0, r.stderr
        assert r.stdout.splitlines() == [
            f"x-api-key: {APIKEY}",
            f"x-timestamp: {TIMESTAMP}",
            f"x-sign: {KNOWN[name]}",
        ]
        assert r.stderr == ""
    # Standard input: the bytes exactly as read (run_cli's input is text, so use subprocess).
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "NO_COLOR")}
    argv = ["sign", "--url", URL, "--body", "-", "--timestamp", TIMESTAMP, str(keydir.dir)]
    p = subprocess.run(
        [sys.executable, "-m", "qredo_openssl", *argv], input=BODIES["crlf-non-ascii"],
        capture_output=True, env=env, timeout=60, check=False,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert _headers(p.stdout.decode())["x-sign"] == KNOWN["crlf-non-ascii"]


def test_nonce_and_defaults(keydir, openssl):
    signed = sign_request(keydir.paths, openssl, URL, b"{}", nonce="n-123", method="put")
    assert signed.timestamp is None
    assert signed.method == "PUT"
    assert list(signed.headers) == ["x-api-key", "x-nonce", "x-sign"]
    assert oracle_verifies(_public_key(), "n-123", URL, b"{}", signed.signature)
    assert signed.to_json() == {
        "url": URL, "method": "PUT", "nonce": "n-123", "headers": signed.headers,
    }  # fmt: skip
    before = int(sign_now())
    now = sign_request(keydir.paths, openssl, URL)
    assert now.timestamp is not None
    assert before <= int(now.timestamp) <= before + 5
    assert now.method == "GET"
    assert oracle_verifies(_public_key(), now.timestamp, URL, b"", now.signature)


@given(st.binary(max_size=600))
def test_signature_encoding_round_trip(raw):
    x_sign = encode_signature(raw)
    assert "=" not in x_sign
    assert not set(x_sign) & set("+/")
    if raw:
        assert decode_signature(x_sign) == raw


@pytest.mark.parametrize(
    ("value", "says"),
    [
        pytest.param("", "empty", id="empty"),
        pytest.param("abcd==", "padding", id="padded"),
        pytest.param("ab+/", "standard Base64 alphabet", id="standard"),
        pytest.param("abcde", "not URL-safe Base64", id="bad-length"),
        pytest.param("ab cd", "not URL-safe Base64", id="space"),
    ],
)
def test_decode_signature_is_strict(value, says):
    with pytest.raises(q.BadInputError, match=says):
        decode_signature(value)


# --- verify ----------------------------------------------------------------------------------


def _flip_bit(x_sign: str, bit: int = 0) -> str:
    raw = bytearray(decode_signature(x_sign))
    raw[len(raw) // 2] ^= 1 << bit
    return encode_signature(bytes(raw))


@pytest.mark.parametrize("name", CASES)
def test_verify_accepts_and_rejects(openssl, name):
    public, body = str(TEST_PUBLIC), BODIES[name]

    def verify(url=URL, sig=KNOWN[name], body=body, timestamp=TIMESTAMP):
        return q.verify_request(public, openssl, url, sig, body, timestamp=timestamp)

    assert verify() == q.Verification(True, f"x-sign verifies with {public}")
    assert not verify(body=body + b" ").valid
    assert not verify(body=body[:-1] if body else b"\n").valid
    assert not verify(url=URL + "/").valid
    assert not verify(url=URL.replace("https", "http")).valid
    assert not verify(timestamp="1700000001").valid
    assert not verify(sig=_flip_bit(KNOWN[name])).valid
    assert not verify(sig=KNOWN[name][:-4]).valid  # a short signature: OpenSSL says so, exit 1
    padded = base64.urlsafe_b64encode(decode_signature(KNOWN[name])).decode()
    assert verify(sig=padded) == q.Verification(
        False, "the signature has '=' padding; x-sign is URL-safe Base64 without padding"
    )


def test_verify_nonce(openssl):
    x_sign = oracle_sign("nonce-1", URL, b"")
    assert q.verify_request(str(TEST_PUBLIC), openssl, URL, x_sign, nonce="nonce-1").valid
    assert not q.verify_request(str(TEST_PUBLIC), openssl, URL, x_sign, nonce="nonce-2").valid
    # A timestamp is not a nonce with another name: same string, same payload.
    assert q.verify_request(str(TEST_PUBLIC), openssl, URL, x_sign, timestamp="nonce-1").valid


def test_verify_bad_public_key(openssl, tmp_path):
    with pytest.raises(q.BadInputError, match="no public key at"):
        q.verify_request(str(tmp_path / "nope.pem"), openssl, URL, KNOWN["empty"], timestamp="1")
    (tmp_path / "junk.pem").write_text("hello\n")
    with pytest.raises(q.BadInputError, match="not a PEM public key"):
        q.verify_request(str(tmp_path / "junk.pem"), openssl, URL, KNOWN["empty"], timestamp="1")


@pytest.mark.real_openssl
def test_cli_done_when(keydir, tmp_path):
    """SPEC's acceptance: sign prints the three headers; verify with them exits 0."""
    (tmp_path / "body.json").write_bytes(BODIES["json"])
    r = run_cli("sign", "--url", URL, "--body", "body.json", str(keydir.dir), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    h = _headers(r.stdout)
    assert list(h) == ["x-api-key", "x-timestamp", "x-sign"]
    common = ["--url", URL, "--body", "body.json", "--timestamp", h["x-timestamp"], str(keydir.dir)]
    ok = run_cli("verify", *common, "--signature", h["x-sign"], cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("valid:")
    bad = run_cli(
        "verify", *common, "--signature", _flip_bit(h["x-sign"], 7), "--json", cwd=tmp_path
    )
    assert bad.returncode == 1, bad.stderr
    assert json.loads(bad.stdout)["valid"] is False
    assert "Traceback" not in ok.stderr + bad.stderr


# --- output formats and errors ----------------------------------------------------------------


@pytest.mark.real_openssl
def test_cli_formats(keydir, tmp_path, cli):
    (tmp_path / "b.json").write_bytes(BODIES["json"])
    base = ["sign", "--url", URL, "--body", "b.json", "--nonce", "n1", str(keydir.dir)]
    js = cli(*base, "--format", "json")
    assert js.returncode == 0, js.stderr
    doc = json.loads(js.stdout)
    x_sign = oracle_sign("n1", URL, BODIES["json"])
    assert doc == {
        "url": URL, "method": "POST", "nonce": "n1",
        "headers": {"x-api-key": APIKEY, "x-nonce": "n1", "x-sign": x_sign},
    }  # fmt: skip
    assert json.loads(cli(*base, "--json").stdout) == doc
    curl = cli(*base, "--format", "curl", "--method", "PUT")
    assert curl.returncode == 0, curl.stderr
    assert shlex.split(curl.stdout) == [
        "curl", "-q", "-sS", "--fail-with-body", "--path-as-is", "--globoff",
        "-X", "PUT", "-H", f"x-api-key: {APIKEY}", "-H", "x-nonce: n1",
        "-H", f"x-sign: {x_sign}", "-H", "Content-Type: application/json", "-H", "Expect:",
        "--data-binary", f"@{tmp_path / 'b.json'}", URL,
    ]  # fmt: skip


@pytest.mark.real_openssl
def test_missing_apikey_is_a_warning(tmp_path, cli):
    kd = _keydir(tmp_path / "k", apikey=False)
    r = cli("sign", "--url", URL, "--timestamp", TIMESTAMP, str(kd.dir))
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [f"x-timestamp: {TIMESTAMP}", f"x-sign: {KNOWN['empty']}"]
    assert r.stderr.startswith("warning: no API key at")


@pytest.mark.parametrize(
    ("kwargs", "says"),
    [
        pytest.param({"url": "ftp://x/y"}, "http:// or https://", id="bad-scheme"),
        pytest.param({"url": "https://x/a b"}, "percent-encode", id="space-in-url"),
        pytest.param({"url": "https://x/caf\u00e9"}, "percent-encode", id="non-ascii-url"),
        pytest.param({"url": "https://x/\r\nx: y"}, "percent-encode", id="crlf-in-url"),
        pytest.param({"url": "/relative"}, "http:// or https://", id="relative"),
        pytest.param({"timestamp": "yesterday"}, "bad timestamp", id="bad-ts"),
        pytest.param({"timestamp": "1", "nonce": "n"}, "not both", id="ts-and-nonce"),
        pytest.param({"nonce": "a b"}, "bad nonce", id="bad-nonce"),
        pytest.param({"nonce": ""}, "bad nonce", id="empty-nonce"),
        pytest.param({"method": "G3T"}, "bad HTTP method", id="bad-method"),
    ],
)
def test_sign_rejects_bad_request_values(keydir, openssl, kwargs, says):
    kwargs = {"url": URL, **kwargs}
    with pytest.raises(q.BadInputError, match=says):
        sign_request(keydir.paths, openssl, **kwargs)


@pytest.mark.real_openssl
@pytest.mark.parametrize(
    ("args", "code", "says"),
    [
        pytest.param([], 2, "give --url", id="no-url"),
        pytest.param(["--url", "ftp://x/y"], 1, "http:// or https://", id="bad-scheme"),
        pytest.param(["--url", URL, "--body", "missing.json"], 1, "cannot read body", id="no-body"),
        pytest.param(
            ["--url", URL, "--timestamp", "1", "--nonce", "n"], 2, "not allowed", id="both"
        ),
        pytest.param(
            ["--batch", "-", "--url", URL], 2, "--url belong in the batch", id="batch-url"
        ),
        pytest.param(["--batch", "-", "--format", "curl"], 2, "does not apply", id="batch-curl"),
    ],
)
def test_sign_usage_and_input_errors(keydir, cli, args, code, says):
    r = cli("sign", *args, str(keydir.dir))
    assert r.returncode == code, r.stderr
    assert says in r.stderr
    assert r.stdout == ""
    assert "Traceback" not in r.stderr


@pytest.mark.real_openssl
def test_cli_unusable_private_key_json(tmp_path):
    kd = _keydir(tmp_path / "k")
    (kd.dir / "private.pem").unlink()
    r = run_cli("sign", "--url", URL, "--json", str(kd.dir))
    assert r.returncode == 1
    doc = json.loads(r.stdout)  # exactly one JSON document, the error
    assert doc["error"]["code"] == 1
    assert "no private key at" in doc["error"]["message"]


@pytest.mark.parametrize(
    ("content", "says"),
    [
        pytest.param(None, "no private key at", id="missing"),
        pytest.param(b"garbage\n", "not a PEM private key", id="garbage"),
        pytest.param(
            b"-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: "
            b"AES-128-CBC,00\n\nAAAA\n-----END RSA PRIVATE KEY-----\n",
            "is encrypted",
            id="encrypted",
        ),
        pytest.param(
            b"-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n",
            "not an RSA private key",
            id="ec",
        ),
    ],
)
def test_unusable_private_key_is_bad_input(tmp_path, openssl, content, says):
    kd = _keydir(tmp_path / "k")
    (kd.dir / "private.pem").unlink()
    if content is not None:
        (kd.dir / "private.pem").write_bytes(content)
    with pytest.raises(q.BadInputError, match=says) as info:
        sign_request(kd.paths, openssl, URL)
    assert info.value.exit_code == 1


def test_pkcs8_private_key_signs_the_same(tmp_path, openssl):
    kd = _keydir(tmp_path / "k")
    pkcs8 = _private_key().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    (kd.dir / "private.pem").write_bytes(pkcs8)
    signed = sign_request(kd.paths, openssl, URL, BODIES["binary"], timestamp=TIMESTAMP)
    assert signed.signature == KNOWN["binary"]


def test_openssl_failure_is_exit_3(keydir, tmp_path, cli):
    fake = tmp_path / "bin" / "openssl"
    fake.parent.mkdir()
    fake.write_text(
        '#!/bin/sh\n[ "$1" = version ] && { echo "OpenSSL 3.0.7 1 Nov 2022"; exit 0; }\n'
        'echo "dgst: provider boom" >&2\nexit 1\n'
    )
    fake.chmod(0o755)
    r = cli("sign", "--url", URL, "--openssl", str(fake), str(keydir.dir))
    assert r.returncode == 3
    assert "dgst: provider boom" in r.stderr
    assert "Traceback" not in r.stderr


# --- secrets never reach argv ------------------------------------------------------------------


def test_secrets_never_in_argv(make_fake, keydir, tmp_path):
    fake = make_fake("3.0")
    marker = b'{"secret-body-marker": "s3cr3t-B0DY"}'
    (tmp_path / "body.json").write_bytes(marker)
    (tmp_path / "batch.jsonl").write_text(
        json.dumps({"url": URL, "body": marker.decode(), "timestamp": TIMESTAMP}) + "\n"
    )
    opts = ["--openssl", str(fake.path), str(keydir.dir)]
    signed = run_cli("sign", "--url", URL, "--body", "body.json", "--timestamp", TIMESTAMP,
                     *opts, cwd=tmp_path)  # fmt: skip
    assert signed.returncode == 0, signed.stderr
    x_sign = _headers(signed.stdout)["x-sign"]
    assert x_sign == oracle_sign(TIMESTAMP, URL, marker)
    batch = run_cli("sign", "--batch", "batch.jsonl", *opts, cwd=tmp_path)
    assert batch.returncode == 0, batch.stderr
    verified = run_cli("verify", "--url", URL, "--body", "body.json", "--timestamp", TIMESTAMP,
                       "--signature", x_sign, *opts, cwd=tmp_path)  # fmt: skip
    assert verified.returncode == 0, verified.stderr

    calls = fake.calls()
    dgst = [c for c in calls if c[0] == "dgst"]
    assert len(dgst) == 3
    assert dgst[0] == ["dgst", "-sha256", "-sign", str(keydir.dir / "private.pem")]
    assert dgst[2][:4] == ["dgst", "-sha256", "-verify", str(keydir.dir / "public.pem")]
    argv_text = "\n".join("\t".join(c) for c in calls)
    for secret in (APIKEY, "s3cr3t-B0DY", TIMESTAMP + URL, "kid-TEST-ONLY"):
        assert secret not in argv_text
    assert _private_key_body() not in argv_text
    # The signature file went into a private temporary directory that is gone now.
    sig_file = Path(dgst[2][dgst[2].index("-signature") + 1])
    assert stat.S_IMODE(os.stat(tmp_path).st_mode) is not None
    assert not sig_file.exists()
    assert not sig_file.parent.exists()


def _private_key_body() -> str:
    return TEST_PRIVATE.read_text().splitlines()[1]


# --- end to end: a loopback server that verifies as Qredo would --------------------------------


class _QredoLike(BaseHTTPRequestHandler):
    """Answers 200 when x-api-key and x-sign check out for this exact request, else 401."""

    timeout = 10
    public: rsa.RSAPublicKey
    seen: list[int]

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        stamp = self.headers.get("x-timestamp") or self.headers.get("x-nonce") or ""
        url = f"http://{self.headers['Host']}{self.path}"
        ok = self.headers.get("x-api-key") == APIKEY and oracle_verifies(
            self.public, stamp, url, body, self.headers.get("x-sign", "")
        )
        status = 200 if ok else 401
        self.seen.append(status)
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_POST = do_PUT = _handle

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[tuple[str, list[int]]]:
    handler = type("Handler", (_QredoLike,), {"public": _public_key(), "seen": []})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", handler.seen
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


def _send(url: str, method: str, headers: dict[str, str], body: bytes | None) -> int:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    req = urllib.request.Request(url, data=body, headers=headers, method=method)
    try:
        with opener.open(req, timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_end_to_end_headers_through_urllib(server, keydir, tmp_path, openssl):
    base, seen = server
    url = f"{base}/api/v1/p/company/transfer?ref=a%20b"
    body = BODIES["crlf-non-ascii"]
    signed = sign_request(keydir.paths, openssl, url, body)
    assert _send(url, signed.method, signed.headers, body) == 200
    assert _send(url, signed.method, signed.headers, body + b" ") == 401  # tampered body
    assert _send(url + "&x=1", signed.method, signed.headers, body) == 401  # tampered URL
    other_time = dict(signed.headers, **{"x-timestamp": str(int(str(signed.timestamp)) + 1)})
    assert _send(url, signed.method, other_time, body) == 401
    nonce = sign_request(keydir.paths, openssl, url, nonce="abc-123")
    assert _send(url, "GET", nonce.headers, None) == 200
    assert seen == [200, 401, 401, 401, 200]


@pytest.mark.real_openssl
@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_end_to_end_curl_line(server, keydir, tmp_path):
    base, seen = server
    url = f"{base}/api/v1/p/company"
    (tmp_path / "body.json").write_bytes(BODIES["crlf-non-ascii"])
    r = run_cli("sign", "--url", url, "--body", "body.json", "--format", "curl",
                str(keydir.dir), cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr
    line = r.stdout.strip()
    assert "\n" not in line
    assert "s3cr3t" not in line
    assert "caf" not in line
    extra = " -sS -o /dev/null -w '%{http_code}' --noproxy '*' --max-time 10"

    def run_curl() -> str:
        p = subprocess.run(["bash", "-c", line + extra], cwd=tmp_path, capture_output=True,
                           text=True, timeout=30, check=False)  # fmt: skip
        return p.stdout

    assert run_curl() == "200"
    (tmp_path / "body.json").write_bytes(BODIES["crlf-non-ascii"] + b"\n")  # tampered
    assert run_curl() == "401"
    assert seen == [200, 401]


# --- batch ---------------------------------------------------------------------------------


BATCH = 48  # every body kind x every stamp kind (4 x 3), four times over; -j 4 interleaves them


@pytest.mark.real_openssl
def test_batch_in_order_with_a_bad_line(keydir, tmp_path):
    (tmp_path / "file.bin").write_bytes(BODIES["binary"])
    requests = []
    for i in range(BATCH):
        req: dict[str, object] = {"url": f"{URL}/{i}"}
        if i % 4 == 1:
            req["body"] = f'{{"n": {i}, "memo": "caf\u00e9"}}'
        elif i % 4 == 2:
            req["body_file"] = "file.bin"
            req["method"] = "PUT"
        if i % 3 == 0:
            req["nonce"] = f"nonce-{i}"
        elif i % 3 == 1:
            req["timestamp"] = 1700000000 + i
        requests.append(req)
    lines = [json.dumps(r) for r in requests]
    bad_at = 29  # 1-based line number of the malformed line
    lines.insert(bad_at - 1, '{"url": "https://x/", "body": ')
    (tmp_path / "batch.jsonl").write_text("\n".join(lines) + "\n")

    r = run_cli("sign", "--batch", "batch.jsonl", "-j", "4", str(keydir.dir), cwd=tmp_path)
    assert r.returncode == 1, r.stderr
    out = [json.loads(line) for line in r.stdout.splitlines()]
    assert [o["line"] for o in out] == list(range(1, BATCH + 2))
    assert out[bad_at - 1]["error"]["code"] == 1
    assert out[bad_at - 1]["error"]["message"].startswith(f"line {bad_at}: not JSON")
    assert f"error: line {bad_at}: not JSON" in r.stderr
    good = [o for o in out if "error" not in o]
    assert len(good) == BATCH
    public = _public_key()
    for req, o in zip(requests, good):
        assert o["url"] == req["url"]
        stamp = o.get("timestamp") or o["nonce"]
        if "nonce" in req:
            assert o["nonce"] == req["nonce"]
        elif "timestamp" in req:
            assert o["timestamp"] == str(req["timestamp"])
        body = (
            str(req["body"]).encode() if "body" in req
            else BODIES["binary"] if "body_file" in req else b""
        )  # fmt: skip
        assert o["method"] == req.get("method", "POST" if "body" in req else "GET")
        assert o["headers"]["x-api-key"] == APIKEY
        assert oracle_verifies(public, stamp, str(req["url"]), body, o["headers"]["x-sign"])


@pytest.mark.parametrize(
    ("line", "says"),
    [
        pytest.param(b"[1, 2]", "not a JSON object", id="array"),
        pytest.param(b'{"url": "https://x/", "bdy": "typo"}', "unknown key 'bdy'", id="typo"),
        pytest.param(b'{"body": "x"}', "no 'url'", id="no-url"),
        pytest.param(b'{"url": 5}', "'url' must be a string", id="url-type"),
        pytest.param(
            b'{"url": "https://x/", "body": "a", "body_file": "f"}', "not both", id="both"
        ),
        pytest.param(
            b'{"url": "https://x/", "timestamp": 1, "nonce": "n"}', "not both", id="ts-nonce"
        ),
        pytest.param(
            b'{"url": "https://x/", "timestamp": true}', "string or an integer", id="bool"
        ),
        pytest.param(b'{"url": "https://x/", "body_file": "-"}', "standard input", id="stdin"),
        pytest.param(b'{"url": "https://x/", "body_file": "/no/such"}', "cannot read", id="nofile"),
        pytest.param(b'{"url": "mailto:x"}', "http:// or https://", id="scheme"),
        pytest.param(b"\xff\xfe", "not UTF-8", id="utf8"),
    ],
)
def test_batch_line_errors(keydir, openssl, line, says):
    signer = q.Signer.from_paths(keydir.paths, openssl)
    ok = json.dumps({"url": URL, "timestamp": TIMESTAMP}).encode()
    items = sign_batch(signer, [ok, line, ok], jobs=2)
    assert [i.line for i in items] == [1, 2, 3]
    assert items[0].result is not None
    assert items[0].result.signature == KNOWN["empty"]
    assert items[2].result is not None
    assert items[2].result.signature == KNOWN["empty"]
    assert items[1].result is None
    assert items[1].error is not None
    assert str(items[1].error).startswith("line 2: ")
    assert says in str(items[1].error)
    assert items[1].to_json()["error"]["code"] == 1


@pytest.mark.real_openssl
def test_batch_from_stdin_json_mode(keydir, tmp_path):
    lines = "\n".join(
        [json.dumps({"url": URL, "timestamp": TIMESTAMP}), "", json.dumps({"url": "nope"})]
    )
    r = run_cli("sign", "--batch", "-", "--json", str(keydir.dir), input=lines.encode())
    assert r.returncode == 1
    doc = json.loads(r.stdout)  # exactly one JSON document
    assert doc["failed"] == 1
    assert [x["line"] for x in doc["results"]] == [1, 3]  # the blank line is not a request
    assert doc["results"][0]["headers"]["x-sign"] == KNOWN["empty"]
    assert doc["error"]["message"].startswith("line 3: ")


def test_closed_stdin_is_bad_input(tmp_path, keys):
    r = subprocess.run(
        f"{sys.executable} -m qredo_openssl sign --url https://x.example/y --body - "
        f"--private {keys.pkcs1} {tmp_path} <&-",
        shell=True, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr
    assert "standard input is closed" in r.stderr


@pytest.mark.real_openssl
def test_sign_and_verify_of_a_pem_key_run_one_openssl_child(keys, tmp_path):
    """One request signed or verified is one ``openssl dgst``: the version is never asked."""
    from helpers import key_pair, logging_openssl

    d = key_pair(tmp_path / "k", keys)
    exe, log = logging_openssl(tmp_path, f'exec {shlex.quote(str(REAL_OPENSSL))} "$@"')
    url = "https://play-api.qredo.network/api/v1/p/company"
    r = run_cli("--json", "sign", "--openssl", str(exe), "--url", url, "--timestamp", "1700000000",
                str(d))  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert log.read_text().split() == ["dgst"]
    x_sign = json.loads(r.stdout)["headers"]["x-sign"]
    log.unlink()
    r = run_cli("verify", "--openssl", str(exe), "--url", url, "--timestamp", "1700000000",
                "--signature", x_sign, str(d))  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert log.read_text().split() == ["dgst"]
