"""Text that more than one command shows: the next step after a new key, ``--explain``."""

from __future__ import annotations

import shlex
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .._send import Explanation
    from .._urls import ApiBase

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
