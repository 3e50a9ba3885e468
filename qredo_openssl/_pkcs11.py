"""Reaching a key inside a PKCS#11 token through the system OpenSSL and OpenSC's pkcs11-tool.

Which module, which ``pkcs11-tool``, which PIN, which route (the pkcs11 engine, or the
pkcs11 provider), and what a failure means. The PIN never reaches an argv: OpenSSL reads
it with ``-passin env:VAR`` and pkcs11-tool with ``--pin env:VAR``, the variable set for
that child only. Without ``-passin`` the engine would read the PIN from stdin, which here
is the payload: every engine command gets it, public-key ones too.

Token operations that log in are serialized within the process: SoftHSM rewrites its
token files at every login, and parallel logins to one token fail at random.
"""

from __future__ import annotations

import functools
import glob
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from ._errors import BadInputError, ToolError
from ._files import URI_NAME, KeyPaths
from ._openssl import OpenSSL
from ._pem import read_bounded
from ._pkcs11_errors import PIN_REFUSED_RE, TokenError, token_error
from ._pkcs11_uri import Pkcs11Uri, read_uri_file
from ._run import Completed, run, text
from ._tools import find_tool

Route = Literal["engine", "provider"]
ROUTES: tuple[Route, ...] = ("engine", "provider")
PIN_ENV = "QREDO_PKCS11_PIN"
MODULE_ENV = "QREDO_PKCS11_MODULE"
TOOL_ENV = "QREDO_PKCS11_TOOL"
PIN_LIMIT = 256
P11KIT_PROXY = (
    "/usr/lib/x86_64-linux-gnu/p11-kit-proxy.so",
    "/usr/lib/*/p11-kit-proxy.so",
    "/usr/lib64/p11-kit-proxy.so",
    "/usr/lib/p11-kit-proxy.so",
    "/usr/local/lib/p11-kit-proxy.so",
    "/opt/homebrew/lib/p11-kit-proxy.so",
)
_TOKEN_LOCK = threading.Lock()


@dataclass(frozen=True)
class Pkcs11Options:
    """What the caller chose; anything None is found (module, tool, route) or absent (PIN)."""

    module: str | None = None
    tool: str | None = None
    route: Route | None = None
    pin_file: str | None = None


def uri_file(paths: KeyPaths) -> str:
    """Where a directory names its token key."""
    return os.path.join(paths.dir, URI_NAME)


def has_token_key(paths: KeyPaths) -> bool:
    return os.path.lexists(uri_file(paths))


def both_sources(paths: KeyPaths) -> str | None:
    """Why a directory with both ``private.pem`` and ``private.uri`` is refused, or None."""
    if has_token_key(paths) and os.path.lexists(paths.private):
        return (
            f"both {paths.private} and {uri_file(paths)} name a private key; keep one "
            "(the token key: remove the PEM file; the file: remove private.uri)"
        )
    return None


def find_module(
    explicit: str | None = None, environ: Mapping[str, str] | None = None
) -> tuple[str, str]:
    """The PKCS#11 module and where it came from: flag, ``$QREDO_PKCS11_MODULE``, p11-kit."""
    environ = os.environ if environ is None else environ
    given, source = (explicit, "--pkcs11-module") if explicit else (None, "")
    if given is None and environ.get(MODULE_ENV):
        given, source = environ[MODULE_ENV], MODULE_ENV
    if given is not None:
        if not os.path.isfile(given):
            msg = f"PKCS#11 module {given} (from {source}) is not a file"
            raise TokenError(msg)
        return os.path.abspath(given), source
    for pattern in P11KIT_PROXY:
        for found in sorted(glob.glob(pattern)):
            if os.path.isfile(found):
                return found, "p11-kit proxy"
    msg = f"no PKCS#11 module: the p11-kit proxy is not installed; set {MODULE_ENV}"
    raise TokenError(msg)


def read_pin(options: Pkcs11Options, environ: Mapping[str, str] | None = None) -> str | None:
    """The PIN from the PIN file (first line), else ``$QREDO_PKCS11_PIN``, else None."""
    environ = os.environ if environ is None else environ
    if options.pin_file is not None:
        data = read_bounded(options.pin_file, PIN_LIMIT, what="PIN file")
        if len(data) > PIN_LIMIT:
            msg = f"PIN file {options.pin_file} is over {PIN_LIMIT} bytes"
            raise BadInputError(msg)
        pin = data.decode("utf-8", "replace").splitlines()[0] if data.strip() else ""
        if not pin:
            msg = f"PIN file {options.pin_file} is empty"
            raise BadInputError(msg)
        return pin
    return environ.get(PIN_ENV) or None


@dataclass(frozen=True)
class RouteDecision:
    """How OpenSSL reaches the token, and why (``doctor`` shows it)."""

    route: Route
    reason: str


@functools.lru_cache(maxsize=16)
def decide_route(openssl: OpenSSL, explicit: Route | None = None) -> RouteDecision:
    """The engine when this OpenSSL has it (one ``openssl engine pkcs11 -t``), else the provider.

    LibreSSL has neither engines nor providers for PKCS#11: a :class:`TokenError` (exit 3).
    """
    v = openssl.version
    if v.flavour == "LibreSSL":
        msg = f"LibreSSL {v.number} cannot use PKCS#11 tokens (no pkcs11 engine or provider); "
        msg += "use OpenSSL 1.1.1 or later"
        raise TokenError(msg)
    if explicit is not None:
        return RouteDecision(explicit, "chosen")
    if v.flavour == "OpenSSL" and v.major is not None and v.major >= 4:
        return RouteDecision("provider", f"OpenSSL {v.number} has no engines")
    out = openssl.run("engine", "pkcs11", "-t", ok_codes=range(256))
    if out.returncode == 0 and b"[ available ]" in out.stdout:
        return RouteDecision("engine", "OpenSSL has the pkcs11 engine")
    return RouteDecision("provider", "OpenSSL has no pkcs11 engine")


@dataclass(frozen=True)
class Token:
    """How to reach keys in PKCS#11 tokens: OpenSSL, its route, the module, the PIN."""

    openssl: OpenSSL
    route: RouteDecision
    module: str
    module_source: str
    pin: str | None = field(default=None, repr=False)
    tool_explicit: str | None = None
    _pin_refused: list[TokenError] = field(default_factory=list, repr=False, compare=False)

    @property
    def env(self) -> dict[str, str]:
        """The variables for a child: the module for the route, and the PIN (maybe empty)."""
        var = "PKCS11_MODULE_PATH" if self.route.route == "engine" else "PKCS11_PROVIDER_MODULE"
        return {var: self.module, PIN_ENV: self.pin or ""}

    def require_pin(self, uri: Pkcs11Uri) -> None:
        if self.pin is None:
            msg = f"no PIN for token {uri.token!r}: set {PIN_ENV} or give a PIN file"
            raise BadInputError(msg)

    def key_args(self, uri: Pkcs11Uri, kind: Literal["private", "public"]) -> tuple[str, ...]:
        """The OpenSSL options that load the key: engine or provider, ``-passin``, no key name."""
        passin = ("-passin", f"env:{PIN_ENV}")
        if self.route.route == "engine":
            form = "-keyform" if kind == "private" else "-inform"
            return ("-engine", "pkcs11", form, "engine", *passin)
        return ("-provider", "pkcs11", "-provider", "default", *passin)

    def dgst_args(self, uri: Pkcs11Uri) -> tuple[str, ...]:
        """``openssl dgst`` options ending in ``-sign URI``."""
        return (*self.key_args(uri, "private"), "-sign", str(uri.with_type("private")))

    def _run(
        self,
        program: str,
        args: Sequence[str],
        *,
        what: str,
        uri: Pkcs11Uri | None,
        tool: str,
        stdin: bytes = b"",
    ) -> Completed:
        """Run one token child; any failure becomes a :class:`TokenError` in words.

        One token child at a time in this process (SoftHSM2 rewrites its files at every
        login; parallel logins fail at random). A wrong PIN is tried once, and never again:
        a token may lock after three.
        """
        with _TOKEN_LOCK:
            if self._pin_refused:
                first = self._pin_refused[0]
                raise TokenError(str(first), argv=first.argv, returncode=first.returncode)
            try:
                out = run(
                    program,
                    args,
                    tool=tool,
                    error=ToolError,
                    stdin=stdin,
                    timeout=self.openssl.timeout,
                    extra_env=self.env,
                )
            except ToolError as exc:
                error = token_error(exc, what, uri, self.module)
                if PIN_REFUSED_RE.search(exc.stderr):
                    self._pin_refused.append(error)
                raise error from None
        return out

    def openssl_run(self, what: str, uri: Pkcs11Uri, *args: str, stdin: bytes = b"") -> Completed:
        return self._run(self.openssl.path, args, what=what, uri=uri, tool="openssl", stdin=stdin)

    def tool(self) -> str:
        return find_tool(
            "pkcs11-tool",
            "--pkcs11-tool",
            TOOL_ENV,
            self.tool_explicit,
            error=TokenError,
            label="pkcs11-tool (OpenSC)",
        )

    def tool_run(
        self, what: str, uri: Pkcs11Uri | None, args: Sequence[str], *, login: bool = False
    ) -> Completed:
        """``pkcs11-tool --module M [--token-label T] ARGS``; ``login`` adds ``--pin env:VAR``."""
        argv = ["--module", self.module]
        if uri is not None and uri.token is not None:
            argv += ["--token-label", uri.token]
        if login:
            assert uri is not None
            self.require_pin(uri)
            argv += ["--login", "--pin", f"env:{PIN_ENV}"]
        # Empty stdin: with the PIN variable unset it would prompt, and fail, not hang.
        return self._run(self.tool(), [*argv, *args], what=what, uri=uri, tool="pkcs11-tool")

    def public_pem(self, uri: Pkcs11Uri) -> bytes:
        """The key's public half as PEM, exported by OpenSSL (``pkey -pubin ... -pubout``)."""
        args = (
            "pkey",
            *self.key_args(uri, "public"),
            "-pubin",
            "-in",
            str(uri.with_type("public")),
            "-pubout",
        )
        out = self.openssl_run(f"exporting the public key of {uri}", uri, *args)
        if b"-----BEGIN PUBLIC KEY-----" not in out.stdout:
            msg = f"openssl pkey printed no public key for {uri}"
            raise TokenError(msg, argv=out.argv, stderr=text(out.stderr))
        return out.stdout

    def sign(self, uri: Pkcs11Uri, data: bytes) -> bytes:
        """An RSA PKCS#1 v1.5 SHA-256 signature of ``data`` made inside the token."""
        self.require_pin(uri)
        out = self.openssl_run(
            f"signing with {uri}",
            uri,
            "dgst",
            "-sha256",
            *self.dgst_args(uri),
            stdin=data,
        )
        if not out.stdout:
            msg = f"openssl dgst printed no signature for {uri}"
            raise TokenError(msg, argv=out.argv, stderr=text(out.stderr))
        return out.stdout


def open_token(
    openssl: OpenSSL, options: Pkcs11Options | None = None, environ: Mapping[str, str] | None = None
) -> Token:
    """Decide route, module and PIN once per command."""
    options = options or Pkcs11Options()
    route = decide_route(openssl, options.route)
    module, source = find_module(options.module, environ)
    return Token(openssl, route, module, source, read_pin(options, environ), options.tool)


def token_signing_key(
    paths: KeyPaths, openssl: OpenSSL, options: Pkcs11Options | None = None
) -> tuple[str, tuple[str, ...], dict[str, str], Token, Pkcs11Uri]:
    """What a ``SigningKey`` for the token key of ``paths`` needs: name, args, env, token, URI.

    Refuses (exit 1) a directory with both key sources and a missing PIN.
    """
    reason = both_sources(paths)
    if reason is not None:
        raise BadInputError(reason)
    uri = read_uri_file(uri_file(paths))
    token = open_token(openssl, options)
    token.require_pin(uri)
    return str(uri), token.dgst_args(uri), token.env, token, uri
