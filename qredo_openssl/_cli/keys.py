"""Key commands: keygen, pubkey, convert, apikey (check and doctor: checks.py)."""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import sys
import threading
from typing import Any

import qredo_openssl as q

from .._defaults import ALLOWED_BITS, QREDO_BITS
from .._errors import (
    EXIT_INTERRUPTED,
    Interrupted,
    QredoOpenSSLError,
    RefusedOverwriteError,
    UsageError,
)
from .._ui import Output
from ._base import (
    Command,
    describe,
    dirs_of,
    error_doc,
    error_message,
    findings_doc,
    get_openssl,
    jobs_option,
    key_paths,
    openssl_doc,
    pkcs11_config,
    pkcs11_options,
    traditional_option,
    with_fix,
)
from ._render import NEXT_STEP


def register(command: Command) -> None:
    p = command(
        "keygen", "generate private.pem and public.pem as Qredo documents", cmd_keygen,
        many=True,
        examples=(
            "qredo-openssl keygen keys/",
            "qredo-openssl keygen --dry-run keys/",
            "qredo-openssl keygen --skip-existing -j 4 sandbox/ production/",
            "qredo-openssl keygen -f keys/    # replace, keeping backups",
        ),
        exits="0 ok; 1 bad DIR or a file could not be written (disk full); 3 OpenSSL missing "
        "or failed; 4 refused to overwrite (use -f, or --skip-existing), or DIR is mid-rotation "
        "(rotate finish)",
    )  # fmt: skip
    p.add_argument(
        "--bits", type=int, choices=ALLOWED_BITS, default=QREDO_BITS,
        help="key size: 2048 (default, as Qredo documents), 3072 or 4096",
    )  # fmt: skip
    p.add_argument(
        "-f", "--force", action="store_true", help="replace existing keys, keeping backups"
    )
    p.add_argument(
        "--skip-existing", action="store_true",
        help="leave a DIR whose pair exists and passes its checks as it is (exit 0)",
    )  # fmt: skip
    p.add_argument("--dry-run", action="store_true", help="print the commands, write nothing")
    jobs_option(p, "parallel jobs (default: CPUs)")
    traditional_option(p)
    p.add_argument("--pkcs11", metavar="URI",
                   help="generate the key inside this PKCS#11 token: 'pkcs11:token=T;object=O'")
    pkcs11_options(p)

    p = command(
        "pubkey", "derive public.pem from an existing private.pem", cmd_pubkey,
        examples=("qredo-openssl pubkey keys/", "qredo-openssl pubkey -f keys/"),
        exits="0 ok; 1 bad private key; 3 OpenSSL failed; 4 public.pem exists (use -f), "
              "or DIR is mid-rotation (rotate finish)",
    )  # fmt: skip
    p.add_argument(
        "-f", "--force", action="store_true", help="replace public.pem, keeping a backup"
    )
    pkcs11_options(p)

    p = command(
        "convert", "rewrite a PKCS#8 private.pem as PKCS#1 (keeps a backup)", cmd_convert,
        examples=("qredo-openssl convert keys/",),
        exits="0 converted, or already PKCS#1; 1 bad private key; 3 OpenSSL failed; "
              "4 DIR is mid-rotation (rotate finish)",
    )  # fmt: skip
    traditional_option(p)

    p = command(
        "apikey", "save the API key from standard input as DIR/apikey (0600)", cmd_apikey,
        examples=("qredo-openssl apikey keys/    # paste at the hidden prompt",
                  "printf '%s\\n' \"$KEY\" | qredo-openssl apikey keys/"),
        exits="0 saved; 1 not a valid API key; 4 apikey exists (use -f)",
    )  # fmt: skip
    p.add_argument("-f", "--force", action="store_true", help="replace apikey, keeping a backup")


def cmd_keygen(args: argparse.Namespace, out: Output) -> int:
    if args.pkcs11 is not None:
        return _keygen_token(args, out)
    dirs = dirs_of(args)
    if args.force and args.skip_existing:
        raise UsageError("keygen: --skip-existing and --force cannot be given together")
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
    report = _KeygenReport(paths, out)
    try:
        _run_keygens(paths, plan, args, out, report)
    except (KeyboardInterrupt, Interrupted):
        return report.interrupted(doc, args.force)
    return report.finish(doc)


def _key_entry(p: q.KeyPaths, r: q.KeygenResult | QredoOpenSSLError) -> dict[str, Any]:
    entry: dict[str, Any] = {"dir": p.dir, "private": p.private, "public": p.public}
    if isinstance(r, QredoOpenSSLError):
        entry.update(ok=False, error=error_doc(r))
    else:
        entry.update(
            ok=True, skipped=r.skipped, bits=r.bits, fingerprint=r.fingerprint,
            backups=list(r.backups), commands=[list(c) for c in r.commands],
            public_pem=r.public_pem, error=None,
        )  # fmt: skip
    return entry


class _KeygenReport:
    """Each DIR's result shown as soon as it is done (from the worker), then one summary."""

    def __init__(self, paths: list[q.KeyPaths], out: Output) -> None:
        self.paths = paths
        self.out = out
        self.many = len(paths) > 1
        self.done: dict[int, q.KeygenResult | QredoOpenSSLError] = {}
        self.lock = threading.Lock()
        self.on_progress: Any = None

    def __call__(self, p: q.KeyPaths, r: q.KeygenResult | QredoOpenSSLError) -> None:
        with self.lock:
            # by identity: the same DIR given twice is two entries
            i = next(i for i, x in enumerate(self.paths) if x is p and i not in self.done)
            self.done[i] = r
            n, out = len(self.done), self.out
            where = f"[{n}/{len(self.paths)}] {p.dir}: " if self.many else ""
            if isinstance(r, QredoOpenSSLError):
                if not out.json_mode:
                    out.error(r.exit_code, f"{where or p.dir + ': '}{error_message(r)}")
            elif not out.json_mode:
                if self.many:
                    out.data(f"# {p.dir}: {r.fingerprint}")
                out.data(r.public_pem)
                for b in r.backups:
                    out.info(f"{where}kept the old file as {b}")
                if r.skipped:
                    out.info(f"{where}left the existing pair as it is: {r.paths.private}, "
                             f"{r.paths.public} pass their checks")  # fmt: skip
                else:
                    out.info(f"{where}Wrote {r.paths.private} (RSA {r.bits}, PKCS#1, 0600) "
                             f"and {r.paths.public} (0644)")  # fmt: skip
                out.info(f"{where}Fingerprint: {r.fingerprint}")
            if self.on_progress is not None:
                self.on_progress(n, p)

    def _entries(self) -> list[dict[str, Any]]:
        return [_key_entry(p, self.done[i]) for i, p in enumerate(self.paths) if i in self.done]

    def finish(self, doc: dict[str, Any]) -> int:
        results = [self.done[i] for i in range(len(self.paths))]
        failed = [r for r in results if isinstance(r, QredoOpenSSLError)]
        made = [r for r in results if isinstance(r, q.KeygenResult) and not r.skipped]
        code = failed[0].exit_code if failed else 0
        doc["keys"] = self._entries()
        if self.out.json_mode:
            if failed:
                doc["error"] = error_doc(failed[0])
            self.out.json(doc)
            return code
        if self.many:
            skipped = len(results) - len(made) - len(failed)
            also = f", {skipped} left as they were" if skipped else ""
            summary = f"{len(results)} DIRs: {len(made)} new pairs{also}, {len(failed)} failed"
            self.out.info(summary, style="bold red" if failed else "bold")
        if made:
            public = made[0].paths.public if len(made) == 1 else "each public.pem"
            self.out.info(NEXT_STEP.format(public=public), style="bold")
        return code

    def interrupted(self, doc: dict[str, Any], force: bool) -> int:
        """Say truthfully what was kept: the DIRs done keep their checked pairs."""
        with self.lock:
            done = sorted(self.done.items())
            kept = [self.paths[i] for i, r in done if isinstance(r, q.KeygenResult)]
            entries = self._entries()
        dirs = ", ".join(shlex.quote(p.dir) for p in kept)
        if kept:
            msg = f"interrupted; kept the checked pairs already made in {dirs}"
            if force:
                msg += " (their old keys are in the backups named above)"
            msg += "; nothing was written in the other DIRs"
        else:
            msg = "interrupted; no key was written"
        if self.out.json_mode:
            doc.update(keys=entries, interrupted=True, kept=[p.dir for p in kept])
            doc["error"] = {"code": EXIT_INTERRUPTED, "message": msg}
            with contextlib.suppress(OSError):
                self.out.json(doc)
            self.out.json_mode = False  # the document is out; the message goes to stderr only
        self.out.error(EXIT_INTERRUPTED, msg)
        return EXIT_INTERRUPTED


def _keygen_token(args: argparse.Namespace, out: Output) -> int:
    from .._pkcs11_keygen import generate_token_key

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
        out.json({**doc, "checks": findings_doc(r.findings)})
        return 0
    out.data(r.public_pem)
    out.info(f"Made an RSA {r.bits} key inside the token: {r.uri}")
    out.info(f"Wrote {r.uri_file} and {r.paths.public} (0644)")
    out.info(f"Fingerprint: {r.fingerprint}")
    out.info(NEXT_STEP.format(public=r.paths.public), style="bold")
    return 0


def _run_keygens(
    paths: list[q.KeyPaths],
    plan: q.KeygenPlan,
    args: argparse.Namespace,
    out: Output,
    report: _KeygenReport,
) -> None:
    opts = {"force": args.force, "skip_existing": args.skip_existing, "jobs": args.jobs}
    if len(paths) == 1 or out.console is None or out.quiet:
        q.generate_keypairs(paths, plan, **opts, on_done=report)
        return
    from rich.progress import Progress

    with Progress(console=out.console, transient=False) as progress:
        total = len(paths)
        task = progress.add_task(f"keygen 0/{total}", total=total)

        def advance(n: int, p: q.KeyPaths) -> None:
            progress.update(task, completed=n, description=f"keygen {n}/{total} {p.dir}")

        report.on_progress = advance
        q.generate_keypairs(paths, plan, **opts, on_done=report)


def _repair_doc(r: q.RepairResult) -> dict[str, Any]:
    return {
        "written": r.written,
        "backups": list(r.backups),
        "commands": [list(c) for c in r.commands],
        "message": r.message,
        "warnings": [with_fix(w.message, w.fix) for w in r.warnings],
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
        out.warn(with_fix(w.message, w.fix))
    return 0


def cmd_convert(args: argparse.Namespace, out: Output) -> int:
    openssl = get_openssl(args)
    r = q.convert_private(key_paths(args, args.dir), openssl, args.traditional)
    if out.json_mode:
        out.json(_repair_doc(r))
    else:
        out.info(r.message)
        for w in r.warnings:
            out.warn(with_fix(w.message, w.fix))
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
