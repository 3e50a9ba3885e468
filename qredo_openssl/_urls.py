"""Where a request goes: the API base, path URLs, and URLs a client would rewrite.

Qredo checks ``x-sign`` over ``https://`` + the ``Host`` header + the request target exactly
as they arrived. A URL that an HTTP client rewrites before sending (curl turns
``https://host`` into ``GET /``, drops ``#frag``, folds ``/a/../b``, leaves ``:443`` out of
``Host``) is signed as one string and checked as another: the API answers 401. Each such form
is named here together with the form to use instead. Nothing here runs a child.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import quote, unquote

from ._errors import BadInputError, UsageError
from ._pem import read_bounded

DEFAULT_API_BASE = "https://api.qredo.network/api/v1/p"
API_BASE_ENV = "QREDO_API_BASE"
API_BASE_FILE = "api-base"
_DEFAULT_PORTS = {"http": "80", "https": "443"}
_SAFE_CHARS_RE = re.compile(r"[\x21-\x7e]*")
_IPV4_PART_RE = re.compile(r"0[xX][0-9a-fA-F]+|[0-9]+")
_URL_RE = re.compile(
    r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://(?P<auth>[^/?#]*)(?P<path>[^?#]*)"
    r"(?P<query>\?[^#]*)?(?P<frag>#.*)?",
    re.S,
)
_HOSTPORT_RE = re.compile(r"(?P<host>\[[^\]]*\]|[^:]*)(?::(?P<port>.*))?", re.S)
# Characters that stay as they are when a URL is percent-encoded for the suggested form.
_KEEP = "/?&=:@!$'()*+,;%~-._[]"


@dataclass(frozen=True)
class ApiBase:
    """The API base and where it came from: ``--api-base``, ``QREDO_API_BASE``, a file, default."""

    url: str
    source: str


@dataclass(frozen=True)
class ResolvedUrl:
    """The URL to sign and send; ``base`` is set when a path URL was appended to it."""

    url: str
    base: ApiBase | None


@dataclass(frozen=True)
class Rewrite:
    """How a client would rewrite a URL before sending it, and the URL to give instead.

    ``use`` is None when no form can be suggested (a port that is not a number).
    """

    problems: tuple[str, ...]
    use: str | None

    def __str__(self) -> str:
        said = "; ".join(self.problems)
        return f"{said}; use {self.use}" if self.use is not None else said


def api_base(
    explicit: str | None, directory: str, environ: Mapping[str, str] | None = None
) -> ApiBase:
    """``explicit`` (``--api-base``), else ``$QREDO_API_BASE``, else the first line of
    ``DIR/api-base``, else Qredo's Partner API base. A base that is not an absolute
    http(s) URL is refused: from the command line :class:`UsageError`, else bad input."""
    environ = os.environ if environ is None else environ
    if explicit is not None:
        return _checked_base(explicit, "--api-base", UsageError)
    if environ.get(API_BASE_ENV):
        return _checked_base(environ[API_BASE_ENV], API_BASE_ENV, BadInputError)
    path = os.path.join(directory, API_BASE_FILE)
    if os.path.lexists(path):
        data = read_bounded(path, what="API base file")
        try:
            lines = data.decode("utf-8").splitlines()
        except UnicodeDecodeError:
            msg = f"{path} is not UTF-8 text"
            raise BadInputError(msg) from None
        first = lines[0].strip() if lines else ""
        return _checked_base(first, path, BadInputError)
    return ApiBase(DEFAULT_API_BASE, "default")


def _checked_base(url: str, source: str, error: type[BadInputError | UsageError]) -> ApiBase:
    m = _URL_RE.fullmatch(url) if _SAFE_CHARS_RE.fullmatch(url) else None
    if m is None or m["scheme"].lower() not in _DEFAULT_PORTS or not m["auth"]:
        msg = f"the API base from {source} must be an absolute https:// URL, not {url!r}"
        raise error(msg)
    if m["query"] is not None or m["frag"] is not None:
        msg = f"the API base from {source} must be an https:// URL without query or fragment"
        raise error(msg)
    if cleartext_to_remote(url):
        msg = f"the API base from {source} is http:// to a host that is not loopback ({url!r}): "
        msg += "the API key would go in clear text; use https://"
        raise error(msg)
    return ApiBase(url, source)


def cleartext_to_remote(url: str) -> bool:
    """An ``http://`` URL to a host that is not loopback: the API key would cross the network
    in clear text (and the signed request could be replayed). ``http://`` is for loopback
    testing only: 127.0.0.0/8, ``::1``, ``localhost``."""
    m = re.match(r"(?i)http://(?:[^/?#@]*@)?(\[[^\]]*\]|[^/?#:]*)", url)
    if m is None:
        return False
    host = m[1].strip("[]").lower()
    if host == "localhost":
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return True


def resolve_url(url: str, base: ApiBase | None) -> ResolvedUrl:
    """A path URL (``/company``) appended as text to ``base`` (its trailing ``/`` removed);
    any other URL as given. Not ``urljoin``: that would drop the base's own path."""
    if url.startswith("/") and not url.startswith("//") and base is not None:
        return ResolvedUrl(base.url.rstrip("/") + url, base)
    return ResolvedUrl(url, None)


def is_path_url(url: str) -> bool:
    """Whether ``url`` is a path to append to the API base (``/company``, not ``//host``)."""
    return url.startswith("/") and not url.startswith("//")


def url_rewrite(url: str) -> Rewrite | None:
    """How an HTTP client would send something other than ``url``; None: sent as is.

    Never raises. Only http(s) URLs with a host are judged (the signer refuses the rest). The
    suggested ``use`` has none of the problems found.
    """
    problems: list[str] = []
    if not _SAFE_CHARS_RE.fullmatch(url):
        problems.append("spaces, control or non-ASCII characters are encoded by clients "
                        "(percent-encoding; IDNA for a host name)")  # fmt: skip
        url = _ascii_form(url)
    m = _URL_RE.fullmatch(url)
    if m is None or m["scheme"].lower() not in _DEFAULT_PORTS or not m["auth"]:
        return Rewrite(tuple(problems), url) if problems else None
    scheme, auth, path = m["scheme"], m["auth"], m["path"]
    query = m["query"] or ""
    if m["frag"] is not None:
        problems.append("the #fragment is never sent")
    if "@" in auth:
        problems.append("user@ userinfo is sent as an Authorization header, not in the URL")
        auth = auth.rsplit("@", 1)[1]
    hostport = _HOSTPORT_RE.fullmatch(auth)
    assert hostport is not None  # the pattern matches any string
    host, port = hostport["host"], hostport["port"]
    use_ok = True
    if not host:
        problems.append("there is no host")
        use_ok = False
    if scheme != scheme.lower() or host != host.lower():
        problems.append("upper-case letters in the scheme or host are lowered by clients")
    if "%" in host:
        problems.append("a percent-encoded host is decoded by clients")
        host = unquote(host)
    canonical = _canonical_ipv4(host)
    if canonical is not None and canonical != host:
        problems.append(f"the address {host!r} is sent as {canonical} in the Host header")
        host = canonical
    if port is not None:
        if port.isdigit() and 0 < int(port) < 65536 and str(int(port)) != port:
            problems.append(f"the port {port!r} is sent as {int(port)}")
            port = str(int(port))
        if port in ("", _DEFAULT_PORTS[scheme.lower()]):
            problems.append(f"the port ':{port}' is left out of the Host header by clients")
            port = None
        elif not port.isdigit() or not 0 < int(port) < 65536:
            problems.append(f"the port {port!r} is not a number from 1 to 65535")
            use_ok = False
    if not path:
        problems.append("there is no path after the host: clients send '/'")
        path = "/"
    elif any(seg in (".", "..") for seg in path.split("/")):
        problems.append("'.' and '..' path segments are folded by clients and servers")
        path = remove_dot_segments(path)
    if not problems:
        return None
    hostport_text = host.lower() + (f":{port}" if port is not None else "")
    use = f"{scheme.lower()}://{hostport_text}{path}{query}" if use_ok else None
    return Rewrite(tuple(problems), use)


def _canonical_ipv4(host: str) -> str | None:
    """The dotted-decimal form curl sends for a host that is an IPv4 address in any of the
    forms it accepts (``127.1``, ``0x7f.0.0.1``, ``2130706433``, ``0177.0.0.1``); None for a
    name."""
    parts = host.split(".")
    if not host or len(parts) > 4 or not all(_IPV4_PART_RE.fullmatch(p) for p in parts):
        return None
    try:
        nums = [int(p, 16) if p[:2].lower() == "0x" else int(p, 8) if len(p) > 1 and
                p[0] == "0" else int(p) for p in parts]  # fmt: skip
    except ValueError:  # "08": not octal, so not an address curl takes
        return None
    *head, last = nums
    if any(n > 255 for n in head) or last >= 256 ** (5 - len(nums)):
        return None
    value = sum(n << (8 * (3 - i)) for i, n in enumerate(head)) + last
    return ".".join(str((value >> s) & 255) for s in (24, 16, 8, 0))


def _ascii_form(url: str) -> str:
    """A non-ASCII host in its IDNA (punycode) form, as clients look it up; the rest of the
    URL percent-encoded."""
    m = _URL_RE.fullmatch(url)
    if m is not None and m["auth"] and not m["auth"].isascii():
        auth = m["auth"]
        user, at, hostport = auth.rpartition("@")
        host, colon, port = hostport.partition(":")
        try:
            host = host.encode("idna").decode("ascii")
        except (UnicodeError, ValueError):
            return _percent_encode(url)
        start, end = m.span("auth")
        url = url[:start] + user + at + host + colon + port + url[end:]
    return _percent_encode(url)


def _percent_encode(url: str) -> str:
    try:  # a name from argv in another encoding: its original bytes
        raw = url.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate that no bytes stand behind
        raw = url.encode("utf-8", "surrogatepass")
    return quote(raw, safe=_KEEP + "#")


def remove_dot_segments(path: str) -> str:
    """RFC 3986 section 5.2.4 for an absolute path: ``/a/./b/../c`` is ``/a/c``."""
    out: list[str] = []
    segments = path.split("/")[1:]
    for i, seg in enumerate(segments):
        last = i == len(segments) - 1
        if seg == ".":
            if last:
                out.append("")
        elif seg == "..":
            if out:
                out.pop()
            if last:
                out.append("")
        else:
            out.append(seg)
    return "/" + "/".join(out)
