"""Signing a Partner API request and sending it with curl: the bytes sent are the bytes signed.

Each request is signed immediately before curl starts (the timestamp is fresh even in a long
batch), exactly as :meth:`._sign.Signer.sign` signs. The API key comes from ``$QREDO_APIKEY``
(CI secrets) or ``DIR/apikey``; with neither, nothing is sent.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ._apikey import load_apikey, validate_apikey
from ._curl import (
    Curl,
    CurlCommand,
    HttpRequest,
    HttpResponse,
    check_cacert,
    curl_command,
    perform,
)
from ._errors import AnswerError, BadInputError, UsageError
from ._request import build_payload, check_body_allowed, check_url
from ._sign import SignedRequest, Signer, SigningKey
from ._urls import ApiBase, cleartext_to_remote, resolve_url, url_rewrite

if TYPE_CHECKING:
    from ._files import KeyPaths
    from ._pkcs11 import Pkcs11Options

APIKEY_ENV = "QREDO_APIKEY"
AUTH_HEADERS = frozenset({"x-api-key", "x-sign", "x-timestamp", "x-nonce"})
# Headers that would make curl send other bytes than were signed, or frame them differently.
FRAMING_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "expect"})
_TOKEN_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
# Not the lone surrogates that stand for undecodable bytes (a non-UTF-8 argv): they cannot
# be sent as given.
_VALUE_RE = re.compile(r"[\t\x20-\x7e\x80-\ud7ff\ue000-\U0010ffff]*")


def parse_header(text: str) -> tuple[str, str]:
    """``Name: value`` given by the user; usage error for the auth and framing headers."""
    name, sep, value = text.partition(":")
    name, value = name.strip(), value.strip()
    if not sep or not _TOKEN_RE.fullmatch(name):
        msg = f"the header {text!r} is not 'Name: value'"
        raise UsageError(msg)
    if not _VALUE_RE.fullmatch(value):
        msg = f"the header {name}: its value has a line break, a control character or bytes "
        msg += "that are not UTF-8"
        raise UsageError(msg)
    if name.lower() in AUTH_HEADERS:
        msg = f"a header may not set {name.lower()}: the auth headers are made by signing"
        raise UsageError(msg)
    if name.lower() in FRAMING_HEADERS:
        msg = f"a header may not set {name.lower()}: then what is sent is not what is signed"
        raise UsageError(msg)
    return name, value


def resolve_apikey(path: str, environ: Mapping[str, str] | None = None) -> tuple[str, str]:
    """The API key and where it came from: ``$QREDO_APIKEY`` when set, else the file.

    Neither is :class:`BadInputError` (exit 1): a request without it cannot pass.
    """
    environ = os.environ if environ is None else environ
    if environ.get(APIKEY_ENV):
        key = environ[APIKEY_ENV].strip()
        try:
            validate_apikey(key)
        except BadInputError as exc:
            msg = f"${APIKEY_ENV}: {exc}"
            raise BadInputError(msg) from None
        return key, f"${APIKEY_ENV}"
    key_in_file = load_apikey(path)
    if key_in_file is None:
        msg = (f"no API key: {path} does not exist and ${APIKEY_ENV} is not set "
               "(save it with: qredo-openssl apikey); nothing was sent")  # fmt: skip
        raise BadInputError(msg)
    return key_in_file, path


def is_json(body: bytes) -> bool:
    try:
        json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return False
    return True


def content_type(body: bytes) -> str:
    """The Content-Type sent with ``body`` when none is given: JSON only for a JSON body;
    otherwise empty, so curl adds no form type (``application/x-www-form-urlencoded``)."""
    return "application/json" if is_json(body) else ""


@dataclass(frozen=True)
class Explanation:
    """What ``--explain`` shows: the payload's parts and digests, and both commands."""

    stamp_name: str  # "timestamp" or "nonce"
    stamp: str
    url: str
    body_length: int
    body_sha256: str
    payload_sha256: str
    openssl_argv: tuple[str, ...]
    curl: CurlCommand | None


def target_url(url: str, base: ApiBase | None) -> str:
    """A path URL on the API base; :class:`UsageError` (exit 2) for a URL curl would rewrite."""
    url = resolve_url(url, base).url
    rewrite = url_rewrite(url)
    if rewrite is not None:
        msg = f"{url!r} would not be sent as signed: {rewrite}"
        raise UsageError(msg)
    if cleartext_to_remote(url):
        msg = f"{url!r} is http:// to a host that is not loopback: the API key and the signed "
        msg += "request would cross the network in clear text; use https:// (http:// is for "
        msg += "loopback testing only)"
        raise UsageError(msg)
    return url


def sign_for_sending(
    signer: Signer,
    base: ApiBase | None,
    url: str,
    body: bytes | None,
    *,
    method: str | None = None,
    timestamp: str | None = None,
    nonce: str | None = None,
    body_file: str | None = None,
) -> SignedRequest:
    """Sign now what :meth:`Sender.deliver` sends next: an API key is required, a path URL
    goes on ``base``, and a URL curl would rewrite, or a body on a HEAD request, is a
    :class:`UsageError`."""
    check_body_allowed(method, body is not None)
    if signer.apikey is None:
        msg = f"no API key ({signer.apikey_path}); nothing was sent"
        raise BadInputError(msg)
    url = check_url(target_url(url, base))
    return signer.sign(
        url, body if body is not None else b"", method=method, timestamp=timestamp,
        nonce=nonce, has_body=body is not None, body_file=body_file,
    )  # fmt: skip


def signer_for_sending(
    paths: KeyPaths,
    openssl: str | None = None,
    *,
    timeout: float,
    pkcs11: Pkcs11Options | None = None,
    cacert: str | None = None,
) -> Signer:
    """The signer of ``send``: the API key required (:func:`resolve_apikey`), ``cacert``
    checked, then the key. ``openssl`` is the explicit binary (else ``$QREDO_OPENSSL``,
    ``PATH``); its version is read only if needed (a token key's route depends on it)."""
    from ._openssl import detect_openssl

    apikey, source = resolve_apikey(paths.apikey)
    check_cacert(cacert)
    found = detect_openssl(openssl, timeout=timeout, lazy=True)
    return Signer(found, SigningKey.from_paths(paths, found, pkcs11), apikey, source)


def explain_request(
    signer: Signer, signed: SignedRequest, body: bytes, cmd: CurlCommand | None
) -> Explanation:
    """The parts of the signed payload, its digests and the commands, the API key redacted."""
    stamp_name = "timestamp" if signed.timestamp is not None else "nonce"
    stamp = signed.timestamp if signed.timestamp is not None else str(signed.nonce)
    payload = build_payload(signed.url, body, timestamp=signed.timestamp, nonce=signed.nonce)
    openssl = (signer.openssl.path, "dgst", "-sha256", *signer.key.args)
    if cmd is not None:
        redacted = tuple((o, redact(v, signer.apikey)) for o, v in cmd.config)
        cmd = CurlCommand(cmd.argv, redacted)
    return Explanation(
        stamp_name, stamp, signed.url, len(body), hashlib.sha256(body).hexdigest(),
        hashlib.sha256(payload).hexdigest(), openssl, cmd,
    )  # fmt: skip


@dataclass(frozen=True)
class SendResult:
    """A request as signed and sent, and the final response to it."""

    request: SignedRequest
    response: HttpResponse
    received_at: float  # our clock when the answer came (for the skew against ``Date``)

    @property
    def status(self) -> int:
        return self.response.status

    @property
    def exit_code(self) -> int:
        """0 for 2xx/3xx, 5 for 4xx/5xx (and anything else the server invented)."""
        return 0 if 200 <= self.status < 400 else 5

    @property
    def headers(self) -> dict[str, str]:
        """Lower-case names; a repeated header's values joined with ``", "``."""
        out: dict[str, str] = {}
        for name, value in self.response.headers:
            key = name.lower()
            out[key] = f"{out[key]}, {value}" if key in out else value
        return out

    def to_json(self) -> dict[str, Any]:
        """``{"request", "status", "headers", "body"|"body_base64"}`` (docs/contract.md)."""
        stamp = "timestamp" if self.request.timestamp is not None else "nonce"
        req = {"method": self.request.method, "url": self.request.url,
               stamp: self.request.timestamp or self.request.nonce}  # fmt: skip
        doc: dict[str, Any] = {"request": req, "status": self.status, "headers": self.headers}
        body = self.response.body
        ctype = self.headers.get("content-type", "").split(";")[0].strip().lower()
        try:
            textual = body.decode("utf-8")
        except UnicodeDecodeError:
            doc["body_base64"] = base64.b64encode(body).decode("ascii")
            return doc
        if ctype == "application/json" or ctype.endswith("+json"):
            try:
                doc["body"] = json.loads(textual, parse_constant=_not_json)
                return doc
            except (ValueError, RecursionError):
                pass  # the server said JSON and sent something else: show it as it is
        doc["body"] = textual
        return doc


def _not_json(name: str) -> None:
    # NaN and Infinity: Python reads them, JSON does not have them, and --json must stay JSON.
    msg = f"{name} is not JSON"
    raise ValueError(msg)


@dataclass(frozen=True)
class Sender:
    """Signs and sends requests: one signer (with the API key), one curl, fixed options."""

    signer: Signer
    curl: Curl
    timeout: float
    cacert: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    tmpdir: str | None = None
    base: ApiBase | None = None

    def target(self, url: str) -> str:
        return target_url(url, self.base)

    def http_request(self, signed: SignedRequest, body: bytes | None) -> HttpRequest:
        """The headers in order: auth, ``--header``, then Content-Type and an empty Expect."""
        headers = list(signed.headers.items()) + list(self.headers)
        if body is not None:
            if not any(n.lower() == "content-type" for n, _ in self.headers):
                headers.append(("Content-Type", content_type(body)))
            headers.append(("Expect", ""))
        return HttpRequest(signed.method, signed.url, tuple(headers), body)

    def explain(self, signed: SignedRequest, body: bytes, cmd: CurlCommand | None) -> Explanation:
        return explain_request(self.signer, signed, body, cmd)

    def dry_run(
        self, url: str, body: bytes | None, *, method: str | None = None,
        body_file: str | None = None,
    ) -> tuple[SignedRequest, CurlCommand]:  # fmt: skip
        """Sign as :meth:`send` would (no API key needed: nothing is sent) and return the curl
        command it would run, the API key redacted from its config; its private directory
        is named ``$TMPDIR/.qredo-openssl-XXXXXX`` (made only when sending)."""
        check_body_allowed(method, body is not None)
        signed = self.signer.sign(self.target(url), body or b"", method=method,
                                  has_body=body is not None, body_file=body_file)  # fmt: skip
        tmp = self.tmpdir or os.environ.get("TMPDIR") or tempfile.gettempdir()
        work = os.path.join(tmp, ".qredo-openssl-XXXXXX")
        cmd = curl_command(self.curl.path, self.http_request(signed, body), work,
                           timeout=self.timeout, cacert=self.cacert)  # fmt: skip
        config = tuple((o, redact(v, self.signer.apikey)) for o, v in cmd.config)
        return signed, CurlCommand(cmd.argv, config)

    def send(
        self,
        url: str,
        body: bytes | None = None,
        *,
        method: str | None = None,
        timestamp: str | None = None,
        nonce: str | None = None,
        body_file: str | None = None,
        explain: Callable[[Explanation], None] | None = None,
    ) -> SendResult:
        """Sign ``url`` (+ ``body``) now and send it; any HTTP status is a result.

        Raises :class:`NoAnswerError` (exit 6) when no answer came, :class:`CurlError` or
        :class:`OpenSSLError` (exit 3) when a tool fails, :class:`BadInputError` (exit 1).
        """
        signed = sign_for_sending(
            self.signer, self.base, url, body, method=method, timestamp=timestamp, nonce=nonce,
            body_file=body_file,
        )  # fmt: skip
        return self.deliver(signed, body, explain=explain)

    def deliver(
        self,
        signed: SignedRequest,
        body: bytes | None,
        *,
        explain: Callable[[Explanation], None] | None = None,
    ) -> SendResult:
        """Send a request that :func:`sign_for_sending` has just signed, with ``body``."""
        request = self.http_request(signed, body)

        def before(cmd: CurlCommand) -> None:
            if explain is not None:
                explain(self.explain(signed, body or b"", cmd))

        response = perform(
            self.curl, request, timeout=self.timeout, cacert=self.cacert, tmpdir=self.tmpdir,
            before=before,
        )  # fmt: skip
        return SendResult(signed, response, time.time())


def make_probe(
    url: str,
    *,
    base: ApiBase | None,
    curl: str | None = None,
    openssl: str | None = None,
    timeout: float,
    cacert: str | None = None,
) -> Callable[[KeyPaths], None]:
    """A function of a key pair that sends a signed GET of ``url`` with it, as ``send``
    does (``curl``, ``openssl``: the explicit binaries), and returns only on a 2xx answer.

    It raises what sending raises: :class:`AnswerError` (exit 5) for any other answer, 3xx
    included; :class:`NoAnswerError` (6) for none; a missing curl is exit 3. The URL and
    ``cacert`` are checked now, so a form curl would rewrite is a usage error at once.
    """
    from ._curl import detect_curl
    from ._openssl import detect_openssl

    target_url(url, base)
    check_cacert(cacert)

    def probe(paths: KeyPaths) -> None:
        apikey, source = resolve_apikey(paths.apikey)
        key = SigningKey.pem(paths.private)
        signer = Signer(detect_openssl(openssl, timeout=timeout, lazy=True), key, apikey, source)
        found = detect_curl(curl, timeout=timeout)
        sender = Sender(signer, found, timeout, cacert, base=base)
        result = sender.send(url, method="GET")
        if not 200 <= result.status < 300:
            said = result.response.status_line or f"HTTP {result.status}"
            msg = f"the probe GET {result.request.url} with {paths.private} got {said}"
            raise AnswerError(msg)

    return probe


def redact(value: str, secret: str | None) -> str:
    """``value`` with the API key replaced by ``<redacted>``."""
    return value.replace(secret, "<redacted>") if secret else value
