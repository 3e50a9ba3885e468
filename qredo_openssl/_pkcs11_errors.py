"""What a failed token operation means, in words, from the tools' own stderr.

The pkcs11 engine crashes at exit after most failures (SoftHSM2 and libp11 on OpenSSL 3.0:
exit 139, OpenSC/libp11#509): the crash is never what is reported, the reason is.
"""

from __future__ import annotations

import re

from ._errors import ToolError
from ._pkcs11_uri import Pkcs11Uri


class TokenError(ToolError):
    """A token operation failed: wrong PIN, no such token or key, module or engine missing."""


# What a token failure means, checked in this order against the tools' stderr. The engine
# crashes at exit after most of these (SoftHSM and libp11 with OpenSSL 3.0: exit 139).
_REASONS: tuple[tuple[str, str], ...] = (
    (r"PIN incorrect|CKR_PIN_INCORRECT", "wrong PIN for {token}"),
    (r"PIN locked|CKR_PIN_LOCKED", "the PIN of {token} is locked"),
    (r"No environment variable|No PIN code was entered|util_getpass", "no PIN given for {token}"),
    (r"Multiple matching slots", "more than one token matches {token}"),
    (r"No matching initialized token|No slot with token named", "no token matches {token}"),
    (r"not found at:|object not found", "no key {key} in {token}"),
    (
        r"Invalid engine|no such engine",
        "OpenSSL has no pkcs11 engine (Debian: apt-get install libengine-pkcs11-openssl)",
    ),
    (
        r"unable to load provider|name=pkcs11",
        "OpenSSL has neither the pkcs11 engine nor the pkcs11 provider (Debian: apt-get "
        "install libengine-pkcs11-openssl)",
    ),
    (
        r"Unable to load module|Failed to load pkcs11 module|dlopen failed",
        "the PKCS#11 module {module} cannot be loaded",
    ),
    (r"Failed to enumerate slots", "the module failed to list its tokens"),
    (r"General Error", "the token reported a general error"),
)


PIN_REFUSED_RE = re.compile(r"PIN incorrect|CKR_PIN_INCORRECT|PIN locked|CKR_PIN_LOCKED", re.I)


def explain(stderr: str, uri: Pkcs11Uri | None, module: str) -> str | None:
    """What went wrong in words, from a tool's stderr; None when it is none of the known cases."""
    token = f"token {uri.token!r}" if uri is not None and uri.token else "the token"
    key = "with that label or id"
    if uri is not None:
        key = repr(uri.object) if uri.object is not None else f"with id {uri.id_hex}"
    for pattern, reason in _REASONS:
        if re.search(pattern, stderr, re.IGNORECASE):
            return reason.format(token=token, key=key, module=module)
    return None


def token_error(exc: ToolError, what: str, uri: Pkcs11Uri | None, module: str) -> TokenError:
    why = explain(exc.stderr, uri, module)
    if why is None:
        # Not a known case: the tool's own first words, without the engine's greeting.
        said = [ln.strip() for ln in exc.stderr.splitlines() if ln.strip()]
        said = [ln for ln in said if not ln.startswith('Engine "pkcs11" set')]
        code = exc.returncode
        how = "it crashed" if code is not None and code in (-11, 139) else f"exit {code}"
        detail = f"{how}: {said[0]}" if said else str(exc)
        if exc.timed_out:
            detail = "timed out and was killed"
        elif exc.returncode is None:
            detail = str(exc)
        return TokenError(
            f"{what} failed: {detail}",
            argv=exc.argv,
            returncode=exc.returncode,
            stderr=exc.stderr,
            timed_out=exc.timed_out,
        )
    return TokenError(
        f"{what} failed: {why}", argv=exc.argv, returncode=exc.returncode, stderr=exc.stderr
    )
