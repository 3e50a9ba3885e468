"""What more than one command shows: the next step after a new key, ``--explain``, and the
lines and JSON document of a batch (``sign --batch``, ``send --batch``)."""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from ._base import error_doc

if TYPE_CHECKING:
    from .._errors import QredoOpenSSLError
    from .._send import Explanation
    from .._ui import Output
    from .._urls import ApiBase


class BatchLine(Protocol):
    """A batch line's result: its JSON, and its error if it failed."""

    @property
    def error(self) -> QredoOpenSSLError | None: ...

    def to_json(self) -> dict[str, Any]: ...


def show_batch_line(out: Output, item: BatchLine) -> None:
    """One JSON line on stdout as soon as the line is done, and its error on stderr; nothing
    with --json (the one document says it all)."""
    if out.json_mode:
        return
    out.data(json.dumps(item.to_json()))
    if item.error is not None:
        out.error(item.error.exit_code, str(item.error))


def batch_document(items: Sequence[BatchLine], failed: Sequence[BatchLine]) -> dict[str, Any]:
    """``{"results", "failed"}``, and the first failed line's ``error``."""
    doc: dict[str, Any] = {"results": [i.to_json() for i in items], "failed": len(failed)}
    first = next((i.error for i in failed if i.error is not None), None)
    if first is not None:
        doc["error"] = error_doc(first)
    return doc

NEXT_STEP = (
    "Next: in the Qredo Web App open Settings > Partner API > Upload Public Key, "
    "paste the public key above ({public}) and click Upload."
)


def show_explanation(e: Explanation, base: ApiBase | None) -> None:
    """``--explain``, on stderr whatever ``-q`` says: it was asked for."""
    from .._curl import config_quote

    lines = ["payload = " + e.stamp_name + " + url + body:",
             f"  {e.stamp_name}: {e.stamp}", f"  url: {e.url}"]  # fmt: skip
    if base is not None and e.url.startswith(base.url.rstrip("/")):
        lines.append(f"    (API base {base.url}, from {base.source})")
    lines += [f"  body: {e.body_length} bytes, sha256 {e.body_sha256}",
              f"payload sha256 (Qredo's client prints it as Hash:): {e.payload_sha256}",
              "openssl: " + shlex.join(e.openssl_argv) + " < payload"]  # fmt: skip
    if e.curl is not None:
        lines.append("curl: " + shlex.join(e.curl.argv))
        lines += [f"  config {opt} = {config_quote(value)}" for opt, value in e.curl.config]
    sys.stderr.write("".join(line + "\n" for line in lines))
    sys.stderr.flush()
