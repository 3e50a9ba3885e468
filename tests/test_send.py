"""``send``: signed requests through the real curl and OpenSSL to a loopback Qredo server.

The server (tests/qredo_server.py) checks every request as Qredo does, with ``cryptography``
over ``https://`` + Host + the target as it arrived + the body: a request that passes was sent
exactly as signed. It binds 127.0.0.1 only; the default API base is never contacted.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import Keys, run_cli
from cryptography.hazmat.primitives import serialization
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from qredo_server import TLS, Canned, QredoServer, make_tls_material

from qredo_openssl._errors import QredoOpenSSLError, UsageError
from qredo_openssl._urls import ApiBase, api_base, remove_dot_segments, resolve_url, url_rewrite

CURL = shutil.which("curl")
pytestmark = pytest.mark.skipif(CURL is None, reason="curl is not installed")
APIKEY = base64.urlsafe_b64encode(b'{"key_id":"test-only","key":"x"}').rstrip(b"=").decode()
BODIES = {
    "binary": bytes(range(256)) + b"\x00\xff",
    "crlf": b'{"a": 1,\r\n "b": "x"}\r\n',
    "utf8": '{"name": "café ☕ 名前"}'.encode(),
    "empty": b"",
}
ROUTES = {
    "/api/v1/p/boom": Canned(500, [("Content-Type", "application/json")], b'{"code":500}'),
    "/api/v1/p/blob": Canned(200, [("Content-Type", "application/octet-stream")], b"\xff\x80"),
    "/api/v1/p/text": Canned(200, [("Content-Type", "text/plain")], b"plain words"),
    "/api/v1/p/cookies": Canned(200, [("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")], b""),
    "/api/v1/p/slow": Canned(200, [], b"late", delay=5.0),
    "/api/v1/p/nan": Canned(200, [("Content-Type", "application/json")], b'{"a": NaN}'),
}


@dataclass
class Env:
    """A key directory, the server, and a private TMPDIR that must stay empty."""

    dir: Path
    srv: QredoServer
    tls: TLS
    tmp: Path
    work: Path

    def send(self, *args: str, env: dict[str, str] | None = None, input: bytes | None = None,
             key_dir: Path | None = None) -> subprocess.CompletedProcess[str]:  # fmt: skip
        full = {"TMPDIR": str(self.tmp), "NO_PROXY": "127.0.0.1,localhost", "QREDO_APIKEY": ""}
        full.update(env or {})
        return run_cli("send", "--cacert", str(self.tls.ca), *args, str(key_dir or self.dir),
                       env=full, input=input, cwd=self.work)  # fmt: skip

    def since(self, n: int) -> list:  # type: ignore[type-arg]
        return self.srv.requests[n:]


def make_keydir(path: Path, keys: Keys, apikey: bool = True) -> Path:
    path.mkdir(mode=0o700)
    shutil.copy(keys.pkcs1, path / "private.pem")
    (path / "private.pem").chmod(0o600)
    shutil.copy(keys.public, path / "public.pem")
    if apikey:
        (path / "apikey").write_text(APIKEY + "\n")
        (path / "apikey").chmod(0o600)
    return path


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TLS:
    return make_tls_material(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def server(tls: TLS, keys: Keys) -> Iterator[QredoServer]:
    with QredoServer(tls, keys.public, APIKEY, routes=ROUTES, timeout=5.0) as srv:
        yield srv


@pytest.fixture
def env(tmp_path: Path, keys: Keys, server: QredoServer, tls: TLS) -> Iterator[Env]:
    tmp = tmp_path / "tmpdir"
    tmp.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    e = Env(make_keydir(tmp_path / "keys", keys), server, tls, tmp, work)
    yield e
    assert list(tmp.iterdir()) == [], "a temporary file was left in TMPDIR"
    assert sorted(p.name for p in e.dir.iterdir()) == ["apikey", "private.pem", "public.pem"]


def oracle_fingerprint(public: Path) -> str:
    key = serialization.load_pem_public_key(public.read_bytes())
    der = key.public_bytes(serialization.Encoding.DER,
                           serialization.PublicFormat.SubjectPublicKeyInfo)  # fmt: skip
    return "SHA256:" + base64.b64encode(hashlib.sha256(der).digest()).decode().rstrip("=")


# --- requests as signed ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "kind"),
    [("GET", None), ("GET", "binary"), ("POST", "crlf"), ("POST", "utf8"), ("PUT", "binary"),
     ("PUT", "empty"), ("DELETE", None), ("DELETE", "crlf")],
)  # fmt: skip
def test_methods_and_bodies_arrive_byte_exact(env: Env, method: str, kind: str | None) -> None:
    args = ["--url", env.srv.base + "/company?x=1", "--method", method]
    if kind is not None:
        (env.work / "body").write_bytes(BODIES[kind])
        args += ["--body", "body"]
    n = len(env.srv.requests)
    r = env.send(*args)
    assert r.returncode == 0, r.stderr
    [got] = env.since(n)
    assert (got.method, got.target, got.verdict) == (method, "/api/v1/p/company?x=1", "ok")
    assert got.body == (BODIES[kind] if kind else b"")
    assert got.header("Expect") is None
    json_body = kind in ("crlf", "utf8")
    assert got.header("Content-Type") == ("application/json" if json_body else None)
    assert json.loads(r.stdout)["method"] == method
    assert "HTTP/1.1 200 OK" in r.stderr


def test_default_method_and_stdin_body(env: Env) -> None:
    n = len(env.srv.requests)
    r = env.send("--url", env.srv.base + "/a", "--body", "-", input=BODIES["crlf"])
    assert r.returncode == 0
    assert env.send("--url", env.srv.base + "/b").returncode == 0
    first, second = env.since(n)
    assert (first.method, first.body, first.verdict) == ("POST", BODIES["crlf"], "ok")
    assert (second.method, second.body, second.verdict) == ("GET", b"", "ok")


def test_apikey_from_environment(env: Env, tmp_path: Path, keys: Keys) -> None:
    bare = make_keydir(tmp_path / "bare", keys, apikey=False)
    n = len(env.srv.requests)
    r = env.send("--url", env.srv.base + "/company", env={"QREDO_APIKEY": APIKEY}, key_dir=bare)
    assert r.returncode == 0, r.stderr
    assert [q.verdict for q in env.since(n)] == ["ok"]


def test_missing_apikey_sends_nothing(env: Env, tmp_path: Path, keys: Keys) -> None:
    bare = make_keydir(tmp_path / "bare", keys, apikey=False)
    n = len(env.srv.requests)
    r = env.send("--url", env.srv.base + "/company", key_dir=bare)
    assert r.returncode == 1
    assert "no API key" in r.stderr
    assert "nothing was sent" in r.stderr
    assert env.since(n) == []


def test_extra_headers(env: Env) -> None:
    (env.work / "b").write_bytes(b"not json")
    n = len(env.srv.requests)
    r = env.send("--url", env.srv.base + "/h", "--header", "X-Trace: 1 2", "--header",
                 "Content-Type: text/plain", "--body", "b")  # fmt: skip
    assert r.returncode == 0, r.stderr
    [got] = env.since(n)
    assert (got.header("X-Trace"), got.header("Content-Type")) == ("1 2", "text/plain")
    undecodable = b"X: a\xffb".decode("utf-8", "surrogateescape")  # as a non-UTF-8 argv arrives
    for bad in ("x-sign: a", "X-Api-Key: k", "x-timestamp: 1", "x-nonce: n", "Host: h", "nocolon",
                undecodable):  # fmt: skip
        r = env.send("--url", env.srv.base + "/h", "--header", bad)
        assert r.returncode == 2, (bad, r.stderr)
        assert "Traceback" not in r.stderr
    assert len(env.since(n)) == 1


# --- where requests go -------------------------------------------------------------------------


def test_api_base_precedence(env: Env) -> None:
    unreachable = "https://127.0.0.1:9/nowhere"
    n = len(env.srv.requests)
    (env.dir / "api-base").write_text(env.srv.base + "\n# comment\n")
    r = env.send("--url", "/company")  # the file
    assert r.returncode == 0, r.stderr
    assert f"from {env.dir / 'api-base'}" in r.stderr
    r = env.send("--url", "/company", env={"QREDO_API_BASE": env.srv.base + "/"})
    assert r.returncode == 0, r.stderr  # the environment; its trailing / removed
    (env.dir / "api-base").write_text(unreachable)
    r = env.send("--url", "/company", "--api-base", env.srv.base,
                 env={"QREDO_API_BASE": unreachable})  # fmt: skip
    assert r.returncode == 0, r.stderr  # the flag beats both
    assert "from --api-base" in r.stderr
    assert [q.target for q in env.since(n)] == ["/api/v1/p/company"] * 3
    (env.dir / "api-base").unlink()
    r = env.send("--url", "/company", "--dry-run")  # the default, never contacted
    assert r.returncode == 0, r.stderr
    assert "https://api.qredo.network/api/v1/p/company" in r.stdout
    assert "from default" in r.stderr
    assert len(env.since(n)) == 3


@pytest.mark.parametrize(
    ("url", "use"),
    [
        pytest.param("https://h.example", "https://h.example/", id="no-path"),
        pytest.param("https://h.example/a#frag", "https://h.example/a", id="fragment"),
        pytest.param("https://h.example/a/../b", "https://h.example/b", id="dot-dot"),
        pytest.param("https://h.example/a/./b", "https://h.example/a/b", id="dot"),
        pytest.param("https://h.example:443/a", "https://h.example/a", id="default-port"),
        pytest.param("HTTPS://H.example/a", "https://h.example/a", id="upper-case"),
        pytest.param("https://me:pw@h.example/a", "https://h.example/a", id="userinfo"),
        pytest.param("https://h.example/a b", "https://h.example/a%20b", id="space"),
        pytest.param("https://h.example/café", "https://h.example/caf%C3%A9", id="non-ascii"),
        pytest.param("https://h.example/a\tb", "https://h.example/a%09b", id="control"),
        pytest.param("https://café.example/a", "https://xn--caf-dma.example/a", id="idn-host"),
        pytest.param("https://h.example:08443/a", "https://h.example:8443/a", id="port-zero"),
        pytest.param("https://127.1:8443/a", "https://127.0.0.1:8443/a", id="short-ipv4"),
        pytest.param("https://0x7f.0.0.1/a", "https://127.0.0.1/a", id="hex-ipv4"),
        pytest.param("https://2130706433/a", "https://127.0.0.1/a", id="int-ipv4"),
        pytest.param("https://%31%32%37.0.0.1/a", "https://127.0.0.1/a", id="encoded-host"),
    ],
)
def test_refused_url_forms(env: Env, url: str, use: str) -> None:
    n = len(env.srv.requests)
    r = env.send("--url", url)
    assert r.returncode == 2, r.stderr
    assert r.stderr.rstrip().endswith(f"use {use}")
    assert env.since(n) == []
    rewrite = url_rewrite(url)
    assert rewrite is not None
    assert rewrite.use == use
    assert url_rewrite(use) is None


@pytest.mark.parametrize(
    "url", ["http://192.0.2.1/company", "http://api.qredo.network/api/v1/p/x", "http://[2001:db8::1]/x"]
)
def test_cleartext_to_a_remote_host_is_refused(env: Env, url: str) -> None:
    """http:// is for loopback testing: elsewhere the API key would cross the network in clear."""
    for args, extra in (
        (("--url", url), {}),
        (("--url", "/company"), {"QREDO_API_BASE": url}),
        (("--dry-run", "--url", url), {}),
    ):
        r = env.send(*args, env=extra)
        assert r.returncode in (1, 2), r.stdout + r.stderr
        assert "clear text" in r.stderr
        assert r.stdout == ""
    for loopback in ("http://127.0.0.1:9/x", "http://localhost:9/x", "http://[::1]:9/x"):
        assert env.send("--dry-run", "--url", loopback).returncode == 0


def test_sign_and_verify_warn_about_rewritten_forms(env: Env) -> None:
    url = "https://h.example:443/a"
    s = run_cli("sign", "--url", url, "--timestamp", "1700000000", str(env.dir))
    assert s.returncode == 0, s.stderr
    assert "warning:" in s.stderr
    assert "use https://h.example/a" in s.stderr
    sig = s.stdout.splitlines()[-1].split(": ")[1]
    v = run_cli("verify", "--url", url, "--timestamp", "1700000000", "--signature", sig,
                str(env.dir))  # fmt: skip
    assert v.returncode == 0
    assert "warning:" in v.stderr
    # What they refused before, they still refuse (exit 1).
    assert run_cli("sign", "--url", "https://h/a b", str(env.dir)).returncode == 1
    # A path URL on the base, for sign and verify alike.
    s = run_cli("sign", "--url", "/x", "--api-base", "https://b.example/p/", "--timestamp",
                "1700000000", "--format", "json", str(env.dir))  # fmt: skip
    assert json.loads(s.stdout)["url"] == "https://b.example/p/x"


def test_sign_timestamp_milliseconds_and_future(env: Env) -> None:
    r = run_cli("sign", "--url", "https://h.example/a", "--timestamp", "1700000000000",
                str(env.dir))  # fmt: skip
    assert r.returncode == 2
    assert "milliseconds" in r.stderr
    assert "1700000000" in r.stderr
    ahead = str(int(time.time()) + 3600)
    r = run_cli("sign", "--url", "https://h.example/a", "--timestamp", ahead, str(env.dir))
    assert r.returncode == 0
    assert "ahead" in r.stderr
    r = run_cli("verify", "--url", "https://h.example/a", "--timestamp", "1700000000000",
                "--signature", "AA", str(env.dir))  # fmt: skip
    assert r.returncode == 2


# --- answers and no answers --------------------------------------------------------------------


def test_server_error_exit_5_body_printed(env: Env) -> None:
    r = env.send("--url", env.srv.base + "/boom")
    assert r.returncode == 5
    assert r.stdout == '{"code":500}'
    assert "500 Internal Server Error" in r.stderr
    j = env.send("--url", env.srv.base + "/boom", "--json")
    assert j.returncode == 5
    assert json.loads(j.stdout)["body"] == {"code": 500}


def test_auth_failure_diagnosis(env: Env, tls: TLS, keys: Keys) -> None:
    # Nothing uploaded, and a server clock 2 minutes ahead: both show in the diagnosis.
    with QredoServer(tls, None, APIKEY, clock_offset=120, timeout=5.0) as other:
        r = env.send("--url", other.base + "/company", "--api-base", other.base)
    assert r.returncode == 5
    assert json.loads(r.stdout)["msg"] == "errPartnerAuth"
    assert oracle_fingerprint(keys.public) in r.stderr
    m = re.search(r"is (\d+) s ahead of this machine's clock", r.stderr)
    assert m is not None, r.stderr
    assert 115 <= int(m.group(1)) <= 125
    assert "key_id test-only" in r.stderr
    assert "reason: timestamp" in r.stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_no_answer_exit_6(env: Env) -> None:
    r = env.send("--url", f"https://127.0.0.1:{free_port()}/x")
    assert r.returncode == 6
    assert "curl: (7)" in r.stderr
    n = len(env.srv.requests)
    r = run_cli("send", "--cacert", str(env.tls.other_ca), "--url", env.srv.base + "/x",
                str(env.dir), env={"TMPDIR": str(env.tmp), "NO_PROXY": "127.0.0.1"})  # fmt: skip
    assert r.returncode == 6
    assert "(60)" in r.stderr
    assert env.since(n) == []
    j = env.send("--url", f"https://127.0.0.1:{free_port()}/x", "--json")
    assert j.returncode == 6
    assert json.loads(j.stdout)["error"]["code"] == 6


def test_timeout_exit_6(env: Env) -> None:
    r = env.send("--url", env.srv.base + "/slow", "--timeout", "1")
    assert r.returncode == 6
    assert "(28)" in r.stderr


# --- curl and OpenSSL: found, checked, argv ----------------------------------------------------


def logging_wrapper(path: Path, real: str, log: Path, version: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    answer = f'[ "$1" = --version ] && {{ echo "{version}"; exit 0; }}\n' if version else ""
    path.write_text(f"#!/bin/sh\nprintf '%s\\n' \"$*\" >> '{log}'\n{answer}exec '{real}' \"$@\"\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_no_secret_in_any_argv(env: Env, tmp_path: Path, make_fake) -> None:  # type: ignore[no-untyped-def]
    log = tmp_path / "curl.log"
    curl = logging_wrapper(tmp_path / "bin" / "curl", str(CURL), log)
    fake_openssl = make_fake("3.0")
    marker = b'{"secret-body-marker": 1}'
    (env.work / "b.json").write_bytes(marker)
    n = len(env.srv.requests)
    r = env.send("--url", env.srv.base + "/company", "--body", "b.json", "--curl", str(curl),
                 "--openssl", str(fake_openssl.path))  # fmt: skip
    assert r.returncode == 0, r.stderr
    [got] = env.since(n)
    x_sign = got.header("x-sign")
    assert x_sign
    argvs = log.read_text().splitlines() + ["\t".join(c) for c in fake_openssl.calls()]
    assert any(a.startswith("-q ") for a in argvs)  # curl: -q first (no ~/.curlrc)
    assert any("--path-as-is" in a for a in argvs)
    assert any(a.startswith("dgst") for a in argvs)
    for a in argvs:
        assert APIKEY not in a
        assert x_sign not in a
        assert "secret-body-marker" not in a


def test_api_key_and_x_sign_never_on_disk(env: Env, tmp_path: Path) -> None:
    """curl gets the headers on stdin: while it runs, no file of ours holds the API key or
    x-sign (a SIGKILL then cannot leave them behind); only the body is a file (0600)."""
    seen = tmp_path / "seen"
    curl = tmp_path / "bin" / "curl"
    curl.parent.mkdir()
    curl.write_text(
        "#!/bin/sh\n"
        f"[ \"$1\" = --version ] || {{ cat {env.tmp}/.qredo-openssl-*/* > '{seen}'; "
        f"ls -A {env.tmp}/.qredo-openssl-*/ > '{seen}.ls'; }}\n"
        f"exec '{CURL}' \"$@\"\n"
    )
    curl.chmod(0o755)
    (env.work / "b.json").write_bytes(b'{"k": 1}')
    n = len(env.srv.requests)
    r = env.send("--url", env.srv.base + "/company", "--body", "b.json", "--curl", str(curl))
    assert r.returncode == 0, r.stderr
    [got] = env.since(n)
    on_disk = seen.read_bytes()
    assert on_disk == b'{"k": 1}'  # the body file alone
    assert APIKEY.encode() not in on_disk
    assert str(got.header("x-sign")).encode() not in on_disk
    assert (tmp_path / "seen.ls").read_text().split() == ["body"]


def test_missing_and_old_curl_exit_3(env: Env, tmp_path: Path) -> None:
    n = len(env.srv.requests)
    r = env.send("--url", env.srv.base + "/x", "--curl", str(tmp_path / "no-curl"))
    assert r.returncode == 3
    assert "curl not found" in r.stderr
    old = logging_wrapper(tmp_path / "old" / "curl", str(CURL), tmp_path / "old.log",
                          version="curl 7.68.0 (x86_64-pc-linux-gnu) libcurl/7.68.0")  # fmt: skip
    r = env.send("--url", env.srv.base + "/x", env={"QREDO_CURL": str(old)})
    assert r.returncode == 3
    assert "7.68.0" in r.stderr
    assert "too old" in r.stderr
    assert env.since(n) == []
    d = run_cli("doctor", "--curl", str(old), "--json", str(env.dir))
    assert d.returncode == 0
    doc = json.loads(d.stdout)
    assert doc["curl"]["usable"] is False
    assert doc["curl"]["source"] == "--curl"
    assert doc["api_base"] == {"url": "https://api.qredo.network/api/v1/p", "source": "default"}


def test_doctor_shows_curl_and_base(env: Env) -> None:
    r = run_cli("doctor", "--api-base", env.srv.base, str(env.dir))
    assert r.returncode == 0, r.stderr
    assert re.search(r"^curl +/\S+ +\(from PATH\)$", r.stdout, re.M)
    assert f"API base    {env.srv.base}  (from --api-base)" in r.stdout


# --- output forms ------------------------------------------------------------------------------


def test_json_document_stays_json_for_a_nan_body(env: Env) -> None:
    """Python's json reads NaN; a strict reader of our --json must still get valid JSON."""
    r = env.send("--url", env.srv.base + "/nan", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout, parse_constant=lambda c: pytest.fail(f"{c} in --json output"))
    assert doc["body"] == '{"a": NaN}'


def test_json_document(env: Env) -> None:
    r = env.send("--url", env.srv.base + "/cookies", "--json")
    doc = json.loads(r.stdout)
    assert set(doc) == {"request", "status", "headers", "body"}
    assert doc["status"] == 200
    assert doc["headers"]["set-cookie"] == "a=1, b=2"
    assert doc["request"]["method"] == "GET"
    assert doc["request"]["timestamp"].isdigit()
    assert json.loads(env.send("--url", env.srv.base + "/text", "--json").stdout)["body"] == (
        "plain words"
    )
    blob = json.loads(env.send("--url", env.srv.base + "/blob", "--json").stdout)
    assert "body" not in blob
    assert base64.b64decode(blob["body_base64"]) == b"\xff\x80"


def test_include(env: Env) -> None:
    r = env.send("--url", env.srv.base + "/text", "--include")
    head, _, body = r.stdout.partition("\r\n\r\n")
    assert head.startswith("HTTP/1.1 200 OK\r\n")
    assert "Content-Type: text/plain" in head
    assert "100 Continue" not in head
    assert body == "plain words"


def test_dry_run_sends_nothing(env: Env) -> None:
    n = len(env.srv.requests)
    r = env.send("--url", env.srv.base + "/company", "--dry-run")
    assert r.returncode == 0, r.stderr
    assert env.since(n) == []
    assert r.stdout.startswith(str(CURL) + " -q ")
    assert "x-sign: " in r.stdout
    assert "x-api-key: <redacted>" in r.stdout
    assert APIKEY not in r.stdout + r.stderr


def test_explain_digests(env: Env) -> None:
    body = BODIES["utf8"]
    (env.work / "b.json").write_bytes(body)
    n = len(env.srv.requests)
    r = env.send("--url", env.srv.base + "/company", "--body", "b.json", "--explain")
    assert r.returncode == 0, r.stderr
    [got] = env.since(n)
    stamp = got.header("x-timestamp")
    payload = f"{stamp}{env.srv.base}/company".encode() + body
    digest = hashlib.sha256(payload).hexdigest()
    assert f"payload sha256 (Qredo's client prints it as Hash:): {digest}" in r.stderr
    assert f"{len(body)} bytes, sha256 {hashlib.sha256(body).hexdigest()}" in r.stderr
    assert "openssl: " in r.stderr
    assert "curl: " in r.stderr
    assert APIKEY not in r.stderr
    s = run_cli("sign", "--url", env.srv.base + "/company", "--body", str(env.work / "b.json"),
                "--timestamp", str(stamp), "--explain", str(env.dir))  # fmt: skip
    assert hashlib.sha256(payload).hexdigest() in s.stderr
    assert APIKEY not in s.stderr


# --- many requests -----------------------------------------------------------------------------


def test_batch_order_exit_and_bad_lines(env: Env) -> None:
    base = env.srv.base
    lines = [
        json.dumps({"url": base + "/one"}),
        "{not json",
        json.dumps({"url": base + "/boom"}),
        json.dumps({"url": "/two", "body": "{\"k\": 1}", "method": "PUT"}),
        json.dumps({"url": f"https://127.0.0.1:{free_port()}/gone"}),
    ]
    (env.work / "b.jsonl").write_text("\n".join(lines) + "\n")
    r = env.send("--batch", "b.jsonl", "--api-base", base)
    assert r.returncode == 6, r.stderr
    out = [json.loads(x) for x in r.stdout.splitlines()]
    assert [o["line"] for o in out] == [1, 2, 3, 4, 5]
    assert out[0]["status"] == 200
    assert out[2]["status"] == 500
    assert out[3]["status"] == 200
    assert out[1]["error"]["code"] == 1
    assert out[4]["error"]["code"] == 6
    assert out[3]["body"]["method"] == "PUT"
    assert out[3]["request"]["url"] == base + "/two"
    (env.work / "b.jsonl").write_text("\n".join(lines[:4]))
    j = env.send("--batch", "-", "-j", "2", "--json", "--api-base", base,
                 input=(env.work / "b.jsonl").read_bytes())  # fmt: skip
    assert j.returncode == 5
    doc = json.loads(j.stdout)
    assert doc["failed"] == 2
    assert [x["line"] for x in doc["results"]] == [1, 2, 3, 4]


def test_batch_body_file_is_found_beside_the_batch(env: Env) -> None:
    """As in ``sign --batch``: a relative body_file is in the batch file's folder, not cwd."""
    folder = env.work / "requests"
    folder.mkdir()
    body = b'{"amount": "1.5"}\r\n'
    (folder / "body.json").write_bytes(body)
    line = {"url": env.srv.base + "/pay", "body_file": "body.json", "method": "POST"}
    (folder / "b.jsonl").write_text(json.dumps(line) + "\n")
    r = env.send("--batch", "requests/b.jsonl")
    assert r.returncode == 0, r.stdout + r.stderr
    assert env.srv.requests[-1].body == body


def test_request_dir(env: Env) -> None:
    req = env.work / "requests" / "transfer"
    req.mkdir(parents=True)
    (req / "uri").write_text("PUT /company/1/transfer\n")
    (req / "body").write_bytes(BODIES["crlf"])
    n = len(env.srv.requests)
    r = env.send("--request-dir", str(req), "--api-base", env.srv.base)
    assert r.returncode == 0, r.stderr
    [got] = env.since(n)
    assert (got.method, got.target, got.body) == ("PUT", "/api/v1/p/company/1/transfer",
                                                  BODIES["crlf"])  # fmt: skip
    r = env.send("--request-dir", str(req), "--url", "/x")
    assert r.returncode == 2
    assert "--url" in r.stderr


# --- interrupted -------------------------------------------------------------------------------


def test_sigterm_removes_the_temp_dir(env: Env) -> None:
    child_env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "NO_COLOR")}
    child_env.update(TMPDIR=str(env.tmp), NO_PROXY="127.0.0.1", QREDO_APIKEY="")
    proc = subprocess.Popen(
        [sys.executable, "-m", "qredo_openssl", "send", "--cacert", str(env.tls.ca),
         "--url", env.srv.base + "/slow", str(env.dir)],
        env=child_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    deadline = time.monotonic() + 10
    while not list(env.tmp.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)  # curl is running
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 130, err
    assert b"Traceback" not in err


# --- the URL rules, by property ----------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.text(st.characters(exclude_categories=())) | st.text().map(lambda t: "https://h/" + t))
def test_url_rewrite_never_raises_and_its_form_is_clean(url: str) -> None:
    rewrite = url_rewrite(url)
    if rewrite is not None and rewrite.use is not None:
        assert url_rewrite(rewrite.use) is None
        assert str(rewrite)


url_chars = st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="#?")
paths = st.lists(st.text(url_chars, max_size=8), max_size=5).map(lambda s: "/" + "/".join(s))


HOSTS = ["h.example", "H.example", "u@h.example", "h.example:443", "h:8443", ""]


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(["http", "https", "HTTPS"]), st.sampled_from(HOSTS), paths,
       st.sampled_from(["", "?", "?a=b", "?x/../y"]), st.sampled_from(["", "#f"]))  # fmt: skip
def test_accepted_url_is_its_own_parts(scheme: str, host: str, path: str, query: str,
                                       frag: str) -> None:  # fmt: skip
    url = f"{scheme}://{host}{path}{query}{frag}"
    rewrite = url_rewrite(url)
    if not host:
        assert rewrite is None  # not judged: no host is refused by the signer's own check
    elif rewrite is None:
        # Sent as is: lower-case scheme and host, a path free of dot segments, no fragment.
        assert url == f"{scheme.lower()}://{host.lower()}{remove_dot_segments(path)}{query}"
        assert "@" not in host
        assert host
        assert not host.endswith(":443") or scheme == "http"
    else:
        assert rewrite.use is None or url_rewrite(rewrite.use) is None


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=40), st.binary(max_size=40))
def test_api_base_raises_only_our_errors(tmp_path_factory: pytest.TempPathFactory, flag: str,
                                         content: bytes) -> None:  # fmt: skip
    d = tmp_path_factory.getbasetemp() / "api-base-property"
    d.mkdir(exist_ok=True)
    (d / "api-base").write_bytes(content)
    for explicit in (flag, None):
        try:
            base = api_base(explicit, str(d), environ={})
        except QredoOpenSSLError:
            continue
        assert resolve_url("/x", base).url == base.url.rstrip("/") + "/x"


def test_path_url_appends_as_text() -> None:
    base = ApiBase("https://h.example/api/v1/p/", "test")
    assert resolve_url("/company", base).url == "https://h.example/api/v1/p/company"
    assert resolve_url("https://o.example/x", base).url == "https://o.example/x"


SLOW_OK = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]


@settings(max_examples=2, deadline=None, suppress_health_check=SLOW_OK)
@given(st.lists(paths, min_size=4, max_size=8))
def test_accepted_urls_arrive_byte_identical(env: Env, tail: list[str]) -> None:
    urls = [env.srv.base + p for p in tail]
    urls = [u for u in urls if url_rewrite(u) is None]
    (env.work / "b.jsonl").write_text("".join(json.dumps({"url": u}) + "\n" for u in urls))
    n = len(env.srv.requests)
    r = env.send("--batch", "b.jsonl")
    assert r.returncode == 0, r.stdout + r.stderr
    got = env.since(n)
    assert [env.srv.url + q.target for q in got] == urls
    assert {q.verdict for q in got} <= {"ok"}


# --- the printed curl line, and the Python API -------------------------------------------------


def test_sign_curl_line_for_scripts(env: Env) -> None:
    (env.work / "b.bin").write_bytes(BODIES["binary"])
    r = run_cli("sign", "--url", env.srv.base + "/x", "--body", "b.bin", "--format", "curl",
                str(env.dir), cwd=env.work)  # fmt: skip
    argv = shlex.split(r.stdout)
    assert argv[:6] == ["curl", "-q", "-sS", "--fail-with-body", "--path-as-is", "--globoff"]
    assert "Content-Type:" in argv
    assert "Content-Type: application/json" not in argv
    assert argv[argv.index("--data-binary") + 1] == f"@{env.work / 'b.bin'}"
    p = run_cli("sign", "--url", env.srv.base + "/x", "--body", "-", "--format", "curl",
                str(env.dir), input=b'{"a": 1}')  # fmt: skip
    argv = shlex.split(p.stdout)
    assert "Content-Type: application/json" in argv
    assert argv[argv.index("--data-binary") + 1] == "@-"
    assert "pipe the same bytes" in p.stderr


def test_python_api(env: Env, keys: Keys, monkeypatch: pytest.MonkeyPatch) -> None:
    import qredo_openssl as q

    monkeypatch.setenv("TMPDIR", str(env.tmp))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    signer = q.Signer.from_paths(q.KeyPaths.in_dir(str(env.dir)), q.detect_openssl())
    sender = q.Sender(signer, q.detect_curl(), timeout=10, cacert=str(env.tls.ca))
    result = sender.send(env.srv.base + "/cookies")
    assert (result.status, result.exit_code) == (200, 0)
    assert result.headers["set-cookie"] == "a=1, b=2"
    with pytest.raises(q.NoAnswerError):
        sender.send(f"https://127.0.0.1:{free_port()}/x")
    with pytest.raises(q.UsageError):
        sender.send("https://127.0.0.1/a#frag")


def test_large_body_without_expect(env: Env) -> None:
    body = b'{"pad": "' + b"x" * (1536 * 1024) + b'"}'
    (env.work / "big.json").write_bytes(body)
    n = len(env.srv.requests)
    r = env.send("--url", env.srv.base + "/big", "--body", "big.json")
    assert r.returncode == 0, r.stderr
    [got] = env.since(n)
    assert got.header("Expect") is None
    assert got.body == body


@settings(max_examples=300, deadline=None)
@given(st.text(st.characters(exclude_categories=())))
def test_parse_header_raises_only_usage_errors(text: str) -> None:
    from qredo_openssl._send import AUTH_HEADERS, parse_header

    try:
        name, value = parse_header(text)
    except UsageError:
        return
    assert name.lower() not in AUTH_HEADERS
    assert "\n" not in value
    assert "\r" not in value


@pytest.mark.parametrize(
    "uri",
    [b"", b"GET\n", b"GET /a extra\n", b"GET /a\nPOST /b\n", b"\xff\xfe /a\n"],
    ids=["empty", "no-url", "three-words", "two-lines", "not-utf8"],
)
def test_bad_request_dir(env: Env, uri: bytes) -> None:
    req = env.work / "req"
    req.mkdir()
    (req / "uri").write_bytes(uri)
    n = len(env.srv.requests)
    r = env.send("--request-dir", str(req))
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr
    assert env.since(n) == []


# --- rotate finish --probe: send with the next key ---------------------------------------------


def test_rotate_probe(env: Env, tls: TLS) -> None:
    start = run_cli("rotate", "start", str(env.dir))
    assert start.returncode == 0, start.stderr
    nxt = env.dir / "next" / "public.pem"
    old_private = (env.dir / "private.pem").read_bytes()
    probe = ["rotate", "finish", "--probe", "/company", "--cacert", str(env.tls.ca), str(env.dir)]
    penv = {"QREDO_API_BASE": "", "TMPDIR": str(env.tmp), "NO_PROXY": "127.0.0.1"}
    # The server still holds the old key: 401, exit 5, nothing changed.
    (env.dir / "api-base").write_text(env.srv.base)
    r = run_cli(*probe, env=penv)
    assert r.returncode == 5, r.stderr
    assert "401" in r.stderr
    assert (env.dir / "private.pem").read_bytes() == old_private
    # After "uploading" the next key: 2xx, finished.
    with QredoServer(tls, nxt, APIKEY, timeout=5.0) as uploaded:
        (env.dir / "api-base").write_text(uploaded.base)
        r = run_cli(*probe, env=penv)
        assert r.returncode == 0, r.stderr
        [got] = uploaded.requests
        assert (got.method, got.target, got.verdict) == ("GET", "/api/v1/p/company", "ok")
    assert (env.dir / "private.pem").read_bytes() != old_private
    assert not (env.dir / "next").exists()
    for p in env.dir.iterdir():  # leave DIR as the fixture expects it
        if p.name not in ("apikey", "private.pem", "public.pem"):
            p.unlink()
