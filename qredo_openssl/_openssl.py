"""Finding and identifying OpenSSL, and the one ``-traditional`` decision.

Children are started by :mod:`._run`; nothing here imports ``sh``.
"""

from __future__ import annotations

import functools
import re
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from ._defaults import DEFAULT_TIMEOUT
from ._errors import OpenSSLError
from ._run import Completed, run, text
from ._tools import find_tool, tool_source

Flavour = Literal["OpenSSL", "LibreSSL", "unknown"]
TraditionalMode = Literal["auto", "always", "never"]

ENV_VAR = "QREDO_OPENSSL"

# The CLI's own version is the first on the line; "(Library: ...)" may follow on OpenSSL 3.
# Letters: 1.0.2k, 1.1.1w, 1.0.2zf. Suffixes: -fips, +quic, -dev, -alpha1.
_VERSION_RE = re.compile(
    r"^\s*(?P<flavour>OpenSSL|LibreSSL)\s+(?P<major>\d{1,6})\.(?P<minor>\d{1,6})"
    r"(?:\.(?P<patch>\d{1,6}))?(?P<letter>[a-z]{0,2})(?P<suffix>[^\s(]*)"
)


@dataclass(frozen=True)
class OpenSSLVersion:
    """``openssl version`` parsed; ``flavour`` is ``unknown`` when the line could not be read."""

    flavour: Flavour
    major: int | None
    minor: int | None
    patch: int | None
    letter: str
    suffix: str
    raw: str

    @property
    def number(self) -> str:
        """``3.0.7``, ``1.1.1w``; empty when unknown."""
        if self.major is None:
            return ""
        parts = [str(self.major), str(self.minor)]
        if self.patch is not None:
            parts.append(str(self.patch))
        return ".".join(parts) + self.letter

    @property
    def needs_traditional(self) -> bool | None:
        """Whether ``genrsa`` needs ``-traditional`` to write PKCS#1; None when we cannot tell.

        OpenSSL 3 ``genrsa`` writes PKCS#8 unless told otherwise; 1.x and LibreSSL write
        PKCS#1 and reject the flag ("genrsa: Unrecognized flag traditional").
        """
        if self.flavour == "OpenSSL" and self.major is not None:
            return self.major >= 3
        if self.flavour == "LibreSSL":
            return False
        return None


def parse_version(output: str) -> OpenSSLVersion:
    """Parse ``openssl version`` output; never raises."""
    line = output.strip().splitlines()[0].strip() if output.strip() else ""
    m = _VERSION_RE.match(line)
    if not m:
        return OpenSSLVersion("unknown", None, None, None, "", "", line)
    patch = m.group("patch")
    flavour: Flavour = "OpenSSL" if m.group("flavour") == "OpenSSL" else "LibreSSL"
    return OpenSSLVersion(
        flavour,
        int(m.group("major")),
        int(m.group("minor")),
        int(patch) if patch is not None else None,
        m.group("letter"),
        m.group("suffix"),
        line,
    )


def openssl_source(explicit: str | None = None, environ: Mapping[str, str] | None = None) -> str:
    """Where the binary comes from: ``--openssl``, ``QREDO_OPENSSL`` or ``PATH``."""
    return tool_source("--openssl", ENV_VAR, explicit, environ)


def find_openssl(explicit: str | None = None, environ: Mapping[str, str] | None = None) -> str:
    """Resolve the binary: ``explicit`` (``--openssl``), else ``$QREDO_OPENSSL``, else ``PATH``."""
    return find_tool(
        "openssl", "--openssl", ENV_VAR, explicit, environ, error=OpenSSLError, label="OpenSSL"
    )


class OpenSSL:
    """A resolved OpenSSL binary and its parsed version.

    Made with no ``version``, it asks ``openssl version`` on first use of :attr:`version`
    (once, whichever thread asks first), and an OpenSSL that prints no version raises then:
    a command that may never need the version (``check`` of a sound pair, ``send``) runs one
    child fewer. Read-only; equal only to itself.
    """

    __slots__ = ("_failure", "_lock", "_version", "path", "source", "timeout")

    def __init__(
        self,
        path: str,
        version: OpenSSLVersion | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        source: str = "PATH",  # --openssl, QREDO_OPENSSL or PATH: where ``path`` came from
    ) -> None:
        self.path = path
        self.timeout = timeout
        self.source = source
        self._version = version
        self._failure: OpenSSLError | None = None
        self._lock = threading.Lock()

    @property
    def version(self) -> OpenSSLVersion:
        with self._lock:
            failed = self._failure
            if failed is not None:  # asked once: a hung binary costs one timeout, not N
                raise OpenSSLError(str(failed), argv=failed.argv, returncode=failed.returncode,
                                   stderr=failed.stderr, timed_out=failed.timed_out)  # fmt: skip
            if self._version is None:
                try:
                    self._version = read_version(self.path, self.timeout)
                except OpenSSLError as exc:
                    killed = exc.returncode is not None and exc.returncode < 0
                    if exc.timed_out or not killed:  # killed by us (Ctrl-C): ask again later
                        self._failure = exc
                    raise
            return self._version

    def __repr__(self) -> str:
        known = repr(self._version.raw) if self._version is not None else "not read yet"
        return f"OpenSSL({self.path!r}, version {known}, from {self.source})"

    def run(
        self,
        *args: str,
        stdin: bytes = b"",
        cwd: str | None = None,
        ok_codes: Iterable[int] = (0,),
        extra_env: Mapping[str, str] | None = None,
    ) -> Completed:
        return run(
            self.path, args, error=OpenSSLError, stdin=stdin, cwd=cwd, timeout=self.timeout,
            ok_codes=ok_codes, extra_env=extra_env,
        )  # fmt: skip


def read_version(path: str, timeout: float = DEFAULT_TIMEOUT) -> OpenSSLVersion:
    """``path version``, parsed; an OpenSSL that prints no version is an :class:`OpenSSLError`."""
    out = run(path, ["version"], error=OpenSSLError, timeout=timeout)
    if not out.stdout.strip():  # e.g. /bin/true: runs, says nothing, is no OpenSSL
        msg = f"{path} printed no version for 'openssl version': is it OpenSSL?"
        raise OpenSSLError(msg, argv=out.argv, returncode=out.returncode, stderr=text(out.stderr))
    return parse_version(text(out.stdout))


def detect_openssl(
    explicit: str | None = None, *, timeout: float = DEFAULT_TIMEOUT, lazy: bool = False
) -> OpenSSL:
    """Find OpenSSL (``--openssl``, ``$QREDO_OPENSSL``, ``PATH``) and read its version (with
    ``lazy``: on first use, see :class:`OpenSSL`)."""
    source = openssl_source(explicit)
    path = find_openssl(explicit)
    return OpenSSL(path, None if lazy else read_version(path, timeout), timeout, source)


@dataclass(frozen=True)
class TraditionalDecision:
    """Whether ``genrsa`` gets ``-traditional``, and why (shown by ``doctor`` and ``--dry-run``)."""

    use: bool
    reason: str


@functools.lru_cache(maxsize=16)
def decide_traditional(openssl: OpenSSL, mode: TraditionalMode = "auto") -> TraditionalDecision:
    """Decide ``-traditional``: OpenSSL >= 3 only, unless ``mode`` overrides.

    The one place this is decided (keygen's plan, ``convert``, the checks' fix hints), once
    per OpenSSL. When the version line cannot be read, ask ``openssl genrsa -help`` instead
    of guessing.
    """
    if mode == "always":
        return TraditionalDecision(True, "--traditional always")
    if mode == "never":
        return TraditionalDecision(False, "--traditional never")
    v = openssl.version
    needs = v.needs_traditional
    if needs is not None:
        if needs:
            why = f"{v.flavour} {v.number} >= 3 writes PKCS#8 without it"
            return TraditionalDecision(True, why)
        return TraditionalDecision(False, f"{v.flavour} {v.number} writes PKCS#1 and rejects it")
    # 1.0.2 exits 1 on -help after printing usage; the text is what matters.
    out = openssl.run("genrsa", "-help", ok_codes=range(256))
    listed = b"-traditional" in out.stdout + out.stderr
    said = "lists" if listed else "does not list"
    return TraditionalDecision(listed, f"version unknown; 'openssl genrsa -help' {said} it")


def traditional_args(openssl: OpenSSL, mode: TraditionalMode = "auto") -> tuple[str, ...]:
    """``("-traditional",)`` where OpenSSL needs it to write PKCS#1, else ``()``."""
    return ("-traditional",) if decide_traditional(openssl, mode).use else ()
