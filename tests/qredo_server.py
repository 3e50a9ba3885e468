"""A loopback HTTPS server that checks Partner API requests the way the Qredo server does.

Why: checking what the CLI signs against the CLI's own signer proves little. This server
rebuilds the signed message from what came over the wire (``Host`` header, the request target
exactly as sent, the raw body bytes) and verifies it with ``cryptography``, the independent
oracle. It speaks real TLS from a throwaway CA, so clients are tested with real certificate
checks (``--cacert``), and it records every request so tests can assert on bytes.

Only the stdlib and ``cryptography``; it binds 127.0.0.1 only; every wait is bounded.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import ipaddress
import json
import os
import ssl
import string
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from socketserver import TCPServer
from typing import Any, NamedTuple, cast

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

HOST = "127.0.0.1"
_B64URL = frozenset(string.ascii_letters + string.digits + "-_")  # URL-safe, no "=" padding
_JSON = ("Content-Type", "application/json")
_EC = ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class TLS:
    """PEM files for one test run; ``ca`` is what a client passes as ``--cacert``."""

    ca: Path
    cert: Path
    key: Path
    other_ca: Path  # an unrelated CA: trusting it instead of ``ca`` must fail (curl exit 60)


class Canned(NamedTuple):
    """A fixed answer for one path (query string ignored), given only after auth passed."""

    status: int
    headers: Sequence[tuple[str, str]] = ()  # repeats allowed, e.g. two Set-Cookie
    body: bytes = b""
    delay: float = 0.0  # seconds to wait before answering; cut short when the server stops


Route = tuple[int, Sequence[tuple[str, str]], bytes, float]  # a Canned or a plain 4-tuple


class Received(NamedTuple):
    """One request as it arrived; ``verdict`` is "ok", an auth reason, or why it was refused."""

    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes
    verdict: str

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (any case), or None."""
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)


def _cert(subject: str, key: _EC, issuer: str, signer: _EC, *extra: x509.ExtensionType) -> bytes:
    """A PEM certificate with what Python 3.13's strict X.509 checks want (SKI, key usage)."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca = subject == issuer
    usage = x509.KeyUsage(not ca, False, False, False, False, ca, ca, False, False)  # sign: CA
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    for extension in extra:
        builder = builder.add_extension(extension, critical=False)
    return builder.sign(signer, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def make_tls_material(directory: str | os.PathLike[str]) -> TLS:
    """Write ca.pem, server.pem + server.key (127.0.0.1 and localhost) and other-ca.pem.

    EC P-256 keys: made in microseconds (RSA takes long), and every TLS stack accepts them.
    """
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    tls = TLS(d / "ca.pem", d / "server.pem", d / "server.key", d / "other-ca.pem")
    ca, other, key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    tls.ca.write_bytes(_cert("Qredo test CA", ca, "Qredo test CA", ca))
    tls.other_ca.write_bytes(_cert("Unrelated test CA", other, "Unrelated test CA", other))
    leaf = [
        x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(HOST)),
                                     x509.DNSName("localhost")]),
        x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
        x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.public_key()),
    ]  # fmt: skip
    tls.cert.write_bytes(_cert("localhost", key, "Qredo test CA", ca, *leaf))
    pkcs8, none = serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    tls.key.write_bytes(key.private_bytes(serialization.Encoding.PEM, pkcs8, none))
    tls.key.chmod(0o600)
    return tls


def _verify(public: rsa.RSAPublicKey | None, message: bytes, x_sign: str) -> bool:
    """x-sign as Qredo checks it: strict URL-safe Base64 without padding, PKCS#1 v1.5 SHA-256."""
    if public is None or not set(x_sign) <= _B64URL:
        return False
    try:
        sig = base64.urlsafe_b64decode(x_sign + "=" * (-len(x_sign) % 4))
        public.verify(sig, message, padding.PKCS1v15(), hashes.SHA256())
    except (InvalidSignature, ValueError):
        return False
    return True


def _digits(text: str) -> bool:
    return text.isascii() and text.isdigit()  # isdigit() alone accepts "²" and other scripts


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive and ``Expect: 100-continue``, as real servers
    server_version = "QredoTest/1"
    disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms stall
    server: QredoServer

    def setup(self) -> None:
        """TLS handshake here, in the request's own thread with a timeout, not in accept()."""
        conn = cast(ssl.SSLSocket, self.request)
        conn.settimeout(self.server.timeout)  # kept by StreamRequestHandler (its timeout: None)
        conn.do_handshake()
        super().setup()

    def date_time_string(self, timestamp: float | None = None) -> str:
        """The ``Date`` header, from the server's (possibly skewed) clock."""
        return formatdate(self.server.now() if timestamp is None else timestamp, usegmt=True)

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: tests read ``.requests`` and ``.errors`` instead of stderr."""

    def _reply(self, status: int, headers: Sequence[tuple[str, str]], body: bytes) -> None:
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        if not any(name.lower() == "content-length" for name, _ in headers):
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _refuse(self, status: int, verdict: str) -> None:
        """Answer and close; drain the unread body (1 s at most) so closing does not reset it."""
        self.server._keep(Received(self.command, self.path, self.headers.items(), b"", verdict))
        self._reply(status, [("Connection", "close")], f"{verdict}\n".encode())
        self.wfile.flush()
        deadline = time.monotonic() + 1.0
        try:
            self.connection.settimeout(0.5)
            while time.monotonic() < deadline and self.connection.recv(65536):
                pass
        except OSError:
            pass

    def _auth(self, body: bytes) -> str:
        """Why Qredo would refuse this request ("apikey", "timestamp", "signature"), or "ok"."""
        srv, headers = self.server, self.headers
        if headers.get("x-api-key") != srv.api_key:
            return "apikey"
        stamp = headers.get("x-timestamp")
        if stamp is None:
            stamp = headers.get("x-nonce")  # a nonce stands in for the time: no freshness check
            if not stamp:
                return "timestamp"
        elif not _digits(stamp) or abs(int(stamp) - srv.now()) > srv.window:
            return "timestamp"
        url = "https://" + headers.get("Host", "") + self.path  # the target exactly as sent
        message = (stamp + url).encode("latin-1") + body  # http.server decoded it as latin-1
        return "ok" if _verify(srv.public_key, message, headers.get("x-sign", "")) else "signature"

    def _handle(self) -> None:
        srv, length = self.server, self.headers.get("Content-Length", "0")
        if not srv._admit():
            return self._refuse(503, "limit")
        if "Transfer-Encoding" in self.headers:  # curl sends Content-Length for a file body
            return self._refuse(411, "chunked")
        if not _digits(length) or int(length) > srv.max_body:
            return self._refuse(413 if _digits(length) else 400, "body-length")
        body = self.rfile.read(int(length))
        verdict = "short-body" if len(body) < int(length) else self._auth(body)
        srv._keep(Received(self.command, self.path, self.headers.items(), body, verdict))
        route = srv.routes.get(self.path.split("?", 1)[0])
        if verdict == "short-body" or (verdict == "ok" and route and srv._stopping.wait(route[3])):
            self.close_connection = True  # the client went away, or the server stopped meanwhile
        elif verdict != "ok":
            error = {"code": 401, "msg": "errPartnerAuth", "detail": {"reason": verdict}}
            self._reply(401, [_JSON], json.dumps(error, separators=(",", ":")).encode())
        elif route:
            self._reply(route[0], route[1], route[2])
        else:
            echo = {"method": self.command, "target": self.path,
                    "body_sha256": hashlib.sha256(body).hexdigest(), "body_len": len(body),
                    "content_type": self.headers.get("Content-Type"),
                    "expect": self.headers.get("Expect")}  # fmt: skip
            self._reply(200, [_JSON], json.dumps(echo).encode())
        return None

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _handle


class QredoServer(ThreadingHTTPServer):
    """HTTPS on 127.0.0.1 that authenticates every request as Qredo's Partner API does.

    ``public_key`` is "the key uploaded to the Web App": PEM bytes or a PEM path (None: nothing
    uploaded, so every signature fails); swap it with :meth:`upload`. ``window`` is how far
    x-timestamp may be from the server's clock, which runs ``clock_offset`` seconds from ours.
    It binds at once (so ``url`` is known); ``with`` serves in a daemon thread, then stops.
    """

    def __init__(
        self,
        tls: TLS,
        public_key: bytes | str | os.PathLike[str] | None,
        api_key: str,
        *,
        window: float = 30.0,
        clock_offset: float = 0.0,
        routes: Mapping[str, Route] | None = None,
        max_body: int = 16 << 20,
        max_requests: int = 1000,
        timeout: float = 10.0,
    ) -> None:
        self.tls, self.api_key, self.window, self.clock_offset = tls, api_key, window, clock_offset
        self.routes: dict[str, Route] = dict(routes or {})
        self.max_body, self.max_requests, self.timeout = max_body, max_requests, timeout
        self.public_key: rsa.RSAPublicKey | None = None
        if public_key is not None:
            self.upload(public_key)
        self._lock, self._stopping, self._served = threading.Lock(), threading.Event(), 0
        self._requests: list[Received] = []
        self._errors: list[str] = []
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(tls.cert, tls.key)
        super().__init__((HOST, 0), _Handler)
        self.url = f"https://{HOST}:{self.server_port}"
        self.base = self.url + "/api/v1/p"
        self._thread = threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True)

    def upload(self, public_key: bytes | str | os.PathLike[str]) -> None:
        """Replace the accepted RSA public key (PEM bytes or text, or a path to a PEM file)."""
        if isinstance(public_key, str) and public_key.startswith("-----BEGIN"):
            public_key = public_key.encode()
        pem = public_key if isinstance(public_key, bytes) else Path(public_key).read_bytes()
        key = serialization.load_pem_public_key(pem)
        if not isinstance(key, rsa.RSAPublicKey):
            raise TypeError(f"Qredo wants an RSA public key, not {type(key).__name__}")
        self.public_key = key

    def now(self) -> float:
        """The server's clock: ours plus ``clock_offset``."""
        return time.time() + self.clock_offset

    def __enter__(self) -> QredoServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        """Stop accepting, wake delayed answers, close the socket, join the serving thread."""
        self._stopping.set()
        if self._thread.is_alive():
            self.shutdown()  # would wait forever if serve_forever() never ran
        self.server_close()
        self._thread.join(self.timeout)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    @property
    def requests(self) -> list[Received]:
        """A snapshot of the requests received, in order (refused ones too; memory is capped)."""
        with self._lock:
            return list(self._requests)

    @property
    def errors(self) -> list[str]:
        """Connections that failed: TLS handshakes the client refused, dropped sockets."""
        with self._lock:
            return list(self._errors)

    def server_bind(self) -> None:
        TCPServer.server_bind(self)  # skips HTTPServer's getfqdn(): a reverse DNS lookup
        self.server_name, self.server_port = HOST, self.server_address[1]

    def get_request(self) -> tuple[Any, Any]:
        """Wrap in TLS without the handshake: a silent client must not block accept()."""
        sock, addr = self.socket.accept()
        return self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), addr

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Keep stderr quiet; failed handshakes and dropped clients land in ``.errors``."""
        exc = sys.exc_info()[1]
        self._keep(f"{client_address}: {type(exc).__name__}: {exc}")

    def _admit(self) -> bool:
        with self._lock:
            self._served += 1
            return self._served <= self.max_requests

    def _keep(self, item: Received | str) -> None:
        with self._lock:
            if isinstance(item, str) and len(self._errors) < self.max_requests:
                self._errors.append(item)
            elif isinstance(item, Received) and len(self._requests) < self.max_requests + 100:
                self._requests.append(item)  # past the cap too, but memory stays bounded


def main(argv: Sequence[str] | None = None) -> int:
    """``python tests/qredo_server.py PUBLIC_PEM APIKEY DIR``: serve until stdin closes.

    For scripts/bench: TLS material goes into DIR; prints the API base and the CA path, one a
    line, once listening. No request limit to speak of; still 127.0.0.1 only.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 3:
        print("usage: qredo_server.py PUBLIC_PEM APIKEY DIR", file=sys.stderr)
        return 2
    public, api_key, directory = args
    tls = make_tls_material(directory)
    with QredoServer(tls, public, api_key, max_requests=1_000_000) as srv:
        print(srv.base, tls.ca, sep="\n", flush=True)
        sys.stdin.read()  # until the parent closes it (or dies)
    return 0


if __name__ == "__main__":
    sys.exit(main())
