"""Key commands: keygen, pubkey, convert, apikey (check and doctor: checks.py)."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from typing import Any

import qredo_openssl as q

from .._defaults import ALLOWED_BITS, QREDO_BITS
from .._errors import QredoOpenSSLError, RefusedOverwriteError, UsageError
from .._ui import Output
from ._base import (
    Command,
    describe,
    error_doc,
    get_openssl,
    key_paths,
    openssl_doc,
    pkcs11_config,
    pkcs11_options,
    traditional_option,
)

NEXT_STEP = (
    "Next: in the Qredo Web App open Settings > Partner API > Upload Public Key, "
    "paste the public key above ({public}) and click Upload."
)


def register(command: Command) -> None:
    p = command(
        "keygen", "generate private.pem and public.pem as Qredo documents", cmd_keygen, many=True
    )
    p.add_argument(
        "--bits", type=int, choices=ALLOWED_BITS, default=QREDO_BITS,
        help="key size: 2048 (default, as Qredo documents), 3072 or 4096",
    )  # fmt: skip
    p.add_argument("--force", action="store_true", help="replace existing keys, keeping backups")
    p.add_argument("--dry-run", action="store_true", help="print the commands, write nothing")
    p.add_argument("-j", "--jobs", type=int, metavar="N", help="parallel jobs (default: CPUs)")
    traditional_option(p)
    p.add_argument("--pkcs11", metavar="URI",
                   help="generate the key inside this PKCS#11 token: 'pkcs11:token=T;object=O'")
    pkcs11_options(p)

    p = command("pubkey", "derive public.pem from an existing private.pem", cmd_pubkey)
    p.add_argument("--force", action="store_true", help="replace public.pem, keeping a backup")
    pkcs11_options(p)

    p = command("convert", "rewrite a PKCS#8 private.pem as PKCS#1 (keeps a backup)", cmd_convert)
    traditional_option(p)

    p = command("apikey", "save the API key from standard input as DIR/apikey (0600)", cmd_apikey)
    p.add_argument("--force", action="store_true", help="replace apikey, keeping a backup")


def cmd_keygen(args: argparse.Namespace, out: Output) -> int:
    if args.pkcs11 is not None:
        return _keygen_token(args, out)
    dirs = args.dirs or ["."]
    if len(dirs) > 1 and (args.private or args.public or args.apikey):
        msg = "--private/--public/--apikey name single files: give one DIR with them"
        raise UsageError(msg)
    if args.jobs is not None and args.jobs < 1:
        raise UsageError("--jobs must be at least 1")
    openssl = get_openssl(args)
    plan = q.plan_keygen(openssl, args.bits, args.traditional)
    if plan.bits != QREDO_BITS:
        out.warn(f"Qredo documents {QREDO_BITS}-bit keys; making {plan.bits}-bit keys")
    paths = [key_paths(args, d) for d in dirs]
    doc: dict[str, Any] = {
        "openssl": openssl_doc(openssl, plan.traditional),
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
        out.info(f"OpenSSL: {describe(openssl)}")
        out.info(decision)
        out.info("# run in a private temporary directory in each DIR, then published:")
        out.data("\n".join(shlex.join(c) for c in plan.commands))
        return 0

    out.info(f"OpenSSL: {describe(openssl)}; {decision}")
    results = _run_keygens(paths, plan, args, out)
    doc["keys"] = []
    code = 0
    for p, r in zip(paths, results):
        entry: dict[str, Any] = {"dir": p.dir, "private": p.private, "public": p.public}
        if isinstance(r, QredoOpenSSLError):
            entry.update(ok=False, error=error_doc(r))
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


def _keygen_token(args: argparse.Namespace, out: Output) -> int:
    from .._pkcs11_keys import generate_token_key

    dirs = args.dirs or ["."]
    if len(dirs) > 1 or args.force or args.dry_run:
        raise UsageError("keygen --pkcs11 takes one DIR, and no --force or --dry-run")
    paths = key_paths(args, dirs[0])
    r = generate_token_key(
        paths, get_openssl(args), args.pkcs11, bits=args.bits, options=pkcs11_config(args)
    )
    if out.json_mode:
        doc: dict[str, Any] = {"dir": paths.dir, "uri": r.uri, "uri_file": r.uri_file}
        doc["public"] = paths.public
        doc.update(bits=r.bits, fingerprint=r.fingerprint, public_pem=r.public_pem)
        checks = [{"name": f.name, "status": f.status, "message": f.message} for f in r.findings]
        out.json({**doc, "checks": checks})
        return 0
    out.data(r.public_pem)
    out.info(f"Made an RSA {r.bits} key inside the token: {r.uri}")
    out.info(f"Wrote {r.uri_file} and {r.paths.public} (0644)")
    out.info(f"Fingerprint: {r.fingerprint}")
    out.info(NEXT_STEP.format(public=r.paths.public), style="bold")
    return 0


def _report_keygen(r: q.KeygenResult, out: Output) -> None:
    out.data(r.public_pem)
    for b in r.backups:
        out.info(f"kept the old file as {b}")
    out.info(f"Wrote {r.paths.private} (RSA {r.bits}, PKCS#1, 0600) and {r.paths.public} (0644)")
    out.info(f"Fingerprint: {r.fingerprint}")
    out.info(NEXT_STEP.format(public=r.paths.public), style="bold")


def _run_keygens(
    paths: list[q.KeyPaths], plan: q.KeygenPlan, args: argparse.Namespace, out: Output
) -> list[q.KeygenResult | QredoOpenSSLError]:
    if len(paths) == 1 or out.console is None or out.quiet:
        return q.generate_keypairs(paths, plan, force=args.force, jobs=args.jobs)
    from rich.progress import Progress

    with Progress(console=out.console, transient=False) as progress:
        task = progress.add_task("keygen", total=len(paths))

        def done(p: q.KeyPaths, r: q.KeygenResult | QredoOpenSSLError) -> None:
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
    from .._pem import fingerprint

    openssl = get_openssl(args)
    paths = key_paths(args, args.dir)
    r = q.derive_public(paths, openssl, force=args.force, pkcs11=pkcs11_config(args))
    with open(paths.public) as f:  # just written and checked by derive_public: a few hundred bytes
        public_pem = f.read()
    if out.json_mode:
        doc = _repair_doc(r)
        doc.update(public_pem=public_pem, fingerprint=fingerprint(public_pem.encode()))
        out.json(doc)
        return 0
    out.data(public_pem)
    for b in r.backups:
        out.info(f"kept the old file as {b}")
    out.info(r.message)
    out.info(f"Fingerprint: {fingerprint(public_pem.encode())}")
    for w in r.warnings:
        out.warn(w)
    return 0


def cmd_convert(args: argparse.Namespace, out: Output) -> int:
    openssl = get_openssl(args)
    r = q.convert_private(key_paths(args, args.dir), openssl, args.traditional)
    if out.json_mode:
        out.json(_repair_doc(r))
    else:
        out.info(r.message)
        for w in r.warnings:
            out.warn(w)
    return 0


def cmd_apikey(args: argparse.Namespace, out: Output) -> int:
    from .._apikey import read_apikey_input

    # No OpenSSL here: saving the key must work (and never load sh) without it.
    path = key_paths(args, args.dir).apikey
    if not args.force and os.path.lexists(path):
        # Refuse before the secret is typed, not after; save_apikey refuses again, race-free.
        msg = f"{path} already exists; refusing to overwrite (use --force to keep a backup)"
        raise RefusedOverwriteError(msg)
    saved = q.save_apikey(path, read_apikey_input(sys.stdin), force=args.force)
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


