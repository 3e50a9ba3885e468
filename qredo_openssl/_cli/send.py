"""The ``send`` command: sign a Partner API request and send it with the system curl."""

from __future__ import annotations

import argparse
import errno
import shlex
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar, cast

from .._errors import NoAnswerError, UsageError
from .._ui import Output
from ._base import (
    Command,
    jobs_option,
    key_paths,
    pkcs11_config,
    pkcs11_options,
    send_options,
)
from ._render import batch_document, show_batch_line, show_explanation

if TYPE_CHECKING:
    from .._batch import SendItem
    from .._diagnose import AuthDiagnosis
    from .._send import Sender, SendResult
    from .._sign import Signer

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
    from .._request import check_body_allowed, read_body, read_request_dir
    from .._send import Sender, sign_for_sending, target_url
    from .._urls import api_base

    _check_usage(args)
    headers = _parse_headers(args.header)
    url, method, body, body_file = args.url, args.method, None, args.body
    if args.request_dir is not None:
        req = read_request_dir(args.request_dir)
        method, url, body, body_file = req.method, req.url, req.body, req.body_file
        check_body_allowed(method, body is not None)  # before anything is signed or sent
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
    if args.body is not None and args.method is not None:
        from .._request import BODILESS_METHODS

        if args.method.upper() in BODILESS_METHODS:
            msg = f"send: --method {args.method} carries no body; --body does not apply"
            raise UsageError(msg)


def _parse_headers(given: list[str]) -> tuple[tuple[str, str], ...]:
    from .._send import parse_header

    return tuple(parse_header(h) for h in given)


def _signer(args: argparse.Namespace) -> Signer:
    from .._send import signer_for_sending

    return signer_for_sending(
        key_paths(args, args.dir), getattr(args, "openssl", None), timeout=args.timeout,
        pkcs11=pkcs11_config(args), cacert=args.cacert,
    )  # fmt: skip


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


def _show_result(
    args: argparse.Namespace, out: Output, sender: Sender, result: SendResult
) -> int:
    from .._diagnose import diagnose_auth

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


def _dry_run(
    args: argparse.Namespace, out: Output, sender: Sender, url: str, body: bytes | None,
    method: str | None, body_file: str | None,
) -> int:  # fmt: skip
    from .._curl import config_quote

    signed, cmd = sender.dry_run(url, body, method=method, body_file=body_file)
    if args.explain:
        show_explanation(sender.explain(signed, body or b"", cmd), sender.base)
    if out.json_mode:
        req = {"method": signed.method, "url": signed.url, "timestamp": signed.timestamp}
        lines = [f"{o} = {config_quote(v)}" for o, v in cmd.config]
        doc: dict[str, Any] = {"request": req, "curl": list(cmd.argv), "config": lines}
        out.json(doc)
    else:
        out.data(shlex.join(cmd.argv))
        out.data("".join(f"{o} = {config_quote(v)}\n" for o, v in cmd.config))
    out.info("dry run: nothing was sent")
    return 0


def _send_batch(args: argparse.Namespace, out: Output, sender: Sender) -> int:
    from .._batch import batch_base, read_batch, send_batch

    lines = read_batch(args.batch)

    def show(item: SendItem) -> None:
        show_batch_line(out, item)

    items = send_batch(
        sender, lines, jobs=args.jobs or 1, on_item=show, base=batch_base(args.batch)
    )
    if out.json_mode:
        out.json(batch_document(items, [i for i in items if i.exit_code != 0]))
    return max((i.exit_code for i in items), default=0)
