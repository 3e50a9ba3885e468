"""Make, check and use Qredo Partner API keys with the system's own OpenSSL.

The public API, used by the CLI too. Names load on first use (PEP 562), so ``--version`` and
``--help`` import almost nothing and each command only the modules it needs; ``sh`` itself
loads only when OpenSSL is first run.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__

# public name -> the private module that defines it
_LAZY = {
    "ApiKeyInfo": "_apikey",
    "SavedApiKey": "_apikey",
    "read_apikey_input": "_apikey",
    "save_apikey": "_apikey",
    "validate_apikey": "_apikey",
    "Finding": "_checks",
    "PemBlock": "_checks",
    "Status": "_checks",
    "any_failed": "_checks",
    "check_keys": "_checks",
    "frame_pem": "_checks",
    "parse_rsa_text": "_checks",
    "BadInputError": "_errors",
    "Interrupted": "_errors",
    "OpenSSLError": "_errors",
    "QredoOpenSSLError": "_errors",
    "RefusedOverwriteError": "_errors",
    "UsageError": "_errors",
    "KeyPaths": "_files",
    "ALLOWED_BITS": "_defaults",
    "DEFAULT_TIMEOUT": "_defaults",
    "QREDO_BITS": "_defaults",
    "KeygenPlan": "_keygen",
    "KeygenResult": "_keygen",
    "RepairResult": "_keygen",
    "convert_private": "_keygen",
    "derive_public": "_keygen",
    "fingerprint": "_keygen",
    "generate_keypair": "_keygen",
    "generate_keypairs": "_keygen",
    "plan_keygen": "_keygen",
    "OpenSSL": "_openssl",
    "OpenSSLVersion": "_openssl",
    "TraditionalDecision": "_openssl",
    "TraditionalMode": "_openssl",
    "decide_traditional": "_openssl",
    "detect_openssl": "_openssl",
    "find_openssl": "_openssl",
    "openssl_source": "_openssl",
    "parse_version": "_openssl",
    "BatchItem": "_sign",
    "SignedRequest": "_sign",
    "Signer": "_sign",
    "Verification": "_sign",
    "build_payload": "_sign",
    "decode_signature": "_sign",
    "encode_signature": "_sign",
    "read_batch": "_sign",
    "read_body": "_sign",
    "sign_batch": "_sign",
    "sign_request": "_sign",
    "verify_request": "_sign",
}
__all__ = ["__version__", *sorted(_LAZY)]


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
    from ._apikey import ApiKeyInfo as ApiKeyInfo
    from ._apikey import SavedApiKey as SavedApiKey
    from ._apikey import read_apikey_input as read_apikey_input
    from ._apikey import save_apikey as save_apikey
    from ._apikey import validate_apikey as validate_apikey
    from ._checks import Finding as Finding
    from ._checks import PemBlock as PemBlock
    from ._checks import Status as Status
    from ._checks import any_failed as any_failed
    from ._checks import check_keys as check_keys
    from ._checks import frame_pem as frame_pem
    from ._checks import parse_rsa_text as parse_rsa_text
    from ._defaults import ALLOWED_BITS as ALLOWED_BITS
    from ._defaults import DEFAULT_TIMEOUT as DEFAULT_TIMEOUT
    from ._defaults import QREDO_BITS as QREDO_BITS
    from ._errors import BadInputError as BadInputError
    from ._errors import Interrupted as Interrupted
    from ._errors import OpenSSLError as OpenSSLError
    from ._errors import QredoOpenSSLError as QredoOpenSSLError
    from ._errors import RefusedOverwriteError as RefusedOverwriteError
    from ._errors import UsageError as UsageError
    from ._files import KeyPaths as KeyPaths
    from ._keygen import KeygenPlan as KeygenPlan
    from ._keygen import KeygenResult as KeygenResult
    from ._keygen import RepairResult as RepairResult
    from ._keygen import convert_private as convert_private
    from ._keygen import derive_public as derive_public
    from ._keygen import fingerprint as fingerprint
    from ._keygen import generate_keypair as generate_keypair
    from ._keygen import generate_keypairs as generate_keypairs
    from ._keygen import plan_keygen as plan_keygen
    from ._openssl import OpenSSL as OpenSSL
    from ._openssl import OpenSSLVersion as OpenSSLVersion
    from ._openssl import TraditionalDecision as TraditionalDecision
    from ._openssl import TraditionalMode as TraditionalMode
    from ._openssl import decide_traditional as decide_traditional
    from ._openssl import detect_openssl as detect_openssl
    from ._openssl import find_openssl as find_openssl
    from ._openssl import openssl_source as openssl_source
    from ._openssl import parse_version as parse_version
    from ._sign import BatchItem as BatchItem
    from ._sign import SignedRequest as SignedRequest
    from ._sign import Signer as Signer
    from ._sign import Verification as Verification
    from ._sign import build_payload as build_payload
    from ._sign import decode_signature as decode_signature
    from ._sign import encode_signature as encode_signature
    from ._sign import read_batch as read_batch
    from ._sign import read_body as read_body
    from ._sign import sign_batch as sign_batch
    from ._sign import sign_request as sign_request
    from ._sign import verify_request as verify_request
