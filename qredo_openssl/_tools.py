"""Finding a system tool (OpenSSL, curl, pkcs11-tool): its flag, its environment variable, or
``PATH``, in that order; where it came from is reported (``doctor``)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping

from ._errors import ToolError


def tool_source(
    flag: str, env_var: str, explicit: str | None, environ: Mapping[str, str] | None = None
) -> str:
    """Where a system tool comes from: its flag, its environment variable, or ``PATH``."""
    environ = os.environ if environ is None else environ
    if explicit:
        return flag
    return env_var if environ.get(env_var) else "PATH"


def find_tool(
    name: str,
    flag: str,
    env_var: str,
    explicit: str | None = None,
    environ: Mapping[str, str] | None = None,
    *,
    error: type[ToolError] = ToolError,
    label: str = "",
) -> str:
    """Resolve a system tool: ``explicit`` (its flag), else ``$ENV_VAR``, else ``name`` on PATH.

    The absolute path is returned; a missing or non-executable tool raises ``error`` (exit 3)
    saying where it was looked for.
    """
    environ = os.environ if environ is None else environ
    origin = tool_source(flag, env_var, explicit, environ)
    given = {flag: explicit, env_var: environ.get(env_var)}.get(origin) or name
    if os.sep in given:
        found = given if os.path.isfile(given) and os.access(given, os.X_OK) else None
    else:
        found = shutil.which(given, path=environ.get("PATH", os.defpath))
    if not found:
        where = "on PATH" if origin == "PATH" else f"at {given} (from {origin})"
        msg = f"{label or name} not found {where}; install it or pass {flag} PATH"
        raise error(msg)
    return os.path.abspath(found)
