"""Importing ``sh`` cheaply: on first use, and without the asyncio it never needs here.

Separate from :mod:`._run` so that the runner reads as what it is; ``load_sh`` is its only user.
"""

from __future__ import annotations

import importlib
import sys
import threading
import types
from typing import Any


class _AsyncioOnDemand(types.ModuleType):
    """Stands in for ``asyncio`` while ``sh`` is imported; the real module loads on first use.

    Why it is kept (issue 9: only while it buys >= 30 ms a command): sh 2.x imports asyncio
    (with ssl, socket, concurrent.futures...) at its top. Measured on a 2-core EPYC, Python
    3.11, sh 2.4: ``python -X importtime -c "import sh"`` 92 ms plain, 52 ms through ``_sh``
    (best of 15); ``scripts/bench`` case ``s`` (a whole ``check``, asyncio preloaded or not)
    64 ms wall, 51 ms CPU (medians of 15). Re-measure with that case before removing it.

    sh uses asyncio only for ``_async=True`` commands, which we never run, and to ask
    ``get_running_loop()`` on every command (both
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


def load_sh() -> Any:
    """The ``sh`` module, imported on first use with asyncio left out (see the class above)."""
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
