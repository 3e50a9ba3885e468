"""Make, check and use Qredo Partner API keys with the system's own OpenSSL.

The public API, used by library callers; the CLI may also use private helpers. Names load on
first use (PEP 562), so ``--version`` and ``--help`` import almost nothing and each command only
the modules it needs; ``sh`` itself loads only when a child is first run. ``__all__`` is made
from ``_LAZY``; the ``TYPE_CHECKING`` block names the same for type checkers, and
``tests/test_imports.py`` proves the two agree.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__

# public name -> the private module that defines it
_LAZY = {
    "SavedApiKey": "_apikey",
    "save_apikey": "_apikey",
    "Finding": "_checks",
    "detect_curl": "_curl",
    "CurlError": "_errors",
    "NoAnswerError": "_errors",
    "check_keys": "_check_keys",
    "BadInputError": "_errors",
    "OpenSSLError": "_errors",
    "QredoOpenSSLError": "_errors",
    "RefusedOverwriteError": "_errors",
    "ToolError": "_errors",
    "UsageError": "_errors",
    "WriteError": "_errors",
    "KeyPaths": "_files",
    "KeygenPlan": "_keygen",
    "KeygenResult": "_keygen",
    "generate_keypair": "_keygen",
    "generate_keypairs": "_keygen",
    "plan_keygen": "_keygen",
    "RepairResult": "_repair",
    "convert_private": "_repair",
    "derive_public": "_repair",
    "OpenSSL": "_openssl",
    "detect_openssl": "_openssl",
    "SendResult": "_send",
    "Sender": "_send",
    "Pkcs11Options": "_pkcs11",
    "generate_token_key": "_pkcs11_keygen",
    "SignedRequest": "_sign",
    "Signer": "_sign",
    "Verification": "_sign",
    "verify_request": "_sign",
}
__all__ = ["__version__", *sorted(_LAZY)]


if not TYPE_CHECKING:  # hidden from mypy, so that a name missing below is an error there

    def __getattr__(name: str) -> Any:
        try:
            module = _LAZY[name]
        except KeyError:
            msg = f"module {__name__!r} has no attribute {name!r}"
            raise AttributeError(msg) from None
        value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
        globals()[name] = value  # later lookups skip this function
        return value


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:  # the same names, for type checkers and editors
    from ._apikey import SavedApiKey as SavedApiKey
    from ._apikey import save_apikey as save_apikey
    from ._check_keys import check_keys as check_keys
    from ._checks import Finding as Finding
    from ._curl import detect_curl as detect_curl
    from ._errors import BadInputError as BadInputError
    from ._errors import CurlError as CurlError
    from ._errors import NoAnswerError as NoAnswerError
    from ._errors import OpenSSLError as OpenSSLError
    from ._errors import QredoOpenSSLError as QredoOpenSSLError
    from ._errors import RefusedOverwriteError as RefusedOverwriteError
    from ._errors import ToolError as ToolError
    from ._errors import UsageError as UsageError
    from ._errors import WriteError as WriteError
    from ._files import KeyPaths as KeyPaths
    from ._keygen import KeygenPlan as KeygenPlan
    from ._keygen import KeygenResult as KeygenResult
    from ._keygen import generate_keypair as generate_keypair
    from ._keygen import generate_keypairs as generate_keypairs
    from ._keygen import plan_keygen as plan_keygen
    from ._openssl import OpenSSL as OpenSSL
    from ._openssl import detect_openssl as detect_openssl
    from ._pkcs11 import Pkcs11Options as Pkcs11Options
    from ._pkcs11_keygen import generate_token_key as generate_token_key
    from ._repair import RepairResult as RepairResult
    from ._repair import convert_private as convert_private
    from ._repair import derive_public as derive_public
    from ._send import Sender as Sender
    from ._send import SendResult as SendResult
    from ._sign import SignedRequest as SignedRequest
    from ._sign import Signer as Signer
    from ._sign import Verification as Verification
    from ._sign import verify_request as verify_request
