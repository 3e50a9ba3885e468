"""The console script: signal handlers and the core limit first, then the CLI.

Set here and not in :func:`qredo_openssl._cli.main`, so that in-process callers and tests
keep their own handlers and limits.
"""

from __future__ import annotations

import contextlib
import signal
import sys
from types import FrameType

from ._errors import Interrupted

EXIT_INTERRUPTED = 130
_received: list[int] = []  # every SIGINT/SIGTERM seen, even one a library swallowed


def _terminate(signum: int, frame: FrameType | None) -> None:
    _received.append(signum)
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise Interrupted


def _record(signum: int, frame: FrameType | None) -> None:
    _received.append(signum)  # on the way out: nothing left to interrupt


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
        signal.signal(signal.SIGTERM, _terminate)
        signal.signal(signal.SIGINT, _terminate)
        _no_core_dumps()
        from ._cli import main

        code = main()
        said = True  # main() reported whatever happened
    except (KeyboardInterrupt, Interrupted):  # before main() could catch it
        code = EXIT_INTERRUPTED
    finally:
        signal.signal(signal.SIGTERM, _record)
        signal.signal(signal.SIGINT, _record)
    if (_received and code != EXIT_INTERRUPTED) or not said:
        with contextlib.suppress(OSError, ValueError):  # stderr closed: the code still says it
            sys.stderr.write("error: interrupted\n")
        code = EXIT_INTERRUPTED
    sys.exit(code)
