"""The ``send`` command: sign a Partner API request and send it with the system curl."""

from __future__ import annotations

import argparse
import errno
import json
import os
import shlex
import sys
import tempfile
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar, cast

from .._errors import BadInputError, NoAnswerError, UsageError
from .._ui import Output
from ._base import (
    Command,
    error_doc,
    get_openssl,
    jobs_option,
    key_paths,
    pkcs11_config,
    pkcs11_options,
)

if TYPE_CHECKING:
    from .._files import KeyPaths
    from .._openssl import OpenSSL
    from .._send import AuthDiagnosis, Explanation, Sender, SendItem, SendResult
    from .._sign import Signer
    from .._urls import ApiBase

T = TypeVar("T")
EXAMPLES = """\
examples:
  qredo-openssl send --url /company keys
  qredo-openssl send --url /company/$CID/transfer --body transfer.json keys
  qredo-openssl send --request-dir requests/balance --json keys
  qredo-openssl send --batch requests.jsonl -j 4 keys
  QREDO_APIKEY=$SECRET qredo-openssl send --url /company ci-keys
  (sandbox and production use the same API base: one key directory per environment)

exit codes: 0 answered 2xx/3xx, 1 bad input or no API key, 2 usage, 3 curl or OpenSSL missing,
  5 the API answered 4xx/5xx (its body is still printed), 6 no answer (DNS, refused, TLS, timeout)
"""


def api_base_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--api-base", metavar="URL",
        help="base for a path URL such as /company (default: $QREDO_API_BASE, DIR/api-base, "
        "or https://api.qredo.network/api/v1/p)",
    )  # fmt: skip


def send_options(p: argparse.ArgumentParser) -> None:
    """The options ``doctor`` shares with ``send``: which curl, which API base."""
    p.add_argument("--curl", metavar="PATH", help="the curl binary to use ($QREDO_CURL)")
    api_base_option(p)


def send_doctor(args: argparse.Namespace, doc: dict[str, Any]) -> list[str]:
    """``doctor``'s curl and API base: put into ``doc``, returned as text lines."""
    from .._curl import curl_source, detect_curl, require_recent
    from .._errors import QredoOpenSSLError
    from .._urls import api_base

    lines: list[str] = []
    curl_doc: dict[str, Any] = {"source": curl_source(args.curl)}
    try:
        curl = detect_curl(args.curl, timeout=args.timeout, check_version=False)
        curl_doc.update(path=curl.path, version=curl.version.number or None, raw=curl.version.raw)
        lines.append(f"curl        {curl.path}  (from {curl_doc['source']})")
        lines.append(f"curl says   {' '.join(curl.version.raw.split()[:5])}")
        require_recent(curl)
        curl_doc["usable"] = True
    except QredoOpenSSLError as exc:
        curl_doc.update(usable=False, error=error_doc(exc))
        lines.append(f"curl        not usable: {exc} (send needs it; keys do not)")
    doc["curl"] = curl_doc
    try:
        base = api_base(args.api_base, args.dir)
        doc["api_base"] = {"url": base.url, "source": base.source}
        lines.append(f"API base    {base.url}  (from {base.source})")
    except QredoOpenSSLError as exc:
        doc["api_base"] = {"error": error_doc(exc)}
        lines.append(f"API base    not usable: {exc}")
    return lines


def register(command: Command) -> None:
    p = command("send", "sign a Partner API request and send it with curl", cmd_send)
    p.epilog = EXAMPLES
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--url", help="absolute URL, or a path such as /company on the API base")
    p.add_argument("--method", help="HTTP method (default GET, or POST with a body)")
    p.add_argument("--body", metavar="FILE", help="request body file, or - for stdin")
    p.add_argument(
        "--header", action="append", default=[], metavar="'NAME: VALUE'",
        help="an extra request header (repeatable); not the x- auth headers",
    )  # fmt: skip
    p.add_argument("--include", action="store_true", help="status line and headers first")
    p.add_argument("--explain", action="store_true", help="show payload, digests, commands")
    p.add_argument("--dry-run", action="store_true", help="sign and show, send nothing")
    p.add_argument("--cacert", metavar="FILE", help="CA certificates to trust (private CAs)")
    p.add_argument("--batch", metavar="FILE", help="JSON Lines of requests (- for stdin)")
    jobs_option(p, "parallel requests (default 1)")
    p.add_argument("--request-dir", metavar="PATH", help="Qredo Go client layout: uri, body")
    send_options(p)
    pkcs11_options(p)


def cmd_send(args: argparse.Namespace, out: Output) -> int:
    from .._curl import detect_curl
    from .._request import read_body
    from .._send import Sender, sign_for_sending, target_url
    from .._urls import api_base

    _check_usage(args)
    headers = _parse_headers(args.header)
    url, method, body, body_file = args.url, args.method, None, args.body
    if args.request_dir is not None:
        method, url, body, body_file = read_request_dir(args.request_dir)
    elif args.body is not None:
        body = read_body(args.body)
    base = api_base(args.api_base, args.dir)
    if url is not None:
        target_url(url, base)  # a refused form is a usage error before any key is read
    curl_ready = in_background(lambda: detect_curl(args.curl, timeout=args.timeout))
    signer = _signer(args)
    if args.batch is not None or args.dry_run:
        sender = Sender(signer, curl_ready(), args.timeout, args.cacert, headers, base=base)
        if args.batch is not None:
            return _send_batch(args, out, sender)
    assert url is not None
    if url.startswith("/") and not out.json_mode:
        out.info(f"API base {base.url} (from {base.source})")
    if args.dry_run:
        return _dry_run(args, out, sender, url, body, method, body_file)
    # ``curl --version`` runs while OpenSSL signs: one child's time less. The timestamp is
    # taken just before the signature, so the request still starts right after it.
    signed = sign_for_sending(signer, base, url, body, method=method, body_file=body_file)
    sender = Sender(signer, curl_ready(), args.timeout, args.cacert, headers, base=base)
    explain = (lambda e: show_explanation(e, sender.base)) if args.explain else None
    try:
        result = sender.deliver(signed, body, explain=explain)
    except NoAnswerError as exc:
        if exc.curl_exit == 60:  # the certificate chain is not trusted
            hint = f"{exc}; for a private CA, pass --cacert FILE"
            raise NoAnswerError(hint, curl_exit=exc.curl_exit) from None
        raise
    return _show_result(args, out, sender, result)


def _check_usage(args: argparse.Namespace) -> None:
    given = [f"--{o}" for o in ("url", "body", "method") if getattr(args, o) is not None]
    if args.request_dir is not None and given:
        raise UsageError(f"send --request-dir: {', '.join(given)} come from the directory")
    if args.batch is not None and (given or args.request_dir is not None):
        what = ", ".join(given) or "--request-dir"
        raise UsageError(f"send --batch: {what} belong in the batch lines, not the command line")
    if args.batch is not None and (args.include or args.dry_run or args.explain):
        raise UsageError("send --batch writes JSON lines; --include, --dry-run and --explain "
                         "do not apply")  # fmt: skip
    if args.url is None and args.batch is None and args.request_dir is None:
        raise UsageError("send: give --url URL, --request-dir PATH or --batch FILE")


def _parse_headers(given: list[str]) -> tuple[tuple[str, str], ...]:
    from .._send import parse_header

    return tuple(parse_header(h) for h in given)


def read_request_dir(path: str) -> tuple[str, str, bytes | None, str | None]:
    """``PATH/uri`` (``METHOD URL`` on one line) and the optional ``PATH/body``."""
    from .._pem import read_bounded
    from .._request import read_body

    uri_path = os.path.join(path, "uri")
    if not os.path.isdir(path):
        raise BadInputError(f"no request directory at {path}")
    raw = read_bounded(uri_path, what="request uri file")
    try:
        lines = raw.decode("utf-8").strip().splitlines()
    except UnicodeDecodeError:
        raise BadInputError(f"{uri_path} is not UTF-8 text") from None
    words = lines[0].split() if len(lines) == 1 else []
    if len(words) != 2:
        raise BadInputError(f"{uri_path} must hold one line 'METHOD URL'")
    body_path = os.path.join(path, "body")
    if os.path.lexists(body_path):
        return words[0], words[1], read_body(body_path), body_path
    return words[0], words[1], None, None


def _signer(args: argparse.Namespace) -> Signer:
    from .._pkcs11 import has_token_key
    from .._send import resolve_apikey
    from .._sign import Signer, SigningKey

    paths = key_paths(args, args.dir)
    apikey, source = resolve_apikey(paths.apikey)
    if args.cacert is not None and not os.path.isfile(args.cacert):
        raise BadInputError(f"no CA certificate file at {args.cacert}")
    # A token key's route depends on the OpenSSL version; a PEM key signs alike everywhere.
    openssl = get_openssl(args) if has_token_key(paths) else signing_openssl(args)
    key = SigningKey.from_paths(paths, openssl, pkcs11_config(args))
    return Signer(openssl, key, apikey, source)


def in_background(fn: Callable[[], T]) -> Callable[[], T]:
    """Start ``fn`` in a thread now; the function returned waits for its result (or raises
    its exception). Threads, not a pool: ``concurrent.futures`` costs ~15 ms to import."""
    box: list[tuple[bool, Any]] = []

    def run() -> None:
        try:
            box.append((True, fn()))
        except BaseException as exc:  # noqa: BLE001 -- handed to the caller, raised there
            box.append((False, exc))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()

    def result() -> T:
        while thread.is_alive():
            thread.join(0.1)  # wakes for signals (a plain join may not on every Python)
        ok, value = box[0]
        if ok:
            return cast(T, value)
        raise value

    return result


def rotate_probe(args: argparse.Namespace, url: str) -> Callable[[KeyPaths], None]:
    """``rotate finish --probe URL``: a function of the next pair that sends a signed GET of
    ``url`` with it, as ``send`` does, and returns only on a 2xx answer.

    Otherwise it raises ``send``'s errors: :class:`AnswerError` (exit 5) for any other answer,
    3xx included; :class:`NoAnswerError` (6) for none; a missing curl is exit 3. The URL is
    checked now, so a form curl would rewrite is a usage error before anything happens.
    """
    from .._curl import detect_curl
    from .._errors import AnswerError
    from .._send import Sender, resolve_apikey, target_url
    from .._sign import Signer, SigningKey
    from .._urls import api_base

    base = api_base(getattr(args, "api_base", None), args.dir)
    target_url(url, base)
    if args.cacert is not None and not os.path.isfile(args.cacert):
        raise BadInputError(f"no CA certificate file at {args.cacert}")

    def probe(paths: KeyPaths) -> None:
        apikey, source = resolve_apikey(paths.apikey)
        key = SigningKey.pem(paths.private)
        signer = Signer(signing_openssl(args), key, apikey, source)
        curl = detect_curl(getattr(args, "curl", None), timeout=args.timeout)
        sender = Sender(signer, curl, args.timeout, args.cacert, base=base)
        result = sender.send(url, method="GET")
        if not 200 <= result.status < 300:
            said = result.response.status_line or f"HTTP {result.status}"
            msg = f"the probe GET {result.request.url} with {paths.private} got {said}"
            raise AnswerError(msg)

    return probe


def signing_openssl(args: argparse.Namespace) -> OpenSSL:
    """OpenSSL found but not asked its version: ``send`` runs only ``openssl dgst -sign``,
    which every OpenSSL and LibreSSL has alike; one child fewer on every call."""
    from .._openssl import OpenSSL, find_openssl, openssl_source, parse_version

    explicit = getattr(args, "openssl", None)
    path = find_openssl(explicit)
    return OpenSSL(path, parse_version(""), args.timeout, openssl_source(explicit))


def _show_result(
    args: argparse.Namespace, out: Output, sender: Sender, result: SendResult
) -> int:
    from .._send import diagnose_auth

    if out.json_mode:
        out.json(result.to_json())
    else:
        if args.include:
            head = result.response.status_line + "\r\n"
            head += "".join(f"{n}: {v}\r\n" for n, v in result.response.headers) + "\r\n"
            write_bytes(head.encode("latin-1"))
        write_bytes(result.response.body)
    out.info(result.response.status_line or f"HTTP {result.status}")
    public = key_paths(args, args.dir).public
    diagnosis = diagnose_auth(result, public, str(sender.signer.apikey_path))
    if diagnosis is not None:
        for line in diagnosis_lines(diagnosis):
            out.info(line)
    return result.exit_code


def write_bytes(data: bytes) -> None:
    """Raw bytes on stdout (a body is not text), after whatever text is pending."""
    if sys.stdout is None:  # started with stdout closed
        raise OSError(errno.EBADF, "standard output is closed")
    sys.stdout.flush()
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


def diagnosis_lines(d: AuthDiagnosis) -> list[str]:
    """What to compare when Qredo answers 401 errPartnerAuth."""
    lines = ["401 errPartnerAuth" + (f" (reason: {d.reason})" if d.reason else "") + ": check"]
    if d.fingerprint is not None:
        lines.append(f"  public key {d.public_path}: {d.fingerprint} "
                     "(must be the key uploaded in the Qredo Web App)")  # fmt: skip
    else:
        lines.append(f"  public key: {d.fingerprint_error}")
    if d.skew is None:
        lines.append("  clock: the server sent no usable Date header")
    else:
        way = "ahead of" if d.skew > 0 else "behind"
        fix = "; fix the time (NTP)" if abs(d.skew) > 5 else ""
        lines.append(f"  clock: the server's Date ({d.server_date}) is {abs(d.skew):.0f} s "
                     f"{way} this machine's clock{fix}")  # fmt: skip
    key_id = f"key_id {d.key_id}" if d.key_id else "no key_id (not a JSON key)"
    lines.append(f"  API key from {d.apikey_source}: {key_id} (must belong to this public key)")
    return lines


def show_explanation(e: Explanation, base: ApiBase | None) -> None:
    """``--explain``, on stderr whatever ``-q`` says: it was asked for."""
    from .._curl import config_quote

    lines = ["payload = " + e.stamp_name + " + url + body:",
             f"  {e.stamp_name}: {e.stamp}", f"  url: {e.url}"]  # fmt: skip
    if base is not None and e.url.startswith(base.url.rstrip("/")):
        lines.append(f"    (API base {base.url}, from {base.source})")
    lines += [f"  body: {e.body_length} bytes, sha256 {e.body_sha256}",
              f"payload sha256 (Qredo's client prints it as Hash:): {e.payload_sha256}",
              "openssl: " + shlex.join(e.openssl_argv) + " < payload"]  # fmt: skip
    if e.curl is not None:
        lines.append("curl: " + shlex.join(e.curl.argv))
        lines += [f"  config {opt} = {config_quote(value)}" for opt, value in e.curl.config]
    sys.stderr.write("".join(line + "\n" for line in lines))
    sys.stderr.flush()


def _dry_run(
    args: argparse.Namespace, out: Output, sender: Sender, url: str, body: bytes | None,
    method: str | None, body_file: str | None,
) -> int:  # fmt: skip
    from .._curl import config_quote, curl_command
    from .._send import redact

    target = sender.target(url)
    signed = sender.signer.sign(target, body or b"", method=method, has_body=body is not None,
                                body_file=body_file)  # fmt: skip
    request = sender.http_request(signed, body)
    tmp = os.environ.get("TMPDIR") or tempfile.gettempdir()
    work = os.path.join(tmp, ".qredo-openssl-XXXXXX")
    cmd = curl_command(sender.curl.path, request, work, timeout=sender.timeout,
                       cacert=sender.cacert)  # fmt: skip
    config = [(o, redact(v, sender.signer.apikey)) for o, v in cmd.config]
    if args.explain:
        show_explanation(sender.explain(signed, body or b"", cmd), sender.base)
    if out.json_mode:
        req = {"method": signed.method, "url": signed.url, "timestamp": signed.timestamp}
        lines = [f"{o} = {config_quote(v)}" for o, v in config]
        doc: dict[str, Any] = {"request": req, "curl": list(cmd.argv), "config": lines}
        out.json(doc)
    else:
        out.data(shlex.join(cmd.argv))
        out.data("".join(f"{o} = {config_quote(v)}\n" for o, v in config))
    out.info("dry run: nothing was sent")
    return 0


def _send_batch(args: argparse.Namespace, out: Output, sender: Sender) -> int:
    from .._batch import batch_base, read_batch
    from .._send import send_batch

    lines = read_batch(args.batch)

    def show(item: SendItem) -> None:
        if out.json_mode:
            return
        out.data(json.dumps(item.to_json()))
        if item.error is not None:
            out.error(item.error.exit_code, str(item.error))

    items = send_batch(
        sender, lines, jobs=args.jobs or 1, on_item=show, base=batch_base(args.batch)
    )
    worst = max((i.exit_code for i in items), default=0)
    if out.json_mode:
        failed = [i for i in items if i.exit_code != 0]
        doc: dict[str, Any] = {"results": [i.to_json() for i in items], "failed": len(failed)}
        first = next((i.error for i in failed if i.error is not None), None)
        if first is not None:
            doc["error"] = error_doc(first)
        out.json(doc)
    return worst
