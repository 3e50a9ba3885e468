"""Tests of the loopback Qredo server itself, with ``cryptography`` as the reference client.

Requests go through ``http.client`` over TLS trusting only ``ca.pem``, and through the system
curl with ``--cacert``, so the server is shown to accept exactly what Qredo accepts.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from email.message import Message
from email.utils import parsedate_to_datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from qredo_server import TLS, Canned, QredoServer, make_tls_material

CURL = Path("/usr/bin/curl")
needs_curl = pytest.mark.skipif(not CURL.exists(), reason="no /usr/bin/curl")
APIKEY = "eyJrZXlfaWQiOiJ0ZXN0LW9ubHkifQ"  # fake, test only
BINARY = bytes(range(256)) + b"\r\n\xff\xfe\x00caf\xc3\xa9"
ROUTES = {
    "/api/v1/p/boom": Canned(500, [("Content-Type", "application/json")], b'{"code":500}'),
    "/api/v1/p/blob": Canned(200, [("Content-Type", "application/octet-stream")], b"\xff\x80"),
    "/api/v1/p/moved": Canned(302, [("Location", "/api/v1/p/company")]),
    "/api/v1/p/slow": Canned(200, [], b"late", delay=3.0),
    "/api/v1/p/cookies": (200, [("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")], b"", 0.0),
}
Keys = list[rsa.RSAPrivateKey]


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TLS:
    return make_tls_material(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def keys() -> Keys:
    """Two RSA keys: [0] is the one uploaded to the server, [1] is someone else's."""
    return [rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(2)]


def public_pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    return key.public_key().public_bytes(serialization.Encoding.PEM, spki)


@pytest.fixture
def srv(tls: TLS, keys: Keys) -> Iterator[QredoServer]:
    with QredoServer(tls, public_pem(keys[0]), APIKEY, routes=ROUTES) as server:
        yield server


def signed(
    key: rsa.RSAPrivateKey,
    url: str,
    body: bytes = b"",
    *,
    stamp: str | None = None,
    nonce: str | None = None,
    apikey: str = APIKEY,
) -> dict[str, str]:
    """Qredo's headers as its reference client makes them: x-timestamp, or x-nonce if given."""
    value = nonce if nonce is not None else stamp or str(int(time.time()))
    sig = key.sign(value.encode() + url.encode() + body, padding.PKCS1v15(), hashes.SHA256())
    return {
        "x-api-key": apikey,
        "x-nonce" if nonce is not None else "x-timestamp": value,
        "x-sign": base64.urlsafe_b64encode(sig).rstrip(b"=").decode(),
    }


def send(
    srv: QredoServer,
    method: str,
    target: str,
    headers: dict[str, str],
    body: bytes | None = None,
    *,
    cafile: Path | None = None,
    timeout: float = 10,
) -> tuple[int, Message, bytes]:
    """One request over TLS trusting only ``cafile`` (default: the server's own CA)."""
    context = ssl.create_default_context(cafile=str(cafile or srv.tls.ca))
    conn = http.client.HTTPSConnection("127.0.0.1", srv.server_port, timeout=timeout,
                                       context=context)  # fmt: skip
    try:
        conn.request(method, target, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.msg, resp.read()
    finally:
        conn.close()


def get(srv: QredoServer, key: rsa.RSAPrivateKey, path: str) -> tuple[int, Message, bytes]:
    """A signed GET of ``srv.base + path``."""
    return send(srv, "GET", "/api/v1/p" + path, signed(key, srv.base + path))


def curl(ca: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CURL), "-sS", "--noproxy", "*", "--max-time", "10", "--cacert", str(ca), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def curl_headers(headers: dict[str, str]) -> list[str]:
    return [arg for name, value in headers.items() for arg in ("-H", f"{name}: {value}")]


def server_time(headers: Message) -> float:
    return parsedate_to_datetime(headers["Date"]).timestamp()


# --- TLS material ------------------------------------------------------------------------------


def test_tls_material(tls: TLS) -> None:
    ca = x509.load_pem_x509_certificate(tls.ca.read_bytes())
    other = x509.load_pem_x509_certificate(tls.other_ca.read_bytes())
    leaf = x509.load_pem_x509_certificate(tls.cert.read_bytes())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert other.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert other.subject != ca.subject
    assert other.public_key() != ca.public_key()
    assert leaf.issuer == ca.subject
    ca_key = ca.public_key()
    assert isinstance(ca_key, ec.EllipticCurvePublicKey)
    ca_key.verify(leaf.signature, leaf.tbs_certificate_bytes, ec.ECDSA(hashes.SHA256()))
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    key = serialization.load_pem_private_key(tls.key.read_bytes(), password=None)
    assert key.public_key() == leaf.public_key()
    assert tls.key.stat().st_mode & 0o077 == 0


# --- accepted requests -------------------------------------------------------------------------


def test_signed_get_passes(srv: QredoServer, keys: Keys) -> None:
    target = "/api/v1/p/company?ref=a%20b&x=%2F"  # signed as sent, never decoded
    status, headers, body = send(srv, "GET", target, signed(keys[0], srv.url + target))
    assert status == 200, body
    assert headers["Content-Type"] == "application/json"
    assert abs(server_time(headers) - time.time()) < 5
    assert json.loads(body) == {
        "method": "GET",
        "target": target,
        "body_sha256": hashlib.sha256(b"").hexdigest(),
        "body_len": 0,
        "content_type": None,
        "expect": None,
    }
    (seen,) = srv.requests
    assert (seen.method, seen.target, seen.body, seen.verdict) == ("GET", target, b"", "ok")
    assert seen.header("X-API-KEY") == APIKEY
    assert seen.header("host") == f"127.0.0.1:{srv.server_port}"


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
def test_signed_body_passes_byte_exact(srv: QredoServer, keys: Keys, method: str) -> None:
    headers = {**signed(keys[0], srv.base + "/a/b", BINARY), "Content-Type": "application/json"}
    status, _, body = send(srv, method, "/api/v1/p/a/b", headers, BINARY)
    assert status == 200, body
    echo = json.loads(body)
    assert (echo["method"], echo["body_len"]) == (method, len(BINARY))
    assert echo["body_sha256"] == hashlib.sha256(BINARY).hexdigest()
    assert echo["content_type"] == "application/json"
    assert srv.requests[-1].body == BINARY


def test_nonce_accepted_without_freshness(srv: QredoServer, keys: Keys) -> None:
    url = srv.base + "/company"
    for nonce in ["abc-123", "0", "1"]:  # as timestamps, "0" and "1" would be stale
        status, _, body = send(srv, "GET", "/api/v1/p/company", signed(keys[0], url, nonce=nonce))
        assert status == 200, body


def test_expect_100_continue_is_recorded(srv: QredoServer, keys: Keys) -> None:
    headers = {**signed(keys[0], srv.base + "/x", b"{}"), "Expect": "100-continue"}
    status, _, body = send(srv, "POST", "/api/v1/p/x", headers, b"{}")
    assert status == 200
    assert json.loads(body)["expect"] == "100-continue"
    assert srv.requests[-1].header("Expect") == "100-continue"


# --- refused requests --------------------------------------------------------------------------


def _without(headers: dict[str, str], name: str) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k != name}


def _stamp(delta: int) -> str:
    return str(int(time.time()) + delta)


Headers = Callable[[rsa.RSAPrivateKey, str], dict[str, str]]
REFUSED: dict[str, tuple[Headers, str]] = {
    "body-not-signed": (lambda k, u: signed(k, u, b"other body"), "signature"),
    "other-url": (lambda k, u: signed(k, u + "?x=1"), "signature"),
    "http-url": (lambda k, u: signed(k, u.replace("https:", "http:")), "signature"),
    "padded": (lambda k, u: {**signed(k, u), "x-sign": signed(k, u)["x-sign"] + "="}, "signature"),
    "empty-sign": (lambda k, u: {**signed(k, u), "x-sign": ""}, "signature"),
    "no-sign": (lambda k, u: _without(signed(k, u), "x-sign"), "signature"),
    "apikey": (lambda k, u: signed(k, u, apikey="wrong"), "apikey"),
    "no-apikey": (lambda k, u: _without(signed(k, u), "x-api-key"), "apikey"),
    "stale": (lambda k, u: signed(k, u, stamp=_stamp(-31)), "timestamp"),
    "future": (lambda k, u: signed(k, u, stamp=_stamp(31)), "timestamp"),
    "milliseconds": (lambda k, u: signed(k, u, stamp=_stamp(0) + "000"), "timestamp"),
    "not-digits": (lambda k, u: signed(k, u, stamp="+" + _stamp(0)), "timestamp"),
    "no-timestamp": (lambda k, u: _without(signed(k, u), "x-timestamp"), "timestamp"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_refused_with_reason(srv: QredoServer, keys: Keys, case: str) -> None:
    make, reason = REFUSED[case]
    status, headers, body = send(srv, "POST", "/api/v1/p/c", make(keys[0], srv.base + "/c"), b"")
    assert status == 401
    assert headers["Content-Type"] == "application/json"
    assert abs(server_time(headers) - time.time()) < 5
    expected = {"code": 401, "msg": "errPartnerAuth", "detail": {"reason": reason}}
    assert body == json.dumps(expected, separators=(",", ":")).encode()
    assert srv.requests[-1].verdict == reason


def test_window_edges(srv: QredoServer, keys: Keys) -> None:
    url = srv.base + "/company"
    for delta, expected in [(-25, 200), (25, 200), (-40, 401), (40, 401)]:
        headers = signed(keys[0], url, stamp=_stamp(delta))
        assert send(srv, "GET", "/api/v1/p/company", headers)[0] == expected, delta


def test_clock_offset_skews_window_and_date(srv: QredoServer, keys: Keys) -> None:
    srv.clock_offset = 3600
    status, headers, _ = get(srv, keys[0], "/company")
    assert status == 401
    assert abs(server_time(headers) - (time.time() + 3600)) < 5
    later = signed(keys[0], srv.base + "/company", stamp=_stamp(3600))
    assert send(srv, "GET", "/api/v1/p/company", later)[0] == 200


def test_upload_swaps_the_key(srv: QredoServer, keys: Keys, tmp_path: Path) -> None:
    assert get(srv, keys[1], "/company")[0] == 401
    assert srv.requests[-1].verdict == "signature"
    (tmp_path / "new.pem").write_bytes(public_pem(keys[1]))
    srv.upload(tmp_path / "new.pem")
    assert get(srv, keys[1], "/company")[0] == 200
    assert get(srv, keys[0], "/company")[0] == 401
    srv.upload(public_pem(keys[0]).decode())
    assert get(srv, keys[1], "/company")[0] == 401
    assert get(srv, keys[0], "/company")[0] == 200
    with pytest.raises(TypeError, match="RSA public key"):
        srv.upload(public_pem(ec.generate_private_key(ec.SECP256R1())))


def test_no_key_uploaded_refuses_all(tls: TLS, keys: Keys) -> None:
    with QredoServer(tls, None, APIKEY) as srv:
        status, _, body = get(srv, keys[0], "/company")
    assert (status, json.loads(body)["detail"]) == (401, {"reason": "signature"})


# --- canned responses --------------------------------------------------------------------------


def test_canned_routes(srv: QredoServer, keys: Keys) -> None:
    status, headers, body = get(srv, keys[0], "/boom")
    assert (status, body) == (500, b'{"code":500}')
    assert headers["Date"]
    status, headers, body = get(srv, keys[0], "/blob?x=1")  # the query string does not matter
    assert (status, headers["Content-Type"], body) == (200, "application/octet-stream", b"\xff\x80")
    status, headers, _ = get(srv, keys[0], "/moved")
    assert (status, headers["Location"]) == (302, "/api/v1/p/company")
    status, headers, _ = get(srv, keys[0], "/cookies")
    assert headers.get_all("Set-Cookie") == ["a=1", "b=2"]


def test_canned_only_after_auth(srv: QredoServer, keys: Keys) -> None:
    assert get(srv, keys[1], "/boom")[0] == 401
    start = time.monotonic()
    assert get(srv, keys[1], "/slow")[0] == 401  # and without the delay
    assert time.monotonic() - start < 2


def test_slow_route_times_out_and_stop_is_prompt(tls: TLS, keys: Keys) -> None:
    with QredoServer(tls, public_pem(keys[0]), APIKEY, routes=ROUTES) as srv:
        headers = signed(keys[0], srv.base + "/slow")
        with pytest.raises((socket.timeout, TimeoutError)):
            send(srv, "GET", "/api/v1/p/slow", headers, timeout=0.3)
        start = time.monotonic()
    assert time.monotonic() - start < 2
    assert not srv.running


# --- limits ------------------------------------------------------------------------------------


def test_limits(tls: TLS, keys: Keys) -> None:
    with QredoServer(tls, public_pem(keys[0]), APIKEY, max_body=16, max_requests=4) as srv:
        url = srv.base + "/x"
        context = ssl.create_default_context(cafile=str(tls.ca))
        conn = http.client.HTTPSConnection("127.0.0.1", srv.server_port, context=context)
        conn.request("POST", "/api/v1/p/x", iter([b"abc"]), signed(keys[0], url, b"abc"),
                     encode_chunked=True)  # fmt: skip
        assert conn.getresponse().status == 411
        conn.close()
        big, ok = b"x" * 17, b"x" * 16
        assert send(srv, "POST", "/api/v1/p/x", signed(keys[0], url, big), big)[0] == 413
        assert send(srv, "POST", "/api/v1/p/x", signed(keys[0], url, ok), ok)[0] == 200
        assert get(srv, keys[0], "/x")[0] == 200
        assert get(srv, keys[0], "/x")[0] == 503
    assert [r.verdict for r in srv.requests] == ["chunked", "body-length", "ok", "ok", "limit"]


# --- curl --------------------------------------------------------------------------------------


@needs_curl
def test_curl_post_file_body(srv: QredoServer, tls: TLS, keys: Keys, tmp_path: Path) -> None:
    (tmp_path / "body.bin").write_bytes(BINARY)
    url = srv.base + "/company"
    headers = curl_headers({**signed(keys[0], url, BINARY), "Content-Type": "application/json"})
    r = curl(tls.ca, "-X", "POST", "--data-binary", "@body.bin", "-o", "out",
             "-w", "%{http_code}", *headers, url, cwd=tmp_path)  # fmt: skip
    assert (r.returncode, r.stdout) == (0, "200"), r.stderr
    echo = json.loads((tmp_path / "out").read_bytes())
    assert echo["body_sha256"] == hashlib.sha256(BINARY).hexdigest()
    seen = srv.requests[-1]
    assert seen.body == BINARY
    assert seen.header("Content-Length") == str(len(BINARY))
    assert seen.header("Expect") is None
    assert seen.header("Transfer-Encoding") is None


@needs_curl
def test_curl_by_name_and_refusal(srv: QredoServer, tls: TLS, keys: Keys) -> None:
    url = f"https://localhost:{srv.server_port}/api/v1/p/company"  # the DNS name in the cert
    resolve = f"localhost:{srv.server_port}:127.0.0.1"
    good = curl_headers(signed(keys[0], url))
    r = curl(tls.ca, "--resolve", resolve, "-o", "/dev/null", "-w", "%{http_code}", *good, url)
    assert (r.returncode, r.stdout) == (0, "200"), r.stderr
    bad = curl_headers(signed(keys[1], url))
    r = curl(tls.ca, "--resolve", resolve, "-i", *bad, url)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("HTTP/1.1 401")
    assert "\ndate: " in r.stdout.lower()
    assert r.stdout.endswith('{"code":401,"msg":"errPartnerAuth","detail":{"reason":"signature"}}')


@needs_curl
def test_untrusted_ca_fails(srv: QredoServer, tls: TLS, keys: Keys) -> None:
    url = srv.base + "/company"
    r = curl(tls.other_ca, *curl_headers(signed(keys[0], url)), url)
    assert r.returncode == 60, r.stderr
    with pytest.raises(ssl.SSLCertVerificationError):
        send(srv, "GET", "/api/v1/p/company", signed(keys[0], url), cafile=tls.other_ca)
    deadline = time.monotonic() + 5
    while len(srv.errors) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert srv.requests == []
    assert len(srv.errors) == 2, srv.errors
    assert all("SSL" in error for error in srv.errors), srv.errors


# --- binding and stopping ----------------------------------------------------------------------


def test_binds_only_loopback(srv: QredoServer) -> None:
    assert srv.server_address == ("127.0.0.1", srv.server_port)
    assert srv.url == f"https://127.0.0.1:{srv.server_port}"
    assert srv.base == srv.url + "/api/v1/p"
    if sys.platform.startswith("linux"):  # all of 127/8 is loopback there: 127.0.0.2 must fail
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.2", srv.server_port), timeout=5).close()


def test_stops_cleanly(tls: TLS, keys: Keys) -> None:
    srv = QredoServer(tls, public_pem(keys[0]), APIKEY)
    with srv:
        assert srv.running
        idle = socket.create_connection(("127.0.0.1", srv.server_port), timeout=5)  # no TLS
        assert get(srv, keys[0], "/x")[0] == 200
        start = time.monotonic()
    assert time.monotonic() - start < 2
    idle.close()
    assert not srv.running
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", srv.server_port), timeout=5).close()
