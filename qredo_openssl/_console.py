"""The console script: signal handlers and the core limit first, then the CLI.

Set here and not in :func:`qredo_openssl._cli.main`, so that in-process callers and tests
keep their own handlers and limits.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from types import FrameType
from typing import Any

from ._errors import EXIT_INTERRUPTED, Interrupted

_received: list[int] = []  # every SIGINT/SIGTERM seen, even one a library swallowed
_ending: list[bool] = []  # set on the way out: from then on a signal is only recorded


def _terminate(signum: int, frame: FrameType | None) -> None:
    _received.append(signum)
    if _ending:
        return  # nothing left to interrupt; the exit code will say it
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise Interrupted


def _swallowed(unraisable: Any) -> None:
    """``sys.unraisablehook``: an interrupt raised where Python cannot propagate it.

    A handler that fires inside a weakref callback or a ``__del__`` (importlib's module locks
    have one) would only be printed, with a traceback, and the run would go on. It is sent
    again instead, from another thread once this callback is over, to land where it can stop
    the run (a few times at most); the exit code is 130 either way (``_received``).
    """
    if isinstance(unraisable.exc_value, (KeyboardInterrupt, Interrupted)) and _received:
        if len(_received) < 4 and not _ending:
            import threading

            again = threading.Timer(0.01, os.kill, (os.getpid(), _received[-1]))
            again.daemon = True
            again.start()
        return
    sys.__unraisablehook__(unraisable)


def _no_core_dumps() -> None:
    # A core dump would hold the private key, the API key and request bodies from memory.
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    except (ImportError, ValueError, OSError):  # not on this platform, or not allowed
        pass


def console_main() -> None:
    """``qredo-openssl``: exit 130 on Ctrl-C or SIGTERM from the first line on.

    A signal whose exception something caught on the way (a fork hook, a library) still ends
    the run with 130: the handler records every signal it sees.
    """
    code, said = EXIT_INTERRUPTED, False
    try:
        try:
            signal.signal(signal.SIGTERM, _terminate)
            signal.signal(signal.SIGINT, _terminate)
            sys.unraisablehook = _swallowed
            _no_core_dumps()
            from ._cli import main

            code = main()
            said = True  # main() reported whatever happened
        finally:
            _ending.append(True)  # first: a signal landing after this cannot raise
    except (KeyboardInterrupt, Interrupted):  # before main() could catch it, or just after
        code = EXIT_INTERRUPTED
    if _received:
        # One sent again late (see _swallowed) must not kill the exit: Python gives its own
        # handlers back to SIG_DFL while it shuts down, but leaves SIG_IGN alone.
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)
    if (_received and code != EXIT_INTERRUPTED) or not said:
        with contextlib.suppress(OSError, ValueError):  # stderr closed: the code still says it
            sys.stderr.write("error: interrupted\n")
        code = EXIT_INTERRUPTED
    # CPython 3.8-3.13 remembers a KeyboardInterrupt that left an exec() of a string (a
    # dataclass or namedtuple being made when Ctrl-C came, even one caught since) and, under
    # `python -m`, then ends the process by SIGINT instead of exiting with `code`. An exec()
    # of a string starts by forgetting it.
    exec("")  # noqa: S102
    sys.exit(code)
