"""Checking commands: check (one DIR or many, in parallel) and doctor; their rendering."""

from __future__ import annotations

import argparse
import os
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import qredo_openssl as q

from .._defaults import QREDO_BITS
from .._errors import BadInputError, OpenSSLError, QredoOpenSSLError
from .._ui import Output
from ._base import (
    Command,
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
    send_options,
    traditional_option,
    with_fix,
)


def register(command: Command) -> None:
    p = command(
        "check", "check the key files of each DIR (several: in parallel)", cmd_check,
        many=True,
        examples=("qredo-openssl check keys/", "qredo-openssl --json check keys/",
                  "qredo-openssl check -j 4 sandbox/ production/"),
        exits="0 every check ok, warn or skip; 1 a check failed, or a DIR is missing",
    )  # fmt: skip
    jobs_option(p, "parallel jobs (default: CPUs)")
    pkcs11_options(p)

    p = command(
        "doctor", "show the OpenSSL in use, its decisions, and check DIR", cmd_doctor,
        examples=("qredo-openssl doctor keys/",
                  "qredo-openssl doctor --openssl /opt/openssl-1.1.1/bin/openssl keys/"),
        exits="0 OpenSSL usable; 3 not",
    )  # fmt: skip
    traditional_option(p)
    send_options(p)
    pkcs11_options(p)


def send_doctor(args: argparse.Namespace, doc: dict[str, Any]) -> list[str]:
    """``doctor``'s curl and API base: put into ``doc``, returned as text lines."""
    from .._curl import curl_source, detect_curl, require_recent
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


def _failed(findings: Sequence[q.Finding]) -> list[str]:
    return [f.name for f in findings if f.status == "fail"]


def _show_findings(findings: Sequence[q.Finding], out: Output, label: str = "") -> None:
    """The table (stdout) and a one-line verdict (stderr); with -q only the failed names."""
    fails = _failed(findings)
    where = f"{label}: " if label else ""
    if out.quiet:
        if fails:  # -q keeps errors and the names of failed checks (stderr)
            out.problem(f"{where}{len(fails)} failed: {', '.join(fails)}")
        return
    rows = [(f.status, f.name, with_fix(f.message, f.fix)) for f in findings]
    out.table(rows, ("status", "check", "detail"))
    warns = sum(f.status == "warn" for f in findings)
    also = f" ({warns} warning{'s' * (warns != 1)})" if warns else ""
    if fails:
        out.info(f"{where}{len(fails)} failed: {', '.join(fails)}{also}", style="bold red")
    else:
        out.info(f"{where}all checks passed{also}", style="green")


def _is_openssl(openssl: q.OpenSSL) -> None:
    """When a check failed, make sure OpenSSL is one (its version read, else exit 3): failed
    checks of a binary that is no OpenSSL would blame the key. A sound pair never asks."""
    openssl.version  # noqa: B018


def _existing_dir(paths: q.KeyPaths, args: argparse.Namespace) -> None:
    """A DIR that is not there is one error naming it, not a table of "no such file" fails."""
    if args.private and args.public and args.apikey:
        return  # every file named on its own: DIR is not looked at
    d = paths.dir
    if not os.path.isdir(d):
        why = "is not a directory" if os.path.lexists(d) else "does not exist"
        msg = f"{d} {why}: no key files to check"
        raise BadInputError(msg)


@dataclass(frozen=True)
class _DirResult:
    dir: str
    findings: tuple[q.Finding, ...] = ()
    error: QredoOpenSSLError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and not _failed(self.findings)

    @property
    def code(self) -> int:
        return 0 if self.ok else self.error.exit_code if self.error is not None else 1

    def doc(self) -> dict[str, Any]:
        if self.error is not None:
            return {"dir": self.dir, "ok": False, "error": error_doc(self.error)}
        return {"dir": self.dir, "ok": self.ok, "checks": findings_doc(self.findings)}


def cmd_check(args: argparse.Namespace, out: Output) -> int:
    dirs = dirs_of(args)
    if len(dirs) == 1:
        paths = key_paths(args, dirs[0])
        _existing_dir(paths, args)
        openssl = get_openssl(args, lazy=True)
        findings = q.check_keys(paths, openssl, pkcs11=pkcs11_config(args))
        if _failed(findings):
            _is_openssl(openssl)
        if out.json_mode:
            out.json(findings_doc(findings))
        else:
            _show_findings(findings, out)
        return 1 if _failed(findings) else 0
    return _check_many(dirs, args, out)


def _check_many(dirs: Sequence[str], args: argparse.Namespace, out: Output) -> int:
    from .._run import map_in_threads

    openssl = get_openssl(args, lazy=True)  # once: every DIR is checked with the same OpenSSL
    pkcs11 = pkcs11_config(args)

    def one(d: str) -> _DirResult:
        try:
            paths = key_paths(args, d)
            _existing_dir(paths, args)
            return _DirResult(d, tuple(q.check_keys(paths, openssl, pkcs11=pkcs11)))
        except QredoOpenSSLError as exc:
            return _DirResult(d, error=exc)

    def show(r: _DirResult) -> None:  # in DIR order, as soon as each is done
        if not r.ok:
            _is_openssl(openssl)  # before a table blames the keys
        if out.json_mode:
            return
        if r.error is not None:
            msg = error_message(r.error)
            out.problem(msg if r.dir in msg else f"{r.dir}: {msg}")
            return
        if not out.quiet:
            out.data(f"{r.dir}:")  # the table below is data: its heading goes with it
        _show_findings(r.findings, out, label=r.dir)

    results = map_in_threads(one, list(dirs), jobs=args.jobs, on_result=show)
    failed = [r for r in results if not r.ok]
    if out.json_mode:
        out.json({"dirs": [r.doc() for r in results]})
    elif failed:
        names = ", ".join(r.dir for r in failed)
        out.info(f"{len(failed)} of {len(results)} DIRs failed: {names}", style="bold red")
    else:
        out.info(f"all {len(results)} DIRs passed", style="green")
    return next((r.code for r in failed), 0)


def cmd_doctor(args: argparse.Namespace, out: Output) -> int:
    from .._openssl import openssl_source
    from .._pkcs11 import has_token_key, uri_file

    explicit = getattr(args, "openssl", None)
    doc: dict[str, Any] = {"openssl": {"source": openssl_source(explicit)}}
    try:
        openssl = get_openssl(args)
        plan = q.plan_keygen(openssl, QREDO_BITS, args.traditional)
    except OpenSSLError as exc:
        doc["usable"] = False
        doc["error"] = error_doc(exc)
        if out.json_mode:
            out.json(doc)
        else:
            out.info(f"OpenSSL: not usable ({doc['openssl']['source']})")
            out.error(exc.exit_code, str(exc))
        return exc.exit_code
    paths = key_paths(args, args.dir)
    doc["openssl"].update(openssl_doc(openssl, plan.traditional))
    doc["usable"] = True
    doc["commands"] = [list(c) for c in plan.commands]
    token = _token_doc(paths, openssl, args) if has_token_key(paths) else None
    doc["pkcs11"] = token
    have_keys = any(os.path.lexists(p) for p in (paths.private, paths.public, paths.apikey))
    have_keys = have_keys or token is not None
    findings = q.check_keys(paths, openssl, pkcs11=pkcs11_config(args)) if have_keys else None
    doc["checks"] = findings_doc(findings) if findings is not None else None
    send_lines = send_doctor(args, doc)
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
    out.data("\n".join(send_lines))
    if token is not None:
        out.data(f"pkcs11 key  {token['uri'] or token['error']}  (from {uri_file(paths)})")
        out.data(f"pkcs11      route {token['route']}: {token['route_reason']}")
        out.data(f"pkcs11      module {token['module']}  (from {token['module_source']})")
        out.data(f"pkcs11      token {token['token']}")
    if findings is None:
        looked = ", ".join((paths.private, paths.public, paths.apikey))
        out.data(f"no key files in {paths.dir} (looked for {looked})")
    else:
        out.data(f"checks of {paths.dir}:")
        _show_findings(findings, out)
    return 0


def _token_doc(paths: q.KeyPaths, openssl: q.OpenSSL, args: argparse.Namespace) -> dict[str, Any]:
    """Route, module and token of a token key, for ``doctor``; what cannot be found is said."""
    from .._pkcs11 import Pkcs11Options, decide_route, find_module, uri_file
    from .._pkcs11_uri import read_uri_file

    doc: dict[str, Any] = dict.fromkeys(
        ("uri", "token", "route", "route_reason", "module", "module_source", "error"))
    opts = pkcs11_config(args) or Pkcs11Options()
    try:
        uri = read_uri_file(uri_file(paths))
        doc.update(uri=str(uri), token=uri.token)
        route = decide_route(openssl, opts.route)
        doc.update(route=route.route, route_reason=route.reason)
        doc["module"], doc["module_source"] = find_module(opts.module)
    except QredoOpenSSLError as exc:
        doc["error"] = error_doc(exc)
    return doc
