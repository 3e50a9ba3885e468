"""The console script: signal handlers and the core limit first, then the CLI.

Set here and not in :func:`qredo_openssl._cli.main`, so that in-process callers and tests
keep their own handlers and limits.
"""

from __future__ import annotations

import signal
import sys
from types import FrameType

from ._errors import Interrupted

EXIT_INTERRUPTED = 130


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise Interrupted


def _no_core_dumps() -> None:
    # A core dump would hold the private key, the API key and request bodies from memory.
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    except (ImportError, ValueError, OSError):  # not on this platform, or not allowed
        pass


def console_main() -> None:
    """``qredo-openssl``: exit 130 on Ctrl-C or SIGTERM from the first line on."""
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    _no_core_dumps()
    try:
        from ._cli import main

        code = main()
    except (KeyboardInterrupt, Interrupted):  # before main() could catch it
        code = EXIT_INTERRUPTED
    sys.exit(code)
