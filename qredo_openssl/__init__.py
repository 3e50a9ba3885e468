"""Make, check and use Qredo Partner API keys with the system's own OpenSSL.

The public API, used by the CLI too. Importing it is cheap: ``sh`` is loaded only when
OpenSSL is first run.
"""

from ._apikey import ApiKeyInfo, SavedApiKey, read_apikey_input, save_apikey, validate_apikey
from ._checks import Finding, PemBlock, Status, any_failed, check_keys, frame_pem, parse_rsa_text
from ._errors import (
    BadInputError,
    Interrupted,
    OpenSSLError,
    QredoOpenSSLError,
    RefusedOverwriteError,
    UsageError,
)
from ._files import KeyPaths
from ._keygen import (
    QREDO_BITS,
    KeygenPlan,
    KeygenResult,
    RepairResult,
    convert_private,
    derive_public,
    fingerprint,
    generate_keypair,
    generate_keypairs,
    plan_keygen,
)
from ._openssl import (
    DEFAULT_TIMEOUT,
    OpenSSL,
    OpenSSLVersion,
    TraditionalDecision,
    TraditionalMode,
    decide_traditional,
    detect_openssl,
    find_openssl,
    openssl_source,
    parse_version,
)
from ._version import __version__

__all__ = [
    "DEFAULT_TIMEOUT",
    "QREDO_BITS",
    "ApiKeyInfo",
    "BadInputError",
    "Finding",
    "Interrupted",
    "KeyPaths",
    "KeygenPlan",
    "KeygenResult",
    "OpenSSL",
    "OpenSSLError",
    "OpenSSLVersion",
    "PemBlock",
    "QredoOpenSSLError",
    "RefusedOverwriteError",
    "RepairResult",
    "SavedApiKey",
    "Status",
    "TraditionalDecision",
    "TraditionalMode",
    "UsageError",
    "__version__",
    "any_failed",
    "check_keys",
    "convert_private",
    "decide_traditional",
    "derive_public",
    "detect_openssl",
    "find_openssl",
    "fingerprint",
    "frame_pem",
    "generate_keypair",
    "generate_keypairs",
    "openssl_source",
    "parse_rsa_text",
    "parse_version",
    "plan_keygen",
    "read_apikey_input",
    "save_apikey",
    "validate_apikey",
]
