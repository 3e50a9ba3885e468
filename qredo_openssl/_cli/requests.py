"""Request commands: sign and verify."""

from __future__ import annotations

import argparse
import json
import shlex
from typing import TYPE_CHECKING, Any

import qredo_openssl as q

from .._errors import UsageError
from .._request import read_body
from .._ui import Output
from ._base import Command, error_doc, get_openssl, key_paths, pkcs11_config, pkcs11_options

if TYPE_CHECKING:
    from .._batch import BatchItem


def register(command: Command) -> None:
    p = command("sign", "sign a Partner API request (x-sign)", cmd_sign)
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
    p.add_argument("--batch", metavar="FILE", help="JSON Lines of requests (- for stdin)")
    p.add_argument("-j", "--jobs", type=int, metavar="N", help="parallel jobs for --batch")
    pkcs11_options(p)

    p = command("verify", "verify an x-sign signature as the Qredo server does", cmd_verify)
    p.add_argument("--url", required=True, help="the request URL, exactly as it was sent")
    p.add_argument("--body", metavar="FILE", help="request body file, or - for stdin")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--timestamp", metavar="T")
    g.add_argument("--nonce", metavar="N")
    p.add_argument("--signature", required=True, metavar="SIG", help="the x-sign value")


def header_lines(signed: q.SignedRequest) -> str:
    """The headers as ``name: value`` lines."""
    return "".join(f"{k}: {v}\n" for k, v in signed.headers.items())


def curl_argv(signed: q.SignedRequest) -> list[str]:
    """A curl command sending this request; the body by reference, never inline.

    The body is read by curl from the same file (``--data-binary @FILE`` sends the bytes
    unchanged, unlike ``-d``), or from standard input (``@-``) when it was piped to us:
    then the same bytes must be piped to curl.
    """
    argv = ["curl"]
    inferred = "POST" if signed.has_body else "GET"
    if signed.method != inferred:
        argv += ["-X", signed.method]
    for name, value in signed.headers.items():
        argv += ["-H", f"{name}: {value}"]
    if signed.has_body:
        argv += ["-H", "Content-Type: application/json"]
        argv += ["--data-binary", "@" + (signed.body_file or "-")]
    argv.append(signed.url)
    return argv


def _warn_no_apikey(signer: q.Signer, out: Output) -> None:
    if signer.apikey is None:
        out.warn(f"no API key at {signer.apikey_path}: x-api-key left out (save it with: "
                 "qredo-openssl apikey)")  # fmt: skip


def cmd_sign(args: argparse.Namespace, out: Output) -> int:
    if args.batch is not None:
        return _sign_batch(args, out)
    if args.url is None:
        raise UsageError("sign: give --url URL (or --batch FILE)")
    fmt = "json" if out.json_mode else (args.format or "headers")
    body = read_body(args.body) if args.body is not None else b""
    signer = q.Signer.from_paths(
        key_paths(args, args.dir), get_openssl(args), pkcs11=pkcs11_config(args)
    )
    signed = signer.sign(
        args.url, body, method=args.method, timestamp=args.timestamp, nonce=args.nonce,
        body_file=args.body,
    )  # fmt: skip
    _warn_no_apikey(signer, out)
    if fmt == "json":
        out.json(signed.to_json())
    elif fmt == "curl":
        if args.body == "-":
            out.warn("the body came from standard input: pipe the same bytes to this curl")
        out.data(shlex.join(curl_argv(signed)))
    else:
        out.data(header_lines(signed))
    return 0


def _sign_batch(args: argparse.Namespace, out: Output) -> int:
    from .._batch import read_batch, sign_batch

    given = [
        opt for opt in ("url", "body", "method", "timestamp", "nonce")
        if getattr(args, opt) is not None
    ]  # fmt: skip
    if given:
        opts = ", ".join(f"--{o}" for o in given)
        raise UsageError(f"sign --batch: {opts} belong in the batch lines, not the command line")
    if args.format not in (None, "json"):
        raise UsageError(f"sign --batch writes JSON lines; --format {args.format} does not apply")
    if args.jobs is not None and args.jobs < 1:
        raise UsageError("--jobs must be at least 1")
    lines = read_batch(args.batch)
    signer = q.Signer.from_paths(
        key_paths(args, args.dir), get_openssl(args), pkcs11=pkcs11_config(args)
    )
    _warn_no_apikey(signer, out)

    def show(item: BatchItem) -> None:
        if out.json_mode:
            return
        out.data(json.dumps(item.to_json()))
        if item.error is not None:
            out.error(item.error.exit_code, str(item.error))

    items = sign_batch(signer, lines, jobs=args.jobs, on_item=show)
    failed = [i.error for i in items if i.error is not None]
    if out.json_mode:
        doc: dict[str, Any] = {"results": [i.to_json() for i in items], "failed": len(failed)}
        if failed:
            doc["error"] = error_doc(failed[0])
        out.json(doc)
    return 1 if failed else 0  # each failure was reported on its own line


def cmd_verify(args: argparse.Namespace, out: Output) -> int:
    body = read_body(args.body) if args.body is not None else b""
    public = key_paths(args, args.dir).public
    v = q.verify_request(
        public, get_openssl(args), args.url, args.signature, body,
        timestamp=args.timestamp, nonce=args.nonce,
    )  # fmt: skip
    if out.json_mode:
        out.json({"valid": v.valid, "reason": v.reason})
    else:
        out.data(f"{'valid' if v.valid else 'invalid'}: {v.reason}")
    return 0 if v.valid else 1


