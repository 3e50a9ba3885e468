"""Why a 401 ``errPartnerAuth`` may have happened, from what can be checked locally.

Qredo says only that authentication failed; the usual causes are a public key other than the
one uploaded, a clock far from the server's, or an API key of another key pair.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ._apikey import validate_apikey
from ._errors import BadInputError
from ._pem import fingerprint, read_bounded

if TYPE_CHECKING:
    from ._send import SendResult


@dataclass(frozen=True)
class AuthDiagnosis:
    """Why a 401 ``errPartnerAuth`` may have happened, from what can be checked locally."""

    reason: str | None  # the server's ``detail.reason`` when it gives one
    public_path: str
    fingerprint: str | None
    fingerprint_error: str | None
    skew: float | None  # server clock minus ours, seconds (from the ``Date`` header)
    server_date: str | None
    key_id: str | None
    apikey_source: str


def diagnose_auth(
    result: SendResult, public_path: str, apikey_source: str
) -> AuthDiagnosis | None:
    """A diagnosis for a 401 whose body says ``errPartnerAuth``; None for anything else."""
    if result.status != 401 or b"errPartnerAuth" not in result.response.body:
        return None
    reason = None
    try:
        detail = json.loads(result.response.body.decode("utf-8")).get("detail")
        reason = str(detail.get("reason")) if isinstance(detail, dict) else None
    except (ValueError, UnicodeDecodeError, AttributeError, RecursionError):
        pass
    fp, fp_error = None, None
    try:
        fp = fingerprint(read_bounded(public_path, what="public key"))
    except BadInputError as exc:
        fp_error = str(exc)
    from email.utils import parsedate_to_datetime  # here: ~10 ms, needed only after a 401

    date = result.headers.get("date")
    skew = None
    try:
        if date:
            skew = parsedate_to_datetime(date).timestamp() - result.received_at
    except (TypeError, ValueError, IndexError):
        skew = None
    key_id = None
    if result.request.apikey:
        try:
            key_id = validate_apikey(result.request.apikey).key_id
        except BadInputError:
            key_id = None
    return AuthDiagnosis(reason, public_path, fp, fp_error, skew, date, key_id, apikey_source)
