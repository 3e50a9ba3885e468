"""Finding, identifying and running the OpenSSL binary: the one place a child process starts.

``sh`` is imported inside :func:`run_openssl` only: it pulls in asyncio (about 0.1 s), which
commands that never call OpenSSL (``--version``, ``--help``) must not pay for.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import re
import shutil
import sys
import threading
import types
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from ._defaults import DEFAULT_TIMEOUT
from ._errors import BadInputError, OpenSSLError

if TYPE_CHECKING:
    from concurrent.futures import Future

    import sh

Flavour = Literal["OpenSSL", "LibreSSL", "unknown"]
TraditionalMode = Literal["auto", "always", "never"]
T = TypeVar("T")
R = TypeVar("R")

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


def child_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment for an OpenSSL child: the caller's, with messages in the C locale."""
    env = dict(environ)
    env["LC_ALL"] = "C"
    return env


def openssl_source(explicit: str | None = None, environ: Mapping[str, str] | None = None) -> str:
    """Where the binary comes from: ``--openssl``, ``QREDO_OPENSSL`` or ``PATH``."""
    environ = os.environ if environ is None else environ
    if explicit:
        return "--openssl"
    return ENV_VAR if environ.get(ENV_VAR) else "PATH"


def find_openssl(explicit: str | None = None, environ: Mapping[str, str] | None = None) -> str:
    """Resolve the binary: ``explicit`` (``--openssl``), else ``$QREDO_OPENSSL``, else ``PATH``."""
    environ = os.environ if environ is None else environ
    origin = openssl_source(explicit, environ)
    name = {"--openssl": explicit, ENV_VAR: environ.get(ENV_VAR)}.get(origin) or "openssl"
    if os.sep in name:
        found = name if os.path.isfile(name) and os.access(name, os.X_OK) else None
    else:
        found = shutil.which(name, path=environ.get("PATH", os.defpath))
    if not found:
        where = "on PATH" if origin == "PATH" else f"at {name} (from {origin})"
        msg = f"OpenSSL not found {where}; install it or pass --openssl PATH"
        raise OpenSSLError(msg)
    return os.path.abspath(found)


@dataclass(frozen=True)
class Completed:
    """A finished OpenSSL run: argv as run (argv[0] is the binary's path), stdout, stderr."""

    argv: tuple[str, ...]
    returncode: int
    stdout: bytes
    stderr: bytes


_live: dict[int, Any] = {}  # id -> sh RunningCommand (not hashable)
_live_lock = threading.Lock()
_stopping = threading.Event()


@contextlib.contextmanager
def killing_children() -> Iterator[None]:
    """Kill every OpenSSL child now, and any started before the block ends (Ctrl-C, SIGTERM).

    A worker thread may be between fork and registration when the interrupt lands: the
    flag catches its child. The block is where the caller waits for its workers.
    """
    with _live_lock:
        _stopping.set()
        procs = list(_live.values())
    try:
        for proc in procs:
            with contextlib.suppress(OSError):  # already gone
                proc.kill()
        yield
    finally:
        _stopping.clear()


def map_in_threads(
    fn: Callable[[T], R],
    items: Sequence[T],
    *,
    jobs: int | None = None,
    stop: threading.Event | None = None,
    on_result: Callable[[R], None] | None = None,
) -> list[R]:
    """``fn`` over ``items`` on a thread pool (``jobs``, default: CPU count), results in order.

    ``on_result`` is called in input order as results arrive, so output can stream. On
    Ctrl-C or SIGTERM in the waiting thread: ``stop`` is set, pending items are cancelled,
    every OpenSSL child is killed, and the workers are waited for (they clean up) before
    the interrupt propagates.
    """
    if not items:
        return []
    # Here, not at the top: concurrent.futures brings logging (~15 ms) to every start-up.
    from concurrent.futures import ThreadPoolExecutor

    workers = max(1, min(jobs or os.cpu_count() or 1, len(items)))
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="qredo-openssl")
    futures = [pool.submit(fn, item) for item in items]
    results: list[R] = []
    try:
        for f in futures:
            results.append(_result_interruptibly(f))
            if on_result is not None:
                on_result(results[-1])
    except BaseException:
        if stop is not None:
            stop.set()
        for f in futures:
            f.cancel()
        with killing_children():
            pool.shutdown(wait=True)
        raise
    pool.shutdown(wait=True)
    return results


def _result_interruptibly(future: Future[R]) -> R:
    # A signal may land on any thread (sh runs reader threads); CPython then runs the
    # handler only when the main thread next wakes, and a plain result() may never wake.
    from concurrent.futures import TimeoutError as FutureTimeout

    while True:
        try:
            return future.result(timeout=0.1)
        except FutureTimeout:
            continue


def _umask_077() -> None:
    # Runs in the child between fork and exec: every file OpenSSL creates is 0600 from birth.
    os.umask(0o077)


class _AsyncioOnDemand(types.ModuleType):
    """Stands in for ``asyncio`` while ``sh`` is imported; the real module loads on first use.

    sh 2.x imports asyncio (with ssl, socket, concurrent.futures...) at its top: about 60 ms
    of its ~100 ms import on a 2-core machine. It uses asyncio only for ``_async=True``
    commands, which we never run, and to ask ``get_running_loop()`` on every command (both
    callers catch the ``RuntimeError`` that means "no loop"). At import it binds just the
    module and ``Queue`` (as ``AQueue``, only ever called to make a queue). Everything
    forwards to the real asyncio, so ``_async`` sh commands elsewhere in the process work
    (tests/test_imports.py runs one). A thread importing asyncio in the few milliseconds
    while sh loads gets this forwarding stand-in too.
    """

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):  # import machinery probes (__path__ ...): not asyncio's API
            raise AttributeError(name)
        return getattr(_real_asyncio(), name)

    @staticmethod
    def Queue(*args: Any, **kwargs: Any) -> Any:  # asyncio's name, as sh imports it
        return _real_asyncio().Queue(*args, **kwargs)

    @staticmethod
    def get_running_loop() -> Any:
        # No event loop can be running in a process that never imported asyncio: answer as
        # asyncio itself would, without importing it.
        if "asyncio" not in sys.modules:
            msg = "no running event loop"
            raise RuntimeError(msg)
        return _real_asyncio().get_running_loop()


def _real_asyncio() -> types.ModuleType:
    if isinstance(sys.modules.get("asyncio"), _AsyncioOnDemand):  # used while sh loads
        del sys.modules["asyncio"]
    return importlib.import_module("asyncio")


_sh_lock = threading.Lock()


def _sh() -> Any:
    # Deliberately late (see the module docstring); the lock keeps a second thread from
    # seeing a half-imported sh or the stand-in below.
    with _sh_lock:
        if "sh" in sys.modules or "asyncio" in sys.modules:
            import sh
        else:
            stand_in = _AsyncioOnDemand("asyncio")
            sys.modules["asyncio"] = stand_in
            try:
                import sh
            finally:
                if sys.modules.get("asyncio") is stand_in:
                    del sys.modules["asyncio"]
    return sh


def run_openssl(
    openssl: str,
    args: Sequence[str],
    *,
    stdin: bytes = b"",
    cwd: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    ok_codes: Iterable[int] = (0,),
    environ: Mapping[str, str] | None = None,
) -> Completed:
    """Run ``openssl ARGS`` without a terminal; data (never secrets in argv) goes in on stdin.

    Any failure becomes :class:`OpenSSLError` carrying argv, exit code and OpenSSL's stderr.
    """
    argv = (openssl, *args)
    for arg in argv:
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError:  # a file name in another encoding: sh passes argv as UTF-8
            shown = arg.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
            msg = f"{shown!r} is not a UTF-8 name, which OpenSSL cannot be given; rename it"
            raise BadInputError(msg) from None
    sh_mod = _sh()
    env = child_env(os.environ if environ is None else environ)
    try:
        command: sh.Command = sh_mod.Command(openssl)
        proc = command(
            *args,
            _in=stdin,
            _cwd=cwd,
            _env=env,
            _tty_out=False,
            _return_cmd=True,
            _bg=True,
            _bg_exc=False,
            _truncate_exc=False,
            _ok_code=list(ok_codes),
            _preexec_fn=_umask_077,
        )
    except sh_mod.CommandNotFound:
        msg = f"OpenSSL not found or not executable: {openssl}"
        raise OpenSSLError(msg, argv=argv) from None
    except OSError as exc:
        msg = f"cannot run {openssl}: {exc.strerror or exc}"
        raise OpenSSLError(msg, argv=argv) from None
    except sh_mod.ForkException as exc:  # exec failed in the child, e.g. "Exec format error"
        why = str(exc).strip().splitlines()[-1].strip()
        msg = f"cannot run {openssl}: {why}"
        raise OpenSSLError(msg, argv=argv) from None
    with _live_lock:
        _live[id(proc)] = proc
        if _stopping.is_set():
            proc.kill()
    # Our own timer, not sh's ``_timeout``: sh polls that every 0.1 s and joins the poller
    # after the child exits, which adds up to 100 ms to every run (an ``openssl dgst -sign``
    # takes about 15 ms). The timer costs nothing unless it fires.
    expired = threading.Event()

    def expire() -> None:
        expired.set()
        with contextlib.suppress(OSError):  # exited meanwhile
            proc.kill()

    timer = threading.Timer(timeout, expire)
    timer.daemon = True
    timer.start()
    try:
        proc.wait()
    except sh_mod.ErrorReturnCode as exc:
        if expired.is_set():
            msg = f"{_show(args)} timed out after {timeout:g} s and was killed"
            raise OpenSSLError(msg, argv=argv) from None
        stderr = _text(exc.stderr)
        code = exc.exit_code
        how = f"was killed by signal {-code}" if code < 0 else f"failed (exit {code})"
        msg = f"{_show(args)} {how}" + (f": {headline(stderr)}" if stderr.strip() else "")
        raise OpenSSLError(msg, argv=argv, returncode=code, stderr=stderr) from None
    except BaseException:
        proc.kill()
        raise
    finally:
        timer.cancel()
        with _live_lock:
            _live.pop(id(proc), None)
    return Completed(argv, proc.exit_code, bytes(proc.stdout), bytes(proc.stderr))


def _text(data: bytes | str) -> str:
    return data.decode("utf-8", "replace") if isinstance(data, bytes) else data


def headline(stderr: str) -> str:
    """The first non-empty line of OpenSSL's stderr: where it says what went wrong in words."""
    lines = [line.strip() for line in stderr.strip().splitlines() if line.strip()]
    # OpenSSL 3 ends with error-stack lines like "40F7...:error:...:crypto/..."; the first
    # line usually says what went wrong in words, so show that one.
    return lines[0] if lines else ""


def _show(args: Sequence[str]) -> str:
    return "openssl " + " ".join(args[:1])


@dataclass(frozen=True)
class OpenSSL:
    """A resolved OpenSSL binary and its parsed version."""

    path: str
    version: OpenSSLVersion
    timeout: float = DEFAULT_TIMEOUT

    def run(
        self,
        *args: str,
        stdin: bytes = b"",
        cwd: str | None = None,
        ok_codes: Iterable[int] = (0,),
    ) -> Completed:
        return run_openssl(
            self.path, args, stdin=stdin, cwd=cwd, timeout=self.timeout, ok_codes=ok_codes
        )


def detect_openssl(explicit: str | None = None, *, timeout: float = DEFAULT_TIMEOUT) -> OpenSSL:
    """Find OpenSSL (``--openssl``, ``$QREDO_OPENSSL``, ``PATH``) and read its version."""
    path = find_openssl(explicit)
    out = run_openssl(path, ["version"], timeout=timeout)
    if not out.stdout.strip():  # e.g. /bin/true: runs, says nothing, is no OpenSSL
        msg = f"{path} printed no version for 'openssl version': is it OpenSSL?"
        raise OpenSSLError(msg, argv=out.argv, returncode=out.returncode, stderr=_text(out.stderr))
    return OpenSSL(path, parse_version(_text(out.stdout)), timeout)


@dataclass(frozen=True)
class TraditionalDecision:
    """Whether ``genrsa`` gets ``-traditional``, and why (shown by ``doctor`` and ``--dry-run``)."""

    use: bool
    reason: str


def decide_traditional(openssl: OpenSSL, mode: TraditionalMode = "auto") -> TraditionalDecision:
    """Decide ``-traditional``: OpenSSL >= 3 only, unless ``mode`` overrides.

    When the version line cannot be read, ask ``openssl genrsa -help`` instead of guessing.
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
