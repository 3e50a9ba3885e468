"""Key rotation commands: rotate start, status, finish, abort."""

from __future__ import annotations

import argparse
import shlex
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import qredo_openssl as q

from .._defaults import ALLOWED_BITS, QREDO_BITS
from .._errors import EXIT_INTERRUPTED, Interrupted, ToolError, UsageError
from .._ui import Output
from ._base import (
    Command,
    describe,
    get_openssl,
    key_paths,
    openssl_doc,
    traditional_option,
    with_fix,
)
from ._render import NEXT_STEP

if TYPE_CHECKING:
    from .._rotate import PairState


GROUP_HELP = """\
the steps, each with its own --help:
  start    make the next pair in DIR/next/, to upload in the Qredo Web App
  status   the current and the next pair's fingerprints and dates
  finish   after the upload: the next pair becomes DIR's pair, the old one kept as backups
  abort    drop the next pair (kept as DIR/next.YYYYmmddTHHMMSSZ.bak/)

examples:
  qredo-openssl rotate start keys/
  qredo-openssl rotate status keys/
  qredo-openssl rotate finish keys/      # right after uploading keys/next/public.pem

exit codes: those of each step"""

START_HELP = """\
examples:
  qredo-openssl rotate start keys/
  qredo-openssl rotate start --dry-run keys/

exit codes:
  0  the next pair is in DIR/next/ (or --dry-run)
  1  DIR has no current key, or a PKCS#11 token key
  3  OpenSSL missing, unusable or failed
  4  a rotation is already in progress"""

STATUS_HELP = """\
examples:
  qredo-openssl rotate status keys/
  qredo-openssl rotate status --json keys/

exit codes:
  0  reported (also when no rotation is in progress)
  1  DIR does not exist"""

FINISH_HELP = """\
Requests signed with the old key fail from the upload on (Qredo keeps one key): run finish
right after the upload. Ctrl-C or SIGTERM leave the old pair or the new one, never a mix; after
a crash, run finish again to complete it.

examples:
  qredo-openssl rotate finish keys/
  qredo-openssl rotate finish --probe /company keys/
  qredo-openssl rotate finish --json keys/

exit codes:
  0    the next pair is DIR's pair; the old pair is kept as NAME.YYYYmmddTHHMMSSZ.bak
  1    no rotation in progress, or the next pair fails its checks
  2    usage
  3    OpenSSL missing, unusable or failed
  5/6  --probe: the API answered, but not 2xx / did not answer (nothing was changed)
  130  interrupted: the old pair or the new one is in place (the message says which)"""

ABORT_HELP = """\
examples:
  qredo-openssl rotate abort keys/

exit codes:
  0  the next pair is kept as DIR/next.YYYYmmddTHHMMSSZ.bak/; DIR's pair is untouched
  1  no rotation in progress
  4  a finish was cut off half-way: complete it with rotate finish"""


def _epilog(p: argparse.ArgumentParser, text: str) -> None:
    p.epilog = text
    p.formatter_class = argparse.RawDescriptionHelpFormatter


def register(command: Command) -> None:
    group, p = command.group("rotate", "replace a live key pair without a broken window")
    _epilog(p, GROUP_HELP)

    p = group("start", "make the next pair in DIR/next/ as keygen does, to upload", cmd_start)
    p.add_argument(
        "--bits", type=int, choices=ALLOWED_BITS, default=QREDO_BITS,
        help="key size: 2048 (default, as Qredo documents), 3072 or 4096",
    )  # fmt: skip
    p.add_argument("--dry-run", action="store_true", help="print the commands, write nothing")
    traditional_option(p)
    _epilog(p, START_HELP)

    p = group("status", "the current and the next pair: fingerprints and dates", cmd_status)
    _epilog(p, STATUS_HELP)

    p = group("finish", "after the upload: the next pair takes DIR's pair's place", cmd_finish)
    p.add_argument(
        "--probe", metavar="URL",
        help="first send a signed GET with the next key; finish only on a 2xx answer",
    )  # fmt: skip
    p.add_argument("--cacert", metavar="FILE", help="--probe: CA certificates to trust")
    _epilog(p, FINISH_HELP)

    p = group("abort", "drop the next pair (kept as a backup); DIR's pair is untouched", cmd_abort)
    _epilog(p, ABORT_HELP)


def cmd_start(args: argparse.Namespace, out: Output) -> int:
    from .. import _rotate

    paths = key_paths(args, args.dir)
    _rotate.check_can_start(paths)  # refusals first: they need no OpenSSL
    openssl = get_openssl(args)
    plan = q.plan_keygen(openssl, args.bits, args.traditional)
    if plan.bits != QREDO_BITS:
        out.warn(f"Qredo documents {QREDO_BITS}-bit keys; making a {plan.bits}-bit key")
    n = _rotate.next_paths(paths)
    doc: dict[str, Any] = {
        "dir": paths.dir,
        "next_dir": n.dir,
        "private": n.private,
        "public": n.public,
        "openssl": openssl_doc(openssl, plan.traditional),
        "bits": plan.bits,
        "dry_run": args.dry_run,
        "commands": [list(c) for c in plan.commands],
    }
    t = plan.traditional
    decision = f"-traditional: {'yes' if t.use else 'no'} ({t.reason})"
    if args.dry_run:
        if out.json_mode:
            out.json(doc)
            return 0
        out.info(f"OpenSSL: {describe(openssl)}")
        out.info(decision)
        out.info(f"# run in a private temporary directory in {n.dir}, then published:")
        out.data("\n".join(shlex.join(c) for c in plan.commands))
        return 0
    out.info(f"OpenSSL: {describe(openssl)}; {decision}")
    r = _rotate.start_rotation(paths, plan)
    doc.update(fingerprint=r.fingerprint, public_pem=r.public_pem)
    if out.json_mode:
        out.json(doc)
        return 0
    out.data(r.public_pem)
    out.info(f"Wrote the next pair: {n.private} (RSA {r.bits}, PKCS#1, 0600) and {n.public}")
    out.info(f"Fingerprint: {r.fingerprint}")
    finish = f"qredo-openssl rotate finish {shlex.quote(paths.dir)}"
    out.info(
        NEXT_STEP.format(public=n.public) + f" Right after it run: {finish} (requests signed "
        "with the old key fail from the upload on).",
        style="bold",
    )
    return 0


def _pair_doc(pair: PairState | None) -> dict[str, Any] | None:
    return None if pair is None else {"fingerprint": pair.fingerprint, "since": pair.since}


def _pair_line(label: str, pair: PairState | None, none: str) -> str:
    if pair is None:
        return f"{label:<9} {none}"
    fp = pair.fingerprint or f"(no readable public key at {pair.public})"
    since = f"  since {pair.since}" if pair.since else f"  (no private key at {pair.private})"
    return f"{label:<9} {fp}{since}"


def cmd_status(args: argparse.Namespace, out: Output) -> int:
    from .. import _rotate

    paths = key_paths(args, args.dir)
    st = _rotate.rotation_status(paths)
    if out.json_mode:
        doc = {"current": _pair_doc(st.current), "next": _pair_doc(st.next)}
        out.json({**doc, "half_done": st.half_done})
        return 0
    out.data(_pair_line("current", st.current, f"none (no key in {paths.dir})"))
    out.data(_pair_line("next", st.next, "none (no rotation in progress)"))
    out.data(f"{'half-done':<9} {'yes' if st.half_done else 'no'}")
    d = shlex.quote(paths.dir)
    finish = f"qredo-openssl rotate finish {d}"
    if st.half_done:
        out.warn(f"a rotate finish was cut off half-way; complete it: {finish}")
    elif st.next is not None and (st.next.fingerprint is None or st.next.since is None):
        n = _rotate.next_paths(paths).dir
        out.warn(f"{n} holds no complete pair; drop it: qredo-openssl rotate abort {d}")
    elif st.next is not None:
        out.info(f"After uploading {_rotate.next_paths(paths).public}, run: {finish}")
    return 0


def _probe(args: argparse.Namespace) -> Callable[[q.KeyPaths], None]:
    """``--probe URL``: a signed GET with the next key, sent as ``send`` sends it."""
    from .._send import make_probe
    from .._urls import api_base

    return make_probe(
        args.probe, base=api_base(getattr(args, "api_base", None), args.dir),
        curl=getattr(args, "curl", None), openssl=getattr(args, "openssl", None),
        timeout=args.timeout, cacert=args.cacert,
    )  # fmt: skip


def cmd_finish(args: argparse.Namespace, out: Output) -> int:
    from .. import _rotate

    if args.cacert and not args.probe:
        raise UsageError("rotate finish: --cacert goes with --probe")
    probe = _probe(args) if args.probe else None
    paths = key_paths(args, args.dir)
    before = _rotate.rotation_status(paths)
    try:
        openssl: q.OpenSSL | None = get_openssl(args)
    except ToolError:
        if not before.half_done:
            raise
        openssl = None  # completing a cut-off finish needs no OpenSSL
    try:
        r = _rotate.finish_rotation(paths, openssl, probe=probe)
    except (KeyboardInterrupt, Interrupted):
        message, fix = _interrupted(paths)
        out.error(EXIT_INTERRUPTED, with_fix(message, fix), fix)
        return EXIT_INTERRUPTED
    doc: dict[str, Any] = {
        "dir": paths.dir,
        "fingerprint": r.fingerprint,
        "old_fingerprint": r.old_fingerprint,
        "backups": list(r.backups),
        "resumed": r.resumed,
        "kept_next": r.kept_next,
        "probe": args.probe,
    }
    if out.json_mode:
        out.json(doc)
        return 0
    if r.resumed:
        out.info("Completed a rotate finish that was cut off half-way")
    out.info(f"kept the old pair as {' and '.join(r.backups)}")
    if r.kept_next:
        out.info(f"{_rotate.next_paths(paths).dir} held other files too: kept as {r.kept_next}")
    was = f" (was {r.old_fingerprint})" if r.old_fingerprint else ""
    out.info(f"Rotated {paths.dir}: its key is now {r.fingerprint}{was}", style="green")
    return 0


def _interrupted(paths: q.KeyPaths) -> tuple[str, tuple[str, ...] | None]:
    """What an interrupted finish left (it holds signals while it swaps, so one of two), and
    the command that completes it when it was cut off half-way."""
    from .. import _rotate

    st = _rotate.rotation_status(paths)
    if st.half_done:  # only when cut off by other means than Ctrl-C or SIGTERM
        return "interrupted half-way; complete it", ("qredo-openssl", "rotate", "finish", paths.dir)
    if st.next is None:
        fp = st.current.fingerprint if st.current else None
        msg = f"interrupted; the rotation was completed: {paths.dir} holds the new pair ({fp})"
        return msg, None
    msg = "interrupted; nothing was changed: the old pair is in place, the next pair still waits"
    return msg, None


def cmd_abort(args: argparse.Namespace, out: Output) -> int:
    from .. import _rotate

    r = _rotate.abort_rotation(key_paths(args, args.dir))
    if out.json_mode:
        out.json({"dir": r.paths.dir, "kept": r.kept, "fingerprint": r.fingerprint})
        return 0
    what = f" ({r.fingerprint})" if r.fingerprint else ""
    out.info(f"Dropped the next pair{what}: kept as {r.kept}; {r.paths.dir}'s pair is untouched")
    return 0
