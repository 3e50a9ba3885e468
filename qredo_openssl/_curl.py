"""Finding and running the system curl so that it sends exactly the request that was signed.

curl is found like OpenSSL (``--curl``, ``$QREDO_CURL``, ``PATH``) and run through
:func:`._run.run`. Its argv holds nothing secret: the API key, ``x-sign`` and every header go
in a config of quoted values on curl's stdin (``--config -``: never on disk, even after a
SIGKILL), the body in a file 0600 in a private 0700 directory under ``$TMPDIR`` that is removed
afterwards (also on Ctrl-C and SIGTERM, which reach ``finally``).
Options that keep curl from changing what was signed:

- ``-q`` first: no ``~/.curlrc`` (it is only honoured as the first argument);
- ``--path-as-is``: ``/a/../b`` is not folded; ``--globoff``: ``{}`` and ``[]`` are not globs;
- ``--data-binary @FILE``: bytes as stored (``-d`` strips newlines);
- ``Expect:`` empty: no ``100-continue`` round trip for bodies over 1 MiB;
- ``Content-Type:`` empty unless one is given: no ``application/x-www-form-urlencoded``.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from ._defaults import DEFAULT_TIMEOUT
from ._errors import BadInputError, CurlError, NoAnswerError
from ._files import private_tempdir
from ._run import Completed, headline, run, text
from ._tools import find_tool, tool_source

ENV_VAR = "QREDO_CURL"
MIN_VERSION = (7, 76)  # --fail-with-body, which the printed curl lines use
# curl exit codes that mean "no HTTP answer came": DNS (5, 6), connect (7), HTTP/2 (16, 92),
# timeout (28), TLS (35, 51, 53, 54, 58, 59, 60, 64, 66, 80, 82, 83, 90, 91, 98), empty
# reply, send or receive failure (52, 55, 56), HTTP/3 (95), proxy handshake (97).
NO_ANSWER = frozenset(
    {5, 6, 7, 16, 28, 35, 51, 52, 53, 54, 55, 56, 58, 59, 60, 64, 66, 80, 82, 83, 90, 91, 92,
     95, 97, 98}
)  # fmt: skip
_VERSION_RE = re.compile(r"curl (\d+)\.(\d+)(?:\.(\d+))?")


@dataclass(frozen=True)
class CurlVersion:
    """``curl --version``'s first line, and the numbers read from it (None: unreadable)."""

    raw: str
    major: int | None
    minor: int | None
    patch: int | None

    @property
    def number(self) -> str:
        if self.major is None:
            return ""
        return f"{self.major}.{self.minor}.{self.patch or 0}"

    @property
    def recent_enough(self) -> bool:
        return self.major is not None and (self.major, self.minor or 0) >= MIN_VERSION


def parse_curl_version(output: str) -> CurlVersion:
    """Parse ``curl 7.88.1 (x86_64-pc-linux-gnu) libcurl/7.88.1 ...``; never raises."""
    line = output.strip().splitlines()[0].strip() if output.strip() else ""
    m = _VERSION_RE.match(line)
    if m is None:
        return CurlVersion(line, None, None, None)
    return CurlVersion(line, int(m[1]), int(m[2]), int(m[3] or 0))


@dataclass(frozen=True)
class Curl:
    """A resolved, recent enough curl."""

    path: str
    version: CurlVersion
    source: str = "PATH"  # --curl, QREDO_CURL or PATH

    def run(self, args: Sequence[str], *, timeout: float, stdin: bytes = b"") -> Completed:
        return run(
            self.path, args, tool="curl", error=CurlError, timeout=timeout, ok_codes=range(256),
            stdin=stdin,
        )  # fmt: skip


def curl_source(explicit: str | None = None, environ: Mapping[str, str] | None = None) -> str:
    """Where curl comes from: ``--curl``, ``QREDO_CURL`` or ``PATH``."""
    return tool_source("--curl", ENV_VAR, explicit, environ)


def detect_curl(
    explicit: str | None = None, *, timeout: float = DEFAULT_TIMEOUT, check_version: bool = True
) -> Curl:
    """Find curl (``--curl``, ``$QREDO_CURL``, ``PATH``) and read ``curl --version``.

    Raises :class:`CurlError` (exit 3) when it is missing, does not say it is curl, or (with
    ``check_version``) is older than 7.76.
    """
    source = curl_source(explicit)
    path = find_tool("curl", "--curl", ENV_VAR, explicit, error=CurlError, label="curl")
    out = run(path, ["--version"], tool="curl", error=CurlError, timeout=timeout)
    version = parse_curl_version(text(out.stdout))
    curl = Curl(path, version, source)
    if check_version:
        require_recent(curl)
    return curl


def require_recent(curl: Curl) -> None:
    """Refuse a curl older than 7.76 (or one whose version cannot be read), exit 3."""
    v = curl.version
    if v.major is None:
        msg = f"{curl.path} printed no curl version for 'curl --version' ({v.raw!r}): is it curl?"
        raise CurlError(msg)
    if not v.recent_enough:
        need = ".".join(map(str, MIN_VERSION))
        msg = f"curl {v.number} at {curl.path} is too old: {need} or later is needed"
        raise CurlError(msg)


def config_quote(value: str) -> str:
    """A curl config value in double quotes: ``\\`` and ``"`` escaped (curl's own rules).

    Line breaks cannot be quoted safely (curl would read ``\\n`` as a newline); callers
    refuse them before they get here.
    """
    if "\n" in value or "\r" in value:
        msg = "a line break cannot go into a curl config value (a header or URL holds one)"
        raise BadInputError(msg)
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass(frozen=True)
class HttpRequest:
    """What curl is to send: ``headers`` in order (secrets among them), ``body`` or None."""

    method: str
    url: str
    headers: tuple[tuple[str, str], ...] = field(repr=False)
    body: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True)
class CurlCommand:
    """The curl run, for ``--explain``: its argv and its config's ``(option, value)`` lines."""

    argv: tuple[str, ...]
    config: tuple[tuple[str, str], ...] = field(repr=False)


@dataclass(frozen=True)
class HttpResponse:
    """The final response: status, status line, headers in order, body as received."""

    status: int
    status_line: str
    headers: tuple[tuple[str, str], ...]
    body: bytes


def check_cacert(cacert: str | None) -> None:
    """A CA certificate file to trust must exist before anything is signed (exit 1)."""
    if cacert is not None and not os.path.isfile(cacert):
        msg = f"no CA certificate file at {cacert}"
        raise BadInputError(msg)


def curl_command(
    curl_path: str,
    request: HttpRequest,
    workdir: str,
    *,
    timeout: float,
    cacert: str | None = None,
) -> CurlCommand:
    """The argv (nothing secret) and config lines that send ``request`` from ``workdir``."""
    argv = [curl_path, "-q", "-sS", "--path-as-is", "--globoff"]
    if request.method == "HEAD":
        argv.append("--head")  # -X HEAD would wait for a body that never comes
    else:
        argv += ["-X", request.method]
    argv += ["--max-time", f"{timeout:g}"]
    if cacert is not None:
        argv += ["--cacert", os.path.abspath(cacert)]
    argv += ["--config", "-"]  # the headers (API key, x-sign) on stdin: never on disk
    if request.body is not None:
        argv += ["--data-binary", "@" + os.path.join(workdir, "body")]
    argv += [
        "-D", os.path.join(workdir, "response.headers"),
        "-o", os.path.join(workdir, "response.body"),
        "-w", "%{http_code}",
        "--url", request.url,
    ]  # fmt: skip
    config = tuple(("header", f"{name}:" + (f" {value}" if value else ""))
                   for name, value in request.headers)  # fmt: skip
    return CurlCommand(tuple(argv), config)


def perform(
    curl: Curl,
    request: HttpRequest,
    *,
    timeout: float,
    cacert: str | None = None,
    tmpdir: str | None = None,
    before: Callable[[CurlCommand], None] | None = None,
) -> HttpResponse:
    """Send ``request`` with curl and return the final response (any status).

    ``before`` is called with the command just before curl starts (for ``--explain``).
    Raises :class:`NoAnswerError` (exit 6) with curl's message when no answer came, and
    :class:`CurlError` (exit 3) for any other curl failure.
    """
    # $TMPDIR read now, not tempfile's value cached at its first use.
    where = tmpdir or os.environ.get("TMPDIR") or tempfile.gettempdir()
    with private_tempdir(where) as work:
        cmd = curl_command(curl.path, request, work, timeout=timeout, cacert=cacert)
        lines = "".join(f"{opt} = {config_quote(value)}\n" for opt, value in cmd.config)
        if request.body is not None:
            _write_temp(os.path.join(work, "body"), request.body)
        if before is not None:
            before(cmd)
        # curl's own --max-time fires first (exit 28, "no answer"); ours only stops a hang.
        out = curl.run(cmd.argv[1:], timeout=timeout + 10, stdin=lines.encode("utf-8"))
        if out.returncode != 0:
            raise _failure(out)
        header_bytes = _read(os.path.join(work, "response.headers"))
        body = _read(os.path.join(work, "response.body"))
    status_line, headers = parse_header_block(header_bytes)
    try:
        status = int(text(out.stdout).strip()[-3:])
    except ValueError:
        status = 0
    if not 100 <= status <= 999:
        msg = f"curl gave no HTTP status for {request.url}"
        raise NoAnswerError(msg)
    return HttpResponse(status, status_line, headers, body)


def _write_temp(path: str, data: bytes) -> None:
    # 0600 from birth in a 0700 directory; no fsync (unlike keys): it lives for one request.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:  # an empty body: curl -o writes no file
        return b""


def _failure(out: Completed) -> CurlError | NoAnswerError:
    said = headline(text(out.stderr)) or f"curl failed (exit {out.returncode})"
    if out.returncode in NO_ANSWER:
        return NoAnswerError(said, curl_exit=out.returncode)
    return CurlError(said, argv=out.argv, returncode=out.returncode, stderr=text(out.stderr))


def parse_header_block(data: bytes) -> tuple[str, tuple[tuple[str, str], ...]]:
    """The final response's status line and headers from ``curl -D`` output.

    ``-D`` writes every response block (a proxy's ``CONNECT`` answer, ``100 Continue``,
    ``103 Early Hints``): the last one is the response. Never raises.
    """
    blocks = [b for b in re.split(rb"\r?\n\r?\n", data) if b.strip().startswith(b"HTTP/")]
    if not blocks:
        return "", ()
    lines = blocks[-1].decode("latin-1").strip().splitlines()
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        if line[:1] in (" ", "\t") and headers:  # an obsolete folded continuation
            name, value = headers[-1]
            headers[-1] = (name, f"{value} {line.strip()}")
        elif ":" in line:
            name, _, value = line.partition(":")
            headers.append((name.strip(), value.strip()))
    return lines[0].strip(), tuple(headers)
