"""The ``qredo-openssl`` command line: parsing, output, and the one place errors become exit codes.

Only the public API of :mod:`qredo_openssl` is used here. Importing this module must stay
cheap: ``--version`` and ``--help`` never load ``sh`` or ``rich``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import signal
import sys
from collections.abc import Sequence
from types import FrameType
from typing import Any, NoReturn

import qredo_openssl as q

from ._ui import Output

EXIT_INTERRUPTED = 130
NEXT_STEP = (
    "Next: in the Qredo Web App open Settings > Partner API > Upload Public Key, "
    "paste the public key above ({public}) and click Upload."
)


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # "--jso" must not pass for "--json": the mode is decided before parsing
        kwargs["allow_abbrev"] = False
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        raise q.UsageError(f"{self.prog}: {message}")


def _common() -> _Parser:
    # Global options are accepted before or after the command; SUPPRESS keeps the
    # subcommand's parser from resetting a value given before the command.
    p = _Parser(add_help=False)
    s = argparse.SUPPRESS
    p.add_argument("--openssl", metavar="PATH", default=s, help="the OpenSSL binary to use")
    p.add_argument("--json", action="store_true", default=s, help="one JSON document on stdout")
    p.add_argument("-q", "--quiet", action="store_true", default=s, help="only data and errors")
    p.add_argument(
        "--timeout", type=float, metavar="SECONDS", default=s,
        help=f"kill an OpenSSL command after this long (default {q.DEFAULT_TIMEOUT:g})",
    )  # fmt: skip
    return p


def _paths_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--private", metavar="FILE", help="private key path (default DIR/private.pem)")
    p.add_argument("--public", metavar="FILE", help="public key path (default DIR/public.pem)")
    p.add_argument("--apikey", metavar="FILE", help="API key path (default DIR/apikey)")


def _traditional_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--traditional", choices=("auto", "always", "never"), default="auto",
        help="pass -traditional to OpenSSL: auto (OpenSSL >= 3 only), always or never",
    )  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    common = _common()
    parser = _Parser(
        prog="qredo-openssl",
        description="Make, check and use Qredo Partner API keys with the system's OpenSSL.",
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {q.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    def command(name: str, help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_, parents=[common])
        if name == "keygen":
            p.add_argument("dirs", nargs="*", metavar="DIR", help="key directories (default: .)")
        else:
            p.add_argument("dir", nargs="?", default=".", metavar="DIR", help="default: .")
        _paths_options(p)
        return p

    p = command("keygen", "generate private.pem and public.pem as Qredo documents")
    p.add_argument(
        "--bits", type=int, choices=q.ALLOWED_BITS, default=q.QREDO_BITS,
        help="key size: 2048 (default, as Qredo documents), 3072 or 4096",
    )  # fmt: skip
    p.add_argument("--force", action="store_true", help="replace existing keys, keeping backups")
    p.add_argument("--dry-run", action="store_true", help="print the commands, write nothing")
    p.add_argument("-j", "--jobs", type=int, metavar="N", help="parallel jobs (default: CPUs)")
    _traditional_option(p)

    p = command("pubkey", "derive public.pem from an existing private.pem")
    p.add_argument("--force", action="store_true", help="replace public.pem, keeping a backup")

    p = command("convert", "rewrite a PKCS#8 private.pem as PKCS#1 (keeps a backup)")
    _traditional_option(p)

    command("check", "check the key files of DIR")

    p = command("doctor", "show the OpenSSL in use, its decisions, and check DIR")
    _traditional_option(p)

    p = command("apikey", "save the API key from standard input as DIR/apikey (0600)")
    p.add_argument("--force", action="store_true", help="replace apikey, keeping a backup")

    p = command("sign", "sign a Partner API request (x-sign)")
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

    p = command("verify", "verify an x-sign signature as the Qredo server does")
    p.add_argument("--url", required=True, help="the request URL, exactly as it was sent")
    p.add_argument("--body", metavar="FILE", help="request body file, or - for stdin")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--timestamp", metavar="T")
    g.add_argument("--nonce", metavar="N")
    p.add_argument("--signature", required=True, metavar="SIG", help="the x-sign value")
    return parser


def _key_paths(args: argparse.Namespace, directory: str) -> q.KeyPaths:
    return q.KeyPaths.in_dir(
        directory, private=args.private, public=args.public, apikey=args.apikey
    )


def _openssl(args: argparse.Namespace) -> q.OpenSSL:
    return q.detect_openssl(getattr(args, "openssl", None), timeout=args.timeout)


def _openssl_doc(openssl: q.OpenSSL, decision: q.TraditionalDecision | None) -> dict[str, Any]:
    v = openssl.version
    doc: dict[str, Any] = {
        "path": openssl.path,
        "version": v.number or None,
        "flavour": v.flavour,
        "major": v.major,
        "minor": v.minor,
        "patch": v.patch,
        "letter": v.letter,
        "raw": v.raw,
    }
    if decision is not None:
        doc["traditional"] = {"use": decision.use, "reason": decision.reason}
    return doc


def _describe(openssl: q.OpenSSL) -> str:
    v = openssl.version
    name = f"{v.flavour} {v.number}" if v.number else f"unrecognised ({v.raw!r})"
    return f"{name} at {openssl.path}"


def _error_doc(exc: q.QredoOpenSSLError) -> dict[str, Any]:
    return {"code": exc.exit_code, "message": str(exc)}


def cmd_keygen(args: argparse.Namespace, out: Output) -> int:
    dirs = args.dirs or ["."]
    if len(dirs) > 1 and (args.private or args.public or args.apikey):
        msg = "--private/--public/--apikey name single files: give one DIR with them"
        raise q.UsageError(msg)
    if args.jobs is not None and args.jobs < 1:
        raise q.UsageError("--jobs must be at least 1")
    openssl = _openssl(args)
    plan = q.plan_keygen(openssl, args.bits, args.traditional)
    if plan.bits != q.QREDO_BITS:
        out.warn(f"Qredo documents {q.QREDO_BITS}-bit keys; making {plan.bits}-bit keys")
    paths = [_key_paths(args, d) for d in dirs]
    doc: dict[str, Any] = {
        "openssl": _openssl_doc(openssl, plan.traditional),
        "bits": plan.bits,
        "dry_run": args.dry_run,
    }
    t = plan.traditional
    decision = f"-traditional: {'yes' if t.use else 'no'} ({t.reason})"
    if args.dry_run:
        doc["commands"] = [list(c) for c in plan.commands]
        doc["keys"] = [{"dir": p.dir, "private": p.private, "public": p.public} for p in paths]
        if out.json_mode:
            out.json(doc)
            return 0
        out.info(f"OpenSSL: {_describe(openssl)}")
        out.info(decision)
        out.info("# run in a private temporary directory in each DIR, then published:")
        out.data("\n".join(shlex.join(c) for c in plan.commands))
        return 0

    out.info(f"OpenSSL: {_describe(openssl)}; {decision}")
    results = _run_keygens(paths, plan, args, out)
    doc["keys"] = []
    code = 0
    for p, r in zip(paths, results):
        entry: dict[str, Any] = {"dir": p.dir, "private": p.private, "public": p.public}
        if isinstance(r, q.QredoOpenSSLError):
            entry.update(ok=False, error=_error_doc(r))
            code = code or r.exit_code
            if not out.json_mode:
                out.error(r.exit_code, f"{p.dir}: {r}")
        else:
            entry.update(
                ok=True, bits=r.bits, fingerprint=r.fingerprint, backups=list(r.backups),
                commands=[list(c) for c in r.commands], public_pem=r.public_pem, error=None,
            )  # fmt: skip
            _report_keygen(r, out)
        doc["keys"].append(entry)
    if out.json_mode:
        first = next((k["error"] for k in doc["keys"] if k["error"]), None)
        if first is not None:
            doc["error"] = first
        out.json(doc)
    return code


def _report_keygen(r: q.KeygenResult, out: Output) -> None:
    out.data(r.public_pem)
    for b in r.backups:
        out.info(f"kept the old file as {b}")
    out.info(f"Wrote {r.paths.private} (RSA {r.bits}, PKCS#1, 0600) and {r.paths.public} (0644)")
    out.info(f"Fingerprint: {r.fingerprint}")
    out.info(NEXT_STEP.format(public=r.paths.public), style="bold")


def _run_keygens(
    paths: list[q.KeyPaths], plan: q.KeygenPlan, args: argparse.Namespace, out: Output
) -> list[q.KeygenResult | q.QredoOpenSSLError]:
    if len(paths) == 1 or out.console is None or out.quiet:
        return q.generate_keypairs(paths, plan, force=args.force, jobs=args.jobs)
    from rich.progress import Progress

    with Progress(console=out.console, transient=False) as progress:
        task = progress.add_task("keygen", total=len(paths))

        def done(p: q.KeyPaths, r: q.KeygenResult | q.QredoOpenSSLError) -> None:
            progress.advance(task)

        return q.generate_keypairs(paths, plan, force=args.force, jobs=args.jobs, on_done=done)


def _repair_doc(r: q.RepairResult) -> dict[str, Any]:
    return {
        "written": r.written,
        "backups": list(r.backups),
        "commands": [list(c) for c in r.commands],
        "message": r.message,
        "warnings": list(r.warnings),
    }


def cmd_pubkey(args: argparse.Namespace, out: Output) -> int:
    openssl = _openssl(args)
    paths = _key_paths(args, args.dir)
    r = q.derive_public(paths, openssl, force=args.force)
    with open(paths.public) as f:  # just written and checked by derive_public: a few hundred bytes
        public_pem = f.read()
    if out.json_mode:
        doc = _repair_doc(r)
        doc.update(public_pem=public_pem, fingerprint=q.fingerprint(public_pem.encode()))
        out.json(doc)
        return 0
    out.data(public_pem)
    for b in r.backups:
        out.info(f"kept the old file as {b}")
    out.info(r.message)
    out.info(f"Fingerprint: {q.fingerprint(public_pem.encode())}")
    for w in r.warnings:
        out.warn(w)
    return 0


def cmd_convert(args: argparse.Namespace, out: Output) -> int:
    openssl = _openssl(args)
    r = q.convert_private(_key_paths(args, args.dir), openssl, args.traditional)
    if out.json_mode:
        out.json(_repair_doc(r))
    else:
        out.info(r.message)
        for w in r.warnings:
            out.warn(w)
    return 0


def _findings_doc(findings: Sequence[q.Finding]) -> list[dict[str, str]]:
    return [{"name": f.name, "status": f.status, "message": f.message} for f in findings]


def _show_findings(findings: Sequence[q.Finding], out: Output) -> None:
    if not out.json_mode and not out.quiet:
        out.table([(f.status, f.name, f.message) for f in findings], ("status", "check", "detail"))
        fails = [f.name for f in findings if f.status == "fail"]
        warns = sum(f.status == "warn" for f in findings)
        also = f" ({warns} warning{'s' * (warns != 1)})" if warns else ""
        if fails:
            out.info(f"{len(fails)} failed: {', '.join(fails)}{also}", style="bold red")
        else:
            out.info(f"all checks passed{also}", style="green")


def cmd_check(args: argparse.Namespace, out: Output) -> int:
    openssl = _openssl(args)
    findings = q.check_keys(_key_paths(args, args.dir), openssl)
    failed = q.any_failed(findings)
    if out.json_mode:
        out.json(_findings_doc(findings))
    else:
        _show_findings(findings, out)
    return 1 if failed else 0


def cmd_doctor(args: argparse.Namespace, out: Output) -> int:
    explicit = getattr(args, "openssl", None)
    doc: dict[str, Any] = {"openssl": {"source": q.openssl_source(explicit)}}
    try:
        openssl = _openssl(args)
        plan = q.plan_keygen(openssl, q.QREDO_BITS, args.traditional)
    except q.OpenSSLError as exc:
        doc["usable"] = False
        doc["error"] = _error_doc(exc)
        if out.json_mode:
            out.json(doc)
        else:
            out.info(f"OpenSSL: not usable ({doc['openssl']['source']})")
            out.error(exc.exit_code, str(exc))
        return exc.exit_code
    paths = _key_paths(args, args.dir)
    doc["openssl"].update(_openssl_doc(openssl, plan.traditional))
    doc["usable"] = True
    doc["commands"] = [list(c) for c in plan.commands]
    have_keys = any(os.path.lexists(p) for p in (paths.private, paths.public, paths.apikey))
    findings = q.check_keys(paths, openssl) if have_keys else None
    doc["checks"] = _findings_doc(findings) if findings is not None else None
    if out.json_mode:
        out.json(doc)
        return 0
    t = plan.traditional
    out.data(f"openssl     {openssl.path}  (from {doc['openssl']['source']})")
    out.data(f"version     {openssl.version.raw}")
    out.data(f"flavour     {openssl.version.flavour} {openssl.version.number}".rstrip())
    out.data(f"traditional {'yes' if t.use else 'no'}: {t.reason}")
    out.data("keygen runs (in a private temporary directory, then published):")
    out.data("\n".join("  " + shlex.join(c) for c in plan.commands))
    if findings is None:
        out.data(f"no key files in {paths.dir}: run qredo-openssl keygen {shlex.quote(paths.dir)}")
    else:
        out.data(f"checks of {paths.dir}:")
        _show_findings(findings, out)
    return 0


def cmd_apikey(args: argparse.Namespace, out: Output) -> int:
    # No OpenSSL here: saving the key must work (and never load sh) without it.
    path = _key_paths(args, args.dir).apikey
    if not args.force and os.path.lexists(path):
        # Refuse before the secret is typed, not after; save_apikey refuses again, race-free.
        msg = f"{path} already exists; refusing to overwrite (use --force to keep a backup)"
        raise q.RefusedOverwriteError(msg)
    saved = q.save_apikey(path, q.read_apikey_input(sys.stdin), force=args.force)
    if out.json_mode:
        out.json(
            {
                "path": saved.path,
                "key_id": saved.key_id,
                "alphabet": saved.alphabet,
                "backups": list(saved.backups),
            }
        )
        return 0
    for b in saved.backups:
        out.info(f"kept the old file as {b}")
    kid = f"; key_id: {saved.key_id}" if saved.key_id is not None else ""
    out.info(f"Saved {saved.path} (0600, {saved.alphabet} Base64){kid}")
    return 0


def _warn_no_apikey(signer: q.Signer, out: Output) -> None:
    if signer.apikey is None:
        out.warn(f"no API key at {signer.apikey_path}: x-api-key left out (save it with: "
                 "qredo-openssl apikey)")  # fmt: skip


def cmd_sign(args: argparse.Namespace, out: Output) -> int:
    if args.batch is not None:
        return _sign_batch(args, out)
    if args.url is None:
        raise q.UsageError("sign: give --url URL (or --batch FILE)")
    fmt = "json" if out.json_mode else (args.format or "headers")
    body = q.read_body(args.body) if args.body is not None else b""
    signer = q.Signer.from_paths(_key_paths(args, args.dir), _openssl(args))
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
        out.data(shlex.join(signed.curl_argv()))
    else:
        out.data(signed.header_lines())
    return 0


def _sign_batch(args: argparse.Namespace, out: Output) -> int:
    given = [
        opt for opt in ("url", "body", "method", "timestamp", "nonce")
        if getattr(args, opt) is not None
    ]  # fmt: skip
    if given:
        opts = ", ".join(f"--{o}" for o in given)
        raise q.UsageError(f"sign --batch: {opts} belong in the batch lines, not the command line")
    if args.format not in (None, "json"):
        raise q.UsageError(f"sign --batch writes JSON lines; --format {args.format} does not apply")
    if args.jobs is not None and args.jobs < 1:
        raise q.UsageError("--jobs must be at least 1")
    lines = q.read_batch(args.batch)
    signer = q.Signer.from_paths(_key_paths(args, args.dir), _openssl(args))
    _warn_no_apikey(signer, out)

    def show(item: q.BatchItem) -> None:
        if out.json_mode:
            return
        out.data(json.dumps(item.to_json()))
        if item.error is not None:
            out.error(item.error.exit_code, str(item.error))

    items = q.sign_batch(signer, lines, jobs=args.jobs, on_item=show)
    failed = [i.error for i in items if i.error is not None]
    if out.json_mode:
        doc: dict[str, Any] = {"results": [i.to_json() for i in items], "failed": len(failed)}
        if failed:
            doc["error"] = _error_doc(failed[0])
        out.json(doc)
    return 1 if failed else 0  # each failure was reported on its own line


def cmd_verify(args: argparse.Namespace, out: Output) -> int:
    body = q.read_body(args.body) if args.body is not None else b""
    public = _key_paths(args, args.dir).public
    v = q.verify_request(
        public, _openssl(args), args.url, args.signature, body,
        timestamp=args.timestamp, nonce=args.nonce,
    )  # fmt: skip
    if out.json_mode:
        out.json({"valid": v.valid, "reason": v.reason})
    else:
        out.data(f"{'valid' if v.valid else 'invalid'}: {v.reason}")
    return 0 if v.valid else 1


COMMANDS = {
    "keygen": cmd_keygen,
    "pubkey": cmd_pubkey,
    "convert": cmd_convert,
    "check": cmd_check,
    "doctor": cmd_doctor,
    "apikey": cmd_apikey,
    "sign": cmd_sign,
    "verify": cmd_verify,
}


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise q.Interrupted


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the exit code (SPEC.md: 0, 1, 2, 3, 4, 130)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # Until the parser has spoken (a usage error is reported in JSON too), guess the modes.
    out = Output(
        json_mode=any(a == "--json" or a.startswith("--json=") for a in argv),
        quiet="-q" in argv or "--quiet" in argv,
    )
    try:
        args = build_parser().parse_args(argv)
        out.json_mode = getattr(args, "json", False)
        out.quiet = getattr(args, "quiet", False)
        args.timeout = getattr(args, "timeout", q.DEFAULT_TIMEOUT)
        if not math.isfinite(args.timeout) or args.timeout <= 0:
            raise q.UsageError("--timeout must be a positive number of seconds")
        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, _terminate)
        return COMMANDS[args.command](args, out)
    except q.QredoOpenSSLError as exc:
        out.error(exc.exit_code, str(exc))
        return exc.exit_code
    except (KeyboardInterrupt, q.Interrupted):
        out.error(EXIT_INTERRUPTED, "interrupted; nothing was kept")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return 1
    except OSError as exc:  # a full disk, a closed stdout...: one line, not a traceback
        where = f": {exc.filename}" if exc.filename else ""
        out.error(1, f"{exc.strerror or exc}{where}")
        return 1
