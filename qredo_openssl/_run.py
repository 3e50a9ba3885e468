"""The one place a child process starts: ``sh``, timeouts, kill and reap, umask 077, C locale.

``sh`` is imported on the first run only (:func:`._shload.load_sh`): commands that never run a child
(``--version``, ``--help``) do not pay for it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from ._defaults import DEFAULT_TIMEOUT
from ._errors import BadInputError, QredoOpenSSLError, ToolError
from ._shload import load_sh

if TYPE_CHECKING:
    from concurrent.futures import Future

    import sh

T = TypeVar("T")
R = TypeVar("R")


SECRET_ENV = frozenset({"QREDO_APIKEY", "QREDO_PKCS11_PIN"})


def child_env(
    environ: Mapping[str, str], extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The environment for a child: the caller's, plus ``extra``, with messages in the C locale.

    The secrets this tool reads from the environment (:data:`SECRET_ENV`: the API key, the
    token PIN) reach a child only when ``extra`` hands them to it (the PIN for ``-passin
    env:``), so an OpenSSL or curl run that has no use for them never holds them.
    """
    env = {k: v for k, v in environ.items() if k not in SECRET_ENV}
    env.update(extra or {})
    env["LC_ALL"] = "C"
    return env


@dataclass(frozen=True)
class Completed:
    """A finished child run: argv as run (argv[0] is the binary's path), stdout, stderr."""

    argv: tuple[str, ...]
    returncode: int
    stdout: bytes
    stderr: bytes


_live: dict[int, Any] = {}  # id -> sh RunningCommand (not hashable)
_pidfds: dict[int, int] = {}  # id -> a pidfd of that child (Linux 5.3+, Python 3.9+)
_live_lock = threading.Lock()
_stopping = threading.Event()


@contextlib.contextmanager
def killing_children() -> Iterator[None]:
    """Kill every OpenSSL child now, and any started before the block ends (Ctrl-C, SIGTERM).

    A worker thread may be between fork and registration when the interrupt lands: the
    flag catches its child. The block is where the caller waits for its workers.
    """
    try:  # set inside: a second interrupt right after it still clears it on the way out
        with _live_lock:
            _stopping.set()
            procs = list(_live.values())
        for proc in procs:
            _kill(proc)
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


def run(
    path: str,
    args: Sequence[str],
    *,
    tool: str = "openssl",
    error: type[ToolError] = ToolError,
    stdin: bytes = b"",
    cwd: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    ok_codes: Iterable[int] = (0,),
    environ: Mapping[str, str] | None = None,
    extra_env: Mapping[str, str] | None = None,
) -> Completed:
    """Run ``path ARGS`` without a terminal; data (never secrets in argv) goes in on stdin.

    ``tool`` names the program in messages (``openssl``, ``curl``); any failure becomes
    ``error`` (a :class:`ToolError`, exit 3) carrying argv, exit code and the child's stderr.
    ``extra_env`` adds variables for this child only (a PIN for ``-passin env:``).
    """
    argv = (path, *args)
    for arg in argv:
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError:  # a file name in another encoding: sh passes argv as UTF-8
            shown = arg.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
            msg = f"{shown!r} is not a UTF-8 name, which {tool} cannot be given; rename it"
            raise BadInputError(msg) from None
    sh_mod = load_sh()
    env = child_env(os.environ if environ is None else environ, extra_env)
    proc: Any = None
    reaped = False
    try:
        with _signals_held() as held:
            proc = _start(sh_mod, path, args, argv, tool, error, stdin, cwd, env, ok_codes)
            if held:  # Ctrl-C or SIGTERM while the child was being started: it goes, reaped
                _kill_and_reap(proc)
                reaped = True
        # (leaving the block above sent a held signal again, to the caller's own handler)
        return _wait(proc, argv, tool, error, timeout, sh_mod)
    except QredoOpenSSLError:
        raise  # the child has exited (or was never started)
    except BaseException:  # Ctrl-C, SIGTERM, wherever it lands: the child goes too, reaped
        if proc is not None and not reaped:
            _kill_and_reap(proc)
        raise
    finally:
        if proc is not None:
            with _live_lock:
                _live.pop(id(proc), None)
                fd = _pidfds.pop(id(proc), None)
                if fd is not None and fd != _REAPED:
                    os.close(fd)


def _wait(
    proc: Any,
    argv: tuple[str, ...],
    tool: str,
    error: type[ToolError],
    timeout: float,
    sh_mod: Any,
) -> Completed:
    """Wait for a started child, killing it after ``timeout``; its failure becomes ``error``."""
    # Our own timer, not sh's ``_timeout``: sh polls that every 0.1 s and joins the poller
    # after the child exits, which adds up to 100 ms to every run (an ``openssl dgst -sign``
    # takes about 15 ms). The timer costs nothing unless it fires.
    expired = threading.Event()

    def expire() -> None:
        expired.set()
        _kill(proc)

    timer = threading.Timer(timeout, expire)
    timer.daemon = True
    timer.start()
    args = argv[1:]
    shown = f"{tool} {args[0]}" if args else tool
    try:
        proc.wait()
    except sh_mod.ErrorReturnCode as exc:
        if expired.is_set():
            msg = f"{shown} timed out after {timeout:g} s and was killed"
            raise error(msg, argv=argv, timed_out=True) from None
        stderr = text(exc.stderr)
        code = exc.exit_code
        how = f"was killed by signal {-code}" if code < 0 else f"failed (exit {code})"
        msg = f"{shown} {how}" + (f": {headline(stderr)}" if stderr.strip() else "")
        raise error(msg, argv=argv, returncode=code, stderr=stderr) from None
    finally:
        timer.cancel()
    return Completed(argv, proc.exit_code, bytes(proc.stdout), bytes(proc.stderr))


def _kill(proc: Any) -> None:
    """SIGKILL a child of ours, through its pidfd where there is one.

    sh's own ``kill()`` is ``os.kill(pid)``: once the child has exited and been reaped (by
    ``wait`` in another thread), that pid may already be another process's. A pidfd names
    this child only; signalling a reaped one fails (ESRCH), harmlessly.
    """
    with _live_lock:  # held while signalling: run() closes the fd only under it
        if id(proc) not in _live:
            return  # run() is done with it: reaped, and its pidfd closed
        fd = _pidfds.get(id(proc))
        if fd == _REAPED:
            return
        with contextlib.suppress(OSError):  # it exited (and was reaped) meanwhile
            if fd is None:
                proc.kill()
            else:
                signal.pidfd_send_signal(fd, signal.SIGKILL)  # type: ignore[attr-defined,unused-ignore]


_REAPED = -1  # in _pidfds: the child was gone before its pidfd could be opened


def _open_pidfd(pid: int) -> int | None:
    """A pidfd of ``pid``; ``_REAPED`` if it is gone; None where there are no pidfds (not
    Linux >= 5.3 with Python >= 3.9: ``os.kill`` then)."""
    try:
        return os.pidfd_open(pid)  # type: ignore[attr-defined,no-any-return,unused-ignore]
    except ProcessLookupError:
        return _REAPED
    except (AttributeError, OSError):
        return None


def _kill_and_reap(proc: Any) -> None:
    _kill(proc)
    with contextlib.suppress(Exception):  # sh reports the killed child as an error: expected
        proc.wait()


_HELD_SIGNALS: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def _signals_held() -> Iterator[list[int]]:
    """Hold Ctrl-C and SIGTERM while a child is started in the main thread, then re-send.

    A handler raising inside sh's start (after the fork, before we have the process) would
    leave the child running, unknown to us. Held here, the caller kills and reaps it, and
    the signal is sent again on the way out, to whatever handler was there: nothing is
    swallowed. In other threads nothing is held: handlers run in the main thread, and
    ``killing_children`` catches a worker's child.
    """
    held: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield held
        return
    saved: dict[int, Any] = {}
    for sig in _HELD_SIGNALS:
        handler = signal.getsignal(sig)
        if callable(handler):  # a Python handler; SIG_IGN and SIG_DFL are left alone
            saved[sig] = handler
            signal.signal(sig, lambda signum, frame: held.append(signum))
    try:
        yield held
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
        if held:
            os.kill(os.getpid(), held[0])  # delivered now, to the handler just restored


def _start(
    sh_mod: Any,
    path: str,
    args: Sequence[str],
    argv: tuple[str, ...],
    tool: str,
    error: type[ToolError],
    stdin: bytes,
    cwd: str | None,
    env: dict[str, str],
    ok_codes: Iterable[int],
) -> Any:
    """Start ``path ARGS`` in the background through sh, registered for ``killing_children``."""
    try:
        command: sh.Command = sh_mod.Command(path)
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
        msg = f"{tool} not found or not executable: {path}"
        raise error(msg, argv=argv) from None
    except OSError as exc:
        msg = f"cannot run {path}: {exc.strerror or exc}"
        raise error(msg, argv=argv) from None
    except sh_mod.ForkException as exc:  # exec failed in the child, e.g. "Exec format error"
        _reap_failed_fork(exc)
        why = str(exc).strip().splitlines()[-1].strip()
        msg = f"cannot run {path}: {why}"
        raise error(msg, argv=argv) from None
    # Opened at once, before the child can have been reaped, unless it exited in this very
    # instant (then there is nothing left to kill).
    fd = _open_pidfd(proc.pid)
    with _live_lock:
        _live[id(proc)] = proc
        if fd is not None:
            _pidfds[id(proc)] = fd
        stopping = _stopping.is_set()
    if stopping:
        _kill(proc)
    return proc


def _reap_failed_fork(exc: BaseException) -> None:
    """Reap the child whose exec failed: sh reports it but leaves it a zombie.

    Its pid is known only to sh's process object, found in the traceback (the deepest
    ``self`` with a ``pid``); if sh ever changes that, the zombie stays until we exit.
    """
    pid = None
    tb = exc.__traceback__
    while tb is not None:
        found = getattr(tb.tb_frame.f_locals.get("self"), "__dict__", {}).get("pid")
        pid = found if isinstance(found, int) and found > 0 else pid
        tb = tb.tb_next
    if pid is not None:
        with contextlib.suppress(ChildProcessError):  # reaped already
            os.waitpid(pid, 0)


def text(data: bytes | str) -> str:
    return data.decode("utf-8", "replace") if isinstance(data, bytes) else data


def headline(stderr: str) -> str:
    """The first non-empty line of OpenSSL's stderr: where it says what went wrong in words."""
    lines = [line.strip() for line in stderr.strip().splitlines() if line.strip()]
    # OpenSSL 3 ends with error-stack lines like "40F7...:error:...:crypto/..."; the first
    # line usually says what went wrong in words, so show that one.
    return lines[0] if lines else ""
