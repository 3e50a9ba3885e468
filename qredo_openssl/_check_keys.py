"""``check_keys``: every check of a key directory, a PEM pair or a token key, in a stable order.

Above both :mod:`._checks` (the file checks) and :mod:`._pkcs11_keys` (the token checks, built
on them), so that every import points down.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ._checks import (
    Finding,
    check_apikey,
    check_dir,
    check_private,
    check_public,
    check_rotation,
)
from ._files import ROTATE_JOURNAL, URI_NAME, KeyPaths
from ._openssl import OpenSSL

if TYPE_CHECKING:
    from ._pkcs11 import Pkcs11Options


def check_keys(
    paths: KeyPaths, openssl: OpenSSL, *, pkcs11: Pkcs11Options | None = None
) -> list[Finding]:
    """Every check of docs/contract.md on a key directory, in a stable order.

    A directory whose ``private.uri`` names a key in a PKCS#11 token is checked through it.
    """
    if os.path.lexists(os.path.join(paths.dir, URI_NAME)):
        from ._pkcs11_keys import check_token_key  # here: a PEM pair never needs it

        keys = check_token_key(paths, openssl, pkcs11)
    else:
        private, derived = check_private(paths.private, openssl)
        keys = [
            *private,
            *check_public(paths.public, derived, paths.private, openssl),
            *check_apikey(paths.apikey),
        ]
        if os.path.lexists(os.path.join(paths.dir, ROTATE_JOURNAL)):
            from ._journal import half_done  # here: only a rotation in progress needs it

            if half_done(paths.dir):
                keys = _finish_first(keys, paths.dir)
    return [*keys, *check_rotation(paths.dir), *check_dir(paths.dir)]


def _finish_first(findings: Sequence[Finding], directory: str) -> list[Finding]:
    """While a ``rotate finish`` is half-done, the fix of a failed key check is to complete it.

    The key files are mid-swap, and the journal recognises them by their bytes: a repair
    (``pubkey --force``, ``convert``, a new key) would leave the rotation impossible to finish.
    """
    finish = ("qredo-openssl", "rotate", "finish", directory)
    why = "; the pair is mid-rotation (a rotate finish was cut off half-way): complete it"
    return [
        Finding(f.name, f.status, f.message + why, finish)
        if f.status == "fail" and f.fix is not None and f.name.startswith(("private.", "public."))
        else f
        for f in findings
    ]
