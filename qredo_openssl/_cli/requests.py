"""Request commands: sign and verify."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from typing import TYPE_CHECKING

import qredo_openssl as q

from .._errors import UsageError
from .._request import read_body
from .._ui import Output
from ._base import (
    Command,
    api_base_option,
    get_openssl,
    jobs_option,
    key_paths,
    pkcs11_config,
    pkcs11_options,
    with_fix,
)
from ._render import batch_document, show_batch_line

if TYPE_CHECKING:
    from .._batch import BatchItem


def register(command: Command) -> None:
    p = command(
        "sign", "sign a Partner API request (x-sign)", cmd_sign,
        usage="qredo-openssl sign --url URL [--body FILE|-] [--method M] "
        "[--timestamp T | --nonce N]\n"
        "                          [--format headers|curl|json] [options] [DIR]\n"
        "       qredo-openssl sign --batch FILE|- [-j N] [options] [DIR]",
        examples=(
            "qredo-openssl sign --url https://api.qredo.network/api/v1/p/company keys/",
            "qredo-openssl sign --url URL --body body.json --format curl keys/",
            "qredo-openssl sign --url URL keys/ | curl -H @- URL   # API key not in argv",
            "qredo-openssl sign --batch requests.jsonl -j 8 keys/",
        ),
        exits="0 signed; 1 bad input (key, URL, body, a batch line); 3 OpenSSL failed",
    )  # fmt: skip
    p.add_argument("--url", help="the request URL, exactly as it will be sent")
    p.add_argument("--body", metavar="FILE", help="request body file, or - for stdin")
    p.add_argument("--method", help="HTTP method (default GET, or POST with a body)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--timestamp", metavar="T", help="x-timestamp (default: now, Unix seconds)")
    g.add_argument("--nonce", metavar="N", help="x-nonce instead of a timestamp")
    p.add_argument(
        "--format", choices=("headers", "curl", "json"),
        help="headers (default), a curl command line, or JSON (--batch: JSON lines)",
    )  # fmt: skip
    p.add_argument(
        "--batch", metavar="FILE",
        help="JSON Lines of requests (- for stdin); a relative body_file is found in FILE's "
        "folder (with -: the current directory)",
    )  # fmt: skip
    jobs_option(p, "parallel jobs for --batch")
    p.add_argument("--explain", action="store_true", help="show payload, digests, commands")
    api_base_option(p)
    pkcs11_options(p)

    p = command(
        "verify", "verify an x-sign signature as the Qredo server does", cmd_verify,
        examples=("qredo-openssl verify --url URL --body body.json --timestamp T "
                  "--signature SIG keys/",),
        exits="0 valid; 1 invalid, or bad input (the timestamp's age is not checked)",
    )  # fmt: skip
    p.add_argument("--url", required=True, help="the request URL, exactly as it was sent")
    p.add_argument("--body", metavar="FILE", help="request body file, or - for stdin")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--timestamp", metavar="T")
    g.add_argument("--nonce", metavar="N")
    p.add_argument("--signature", required=True, metavar="SIG", help="the x-sign value")
    api_base_option(p)


def header_lines(signed: q.SignedRequest) -> str:
    """The headers as ``name: value`` lines."""
    return "".join(f"{k}: {v}\n" for k, v in signed.headers.items())


def curl_argv(signed: q.SignedRequest, body: bytes = b"") -> list[str]:
    """A curl command sending this request, safe for scripts; the body by reference.

    ``-q`` (no ~/.curlrc), ``--path-as-is`` and ``--globoff`` keep curl from rewriting the
    signed URL; ``--fail-with-body`` makes a 4xx/5xx a failure that still shows the body.
    The body is read by curl from the same file by its absolute path (``--data-binary``
    sends the bytes unchanged, unlike ``-d``), or from standard input (``@-``) when it was
    piped to us: then the same bytes must be piped to curl. Content-Type is JSON only for a
    JSON body; otherwise curl's form type and ``Expect: 100-continue`` are suppressed.
    """
    from .._send import content_type

    argv = ["curl", "-q", "-sS", "--fail-with-body", "--path-as-is", "--globoff"]
    inferred = "POST" if signed.has_body else "GET"
    if signed.method != inferred:
        argv += ["-X", signed.method]
    for name, value in signed.headers.items():
        argv += ["-H", f"{name}: {value}"]
    if signed.has_body:
        ctype = content_type(body)
        argv += ["-H", f"Content-Type: {ctype}" if ctype else "Content-Type:"]
        argv += ["-H", "Expect:"]
        source = signed.body_file
        argv += ["--data-binary", "@" + (os.path.abspath(source) if source not in (None, "-")
                                         else "-")]  # fmt: skip
    argv.append(signed.url)
    return argv


def request_url(args: argparse.Namespace, out: Output, url: str | None) -> str | None:
    """The URL to sign: a path on the API base; warnings for forms a client would rewrite."""
    from .._request import check_url
    from .._urls import api_base, is_path_url, resolve_url, url_rewrite

    if url is None:
        return None
    if is_path_url(url):
        base = api_base(args.api_base, args.dir)
        url = resolve_url(url, base).url
        out.info(f"API base {base.url} (from {base.source})")
    check_url(url)  # what sign and verify always refused (exit 1)
    rewrite = url_rewrite(url)
    if rewrite is not None:
        out.warn(f"a client would not send {url!r} as signed: {rewrite}")
    return url


def check_cli_timestamp(timestamp: str | None, out: Output) -> None:
    """Milliseconds (``Date.now()``) are a usage error; more than 5 min ahead, a warning.

    A past timestamp is not warned about: re-signing a logged request is a known use.
    """
    import time

    if timestamp is None or not timestamp.isdigit():
        return  # the signer says what is wrong with it
    if len(timestamp) >= 12:
        raise UsageError(
            f"--timestamp {timestamp} looks like milliseconds (Date.now()); "
            f"x-timestamp is Unix seconds: {int(timestamp) // 1000}"
        )
    ahead = int(timestamp) - time.time()
    if ahead > 300:
        out.warn(f"--timestamp {timestamp} is {ahead / 60:.0f} min ahead of this machine's "
                 "clock; Qredo refuses requests outside a short window")  # fmt: skip


def _warn_no_apikey(signer: q.Signer, out: Output) -> None:
    if signer.apikey is None:
        path = signer.apikey_path or "apikey"
        save = ["qredo-openssl", "apikey", os.path.dirname(path) or "."]
        if os.path.basename(path) != "apikey":
            save[2:] = ["--apikey", path]
        out.warn(with_fix(f"no API key at {path}: x-api-key left out", save))


def cmd_sign(args: argparse.Namespace, out: Output) -> int:
    if args.batch is not None:
        return _sign_batch(args, out)
    if args.url is None:
        raise UsageError("sign: give --url URL (or --batch FILE)")
    fmt = "json" if out.json_mode else (args.format or "headers")
    check_cli_timestamp(args.timestamp, out)
    url = request_url(args, out, args.url)
    assert url is not None
    body = read_body(args.body) if args.body is not None else b""
    signer = q.Signer.from_paths(
        key_paths(args, args.dir), get_openssl(args, lazy=True), pkcs11=pkcs11_config(args)
    )
    signed = signer.sign(
        url, body, method=args.method, timestamp=args.timestamp, nonce=args.nonce,
        body_file=args.body,
    )  # fmt: skip
    _warn_no_apikey(signer, out)
    if args.explain:
        from .._send import explain_request, redact
        from ._render import show_explanation

        explanation = explain_request(signer, signed, body, None)
        show_explanation(explanation, None)
        line = shlex.join(curl_argv(signed, body))
        sys.stderr.write(f"curl: {redact(line, signer.apikey)}\n")
    if fmt == "json":
        out.json(signed.to_json())
    elif fmt == "curl":
        if args.body == "-":
            out.warn("the body came from standard input: pipe the same bytes to this curl")
        out.data(shlex.join(curl_argv(signed, body)))
    else:
        out.data(header_lines(signed))
    return 0


def _sign_batch(args: argparse.Namespace, out: Output) -> int:
    from .._batch import batch_base, read_batch, sign_batch

    given = [
        opt for opt in ("url", "body", "method", "timestamp", "nonce")
        if getattr(args, opt) is not None
    ]  # fmt: skip
    if given:
        opts = ", ".join(f"--{o}" for o in given)
        raise UsageError(f"sign --batch: {opts} belong in the batch lines, not the command line")
    if args.explain:
        raise UsageError("sign --batch: --explain applies to one request")
    if args.format not in (None, "json"):
        raise UsageError(f"sign --batch writes JSON lines; --format {args.format} does not apply")
    lines = read_batch(args.batch)
    signer = q.Signer.from_paths(  # OpenSSL asked its version first: one error, not one a line
        key_paths(args, args.dir), get_openssl(args), pkcs11=pkcs11_config(args)
    )
    _warn_no_apikey(signer, out)

    def show(item: BatchItem) -> None:
        show_batch_line(out, item)

    items = sign_batch(signer, lines, jobs=args.jobs, on_item=show, base=batch_base(args.batch))
    failed = [i for i in items if i.error is not None]
    if out.json_mode:
        out.json(batch_document(items, failed))
    return 1 if failed else 0  # each failure was reported on its own line


def cmd_verify(args: argparse.Namespace, out: Output) -> int:
    check_cli_timestamp(args.timestamp, out)
    url = request_url(args, out, args.url)
    assert url is not None
    body = read_body(args.body) if args.body is not None else b""
    public = key_paths(args, args.dir).public
    v = q.verify_request(
        public, get_openssl(args, lazy=True), url, args.signature, body,
        timestamp=args.timestamp, nonce=args.nonce,
    )  # fmt: skip
    if out.json_mode:
        out.json({"valid": v.valid, "reason": v.reason})
    else:
        out.data(f"{'valid' if v.valid else 'invalid'}: {v.reason}")
    return 0 if v.valid else 1
