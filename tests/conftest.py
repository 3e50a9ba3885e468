"""Shared fixtures: real keys made once with the system OpenSSL, and fake ``openssl`` programs.

A fake is a small ``sh`` script written into ``tmp_path``. It logs every argv (one line per
call, arguments separated by tabs), answers ``version`` with the line it was given, and plays
``genrsa`` the way that OpenSSL would: 1.x and LibreSSL reject ``-traditional``; 3.x writes
PKCS#8 unless given it. Key material is copied from keys the real OpenSSL made once per
session, so tests stay fast; every other command is passed on to the real OpenSSL.
"""

from __future__ import annotations

import io
import os
import shlex
import shutil
import stat
import subprocess
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

REAL_OPENSSL = shutil.which("openssl")

VERSIONS = {
    "1.0.2": "OpenSSL 1.0.2k-fips  26 Jan 2017",
    "1.1.1": "OpenSSL 1.1.1w  11 Sep 2023",
    "3.0": "OpenSSL 3.0.7 1 Nov 2022",
    "3.5": "OpenSSL 3.5.0 8 Apr 2025 (Library: OpenSSL 3.5.0 8 Apr 2025)",
    "quictls": "OpenSSL 3.1.5+quic 30 Jan 2024",
    "libressl": "LibreSSL 3.3.6",
    "garbage": "Welcome to BoringSSL, have a nice day",
}
# Whether each of the above has (and so must get) -traditional.
HAS_TRADITIONAL = {
    "1.0.2": False,
    "1.1.1": False,
    "3.0": True,
    "3.5": True,
    "quictls": True,
    "libressl": False,
    "garbage": True,  # detected by probing ``genrsa -help``
}


@dataclass
class Keys:
    """One 2048-bit key in several forms, made by the real OpenSSL."""

    dir: Path
    pkcs1: Path
    pkcs8: Path
    public: Path


def _openssl(*args: str, cwd: Path | None = None) -> None:
    assert REAL_OPENSSL
    subprocess.run([REAL_OPENSSL, *args], check=True, capture_output=True, cwd=cwd)


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    if REAL_OPENSSL is None:
        pytest.skip("no system openssl")
    d = tmp_path_factory.mktemp("keys")
    _openssl("genrsa", "-out", "pkcs8.pem", "2048", cwd=d)
    _openssl("pkey", "-in", "pkcs8.pem", "-out", "pkcs8.pem.tmp", cwd=d)
    os.replace(d / "pkcs8.pem.tmp", d / "pkcs8.pem")  # PKCS#8 on every OpenSSL 3
    _openssl("rsa", "-in", "pkcs8.pem", "-traditional", "-out", "pkcs1.pem", cwd=d)
    _openssl("rsa", "-in", "pkcs1.pem", "-pubout", "-out", "public.pem", cwd=d)
    return Keys(d, d / "pkcs1.pem", d / "pkcs8.pem", d / "public.pem")


@dataclass
class FreshKeygen:
    """What one real ``qredo-openssl keygen DIR`` wrote and said (run once per session)."""

    dir: Path
    result: subprocess.CompletedProcess[str]


@pytest.fixture(scope="session")
def fresh_keygen(tmp_path_factory: pytest.TempPathFactory, keys: Keys) -> FreshKeygen:
    """A real keygen with the system OpenSSL, shared by the tests that only read its output."""
    d = tmp_path_factory.mktemp("fresh") / "keys"
    return FreshKeygen(d, run_cli("keygen", str(d)))


# "real_openssl" means: needs the system OpenSSL. Every test using one of these fixtures gets
# the marker (the fakes pass everything they do not play on to the real binary); a test that
# runs it another way carries the marker itself. ``-m "not real_openssl"`` passes with no
# OpenSSL installed at all (the marked tests are then skipped).
NEEDS_OPENSSL = frozenset({"keys", "make_fake", "openssl"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    no_openssl = pytest.mark.skip(reason="needs the system OpenSSL: none on PATH")
    for item in items:
        if NEEDS_OPENSSL & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.real_openssl)
        if REAL_OPENSSL is None and item.get_closest_marker("real_openssl"):
            item.add_marker(no_openssl)


@dataclass
class Fake:
    """A fake ``openssl`` program and the log of every argv it was run with."""

    path: Path
    log: Path

    def calls(self) -> list[list[str]]:
        if not self.log.exists():
            return []
        return [line.split("\t") for line in self.log.read_text().splitlines()]


FAKE_TEMPLATE = r"""#!/bin/sh
# fake openssl: {version}
log={log}
{{ sep=; for a in "$@"; do printf '%s%s' "$sep" "$a"; sep='	'; done; printf '\n'; }} >> "$log"
cmd="$1"
case "$cmd" in
  version)
    {version_action}
    exit 0
    ;;
  genrsa)
    for a in "$@"; do
      if [ "$a" = "-help" ]; then
        echo "Usage: genrsa [options] numbits" >&2
        {help_line}
        exit {help_exit}
      fi
    done
    trad=no; out=
    prev=
    for a in "$@"; do
      [ "$a" = "-traditional" ] && trad=yes
      [ "$prev" = "-out" ] && out="$a"
      prev="$a"
    done
    if [ $trad = yes ] && [ {has_traditional} = no ]; then
      echo "genrsa: Unrecognized flag traditional" >&2
      echo "genrsa: Use -help for summary." >&2
      exit 1
    fi
    {genrsa_action}
    echo "Generating RSA private key, 2048 bit long modulus (2 primes)" >&2
    if [ $trad = yes ] || [ {has_traditional} = no ]; then src={pkcs1}; else src={pkcs8}; fi
    cat "$src" > "$out"
    exit 0
    ;;
esac
exec {real} "$@"
"""


@pytest.fixture
def make_fake(tmp_path: Path, keys: Keys) -> Callable[..., Fake]:
    """Factory: ``make_fake("3.0", genrsa_action="exit 1")`` returns a :class:`Fake`."""
    counter = iter(range(1000))

    def make(
        flavour: str = "3.0",
        *,
        version_line: str | None = None,
        version_action: str | None = None,
        genrsa_action: str = "",
        has_traditional: bool | None = None,
    ) -> Fake:
        n = next(counter)
        path = tmp_path / f"fake-openssl-{n}" / "openssl"
        path.parent.mkdir()
        log = tmp_path / f"fake-openssl-{n}.log"
        line = VERSIONS.get(flavour, flavour) if version_line is None else version_line
        has = HAS_TRADITIONAL.get(flavour, True) if has_traditional is None else has_traditional
        script = FAKE_TEMPLATE.format(
            version=line,
            log=shlex.quote(str(log)),
            version_action=version_action or f"echo {shlex.quote(line)}",
            help_line=' echo " -traditional        Use traditional format for private keys" >&2'
            if has
            else ":",
            help_exit=0 if has else 1,
            has_traditional="yes" if has else "no",
            genrsa_action=genrsa_action,
            pkcs1=shlex.quote(str(keys.pkcs1)),
            pkcs8=shlex.quote(str(keys.pkcs8)),
            real=shlex.quote(str(REAL_OPENSSL)),
        )
        path.write_text(script)
        path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        return Fake(path, log)

    return make


def spawn_cli(
    *args: str,
    env: dict[str, str] | None = None,
    input: bytes | None = None,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m qredo_openssl ARGS`` in a real subprocess: for signals, imports, pipes."""
    full_env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "NO_COLOR")}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "qredo_openssl", *args],
        input=input.decode() if input is not None else None,
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd,
        timeout=120,
    )


class _Sink(io.BytesIO):
    """A captured stream whose bytes outlive the text wrapper that closes it."""

    def close(self) -> None:
        pass


def run_cli(
    *args: str,
    env: dict[str, str] | None = None,
    input: bytes | None = None,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run the CLI's ``main(ARGS)`` in this process, as a child would see it, and fast.

    Standard streams, the environment and the working directory are swapped for the call and
    restored after; stdin is ``input`` (empty by default). An exception escaping ``main``
    (which a user would see as a traceback) comes back as exit 1 with the traceback on stderr,
    so that "no traceback" assertions keep their teeth. ``spawn_cli`` is the real process.
    """
    from qredo_openssl._cli import main

    saved_env = dict(os.environ)
    saved = (sys.stdin, sys.stdout, sys.stderr)
    old_cwd = os.getcwd()
    out, err = _Sink(), _Sink()
    sys.stdin = io.TextIOWrapper(io.BytesIO(input or b""), encoding="utf-8")
    sys.stdout = io.TextIOWrapper(out, encoding="utf-8", errors="surrogateescape")
    sys.stderr = io.TextIOWrapper(err, encoding="utf-8", errors="backslashreplace")
    try:
        for k in ("FORCE_COLOR", "NO_COLOR"):
            os.environ.pop(k, None)
        os.environ.update(env or {})
        if cwd is not None:
            os.chdir(cwd)
        try:
            code = main(list(args))
        except SystemExit as exc:  # --help, --version
            code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
        except BaseException:  # noqa: BLE001 -- what a user would see as a traceback
            traceback.print_exc()
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        sys.stdin, sys.stdout, sys.stderr = saved
        os.chdir(old_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
    text = {"encoding": "utf-8", "errors": "replace"}
    return subprocess.CompletedProcess(
        ["qredo-openssl", *args], code, out.getvalue().decode(**text), err.getvalue().decode(**text)
    )
