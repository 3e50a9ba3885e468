"""SoftHSM2 tokens for tests: each in a private ``SOFTHSM2_CONF`` (never the system token dir).

Real parts only: ``softhsm2-util`` makes the token, ``pkcs11-tool`` (OpenSC) lists objects,
the system OpenSSL's pkcs11 engine signs. Tests skip, saying why, only when one of those is
not installed; CI installs them (``.ci/run``), so there they run.
"""

from __future__ import annotations

import os
import resource
import shlex
import shutil
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

SOFTHSM_UTIL = shutil.which("softhsm2-util")
PKCS11_TOOL = shutil.which("pkcs11-tool")
OPENSSL = shutil.which("openssl")
MODULES = (
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib64/softhsm/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
)
MODULE = next((m for m in MODULES if os.path.isfile(m)), None)
# Letters and a dash: a PIN no argv holds by accident (ids are hex, labels are ours).
PIN = "Zq7-pin-Wx"
SO_PIN = "so-87654321"
TOKEN = "qredo-test"


def _engine_present() -> bool:
    if OPENSSL is None:
        return False
    r = subprocess.run([OPENSSL, "engine", "pkcs11", "-t"], capture_output=True, check=False)
    return r.returncode == 0 and b"[ available ]" in r.stdout


def missing() -> str | None:
    """Why SoftHSM tests cannot run here, or None."""
    if SOFTHSM_UTIL is None:
        return "softhsm2-util not installed (Debian: softhsm2)"
    if MODULE is None:
        return "libsofthsm2.so not found"
    if PKCS11_TOOL is None:
        return "pkcs11-tool not installed (Debian: opensc)"
    if not _engine_present():
        return "OpenSSL has no pkcs11 engine (Debian: libengine-pkcs11-openssl)"
    return None


@dataclass
class Hsm:
    """A private SoftHSM2 token and the environment that reaches it."""

    dir: Path
    conf: Path
    token: str
    module: str

    @property
    def env(self) -> dict[str, str]:
        """For ``run_cli``: the private token, its module, and the PIN."""
        return {
            "SOFTHSM2_CONF": str(self.conf),
            "QREDO_PKCS11_MODULE": self.module,
            "QREDO_PKCS11_PIN": PIN,
        }

    def child_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("QREDO_")}
        env.update(self.env, PKCS11_MODULE_PATH=self.module)
        return env

    def tool(self, *args: str, login: bool = False) -> subprocess.CompletedProcess[str]:
        """Run the real ``pkcs11-tool`` on this token (``--pin env:`` when ``login``)."""
        assert PKCS11_TOOL
        argv = [PKCS11_TOOL, "--module", self.module, "--token-label", self.token]
        if login:
            argv += ["--login", "--pin", "env:QREDO_PKCS11_PIN"]
        return subprocess.run(
            [*argv, *args], capture_output=True, text=True, env=self.child_env(),
            stdin=subprocess.DEVNULL, check=False, timeout=60,
        )  # fmt: skip

    def objects(self) -> str:
        r = self.tool("--list-objects", login=True)
        assert r.returncode == 0, r.stderr
        return r.stdout

    def engine_sign(self, uri: str, data: bytes) -> bytes:
        """A signature by ``openssl dgst -engine pkcs11`` run directly, as a user would."""
        assert OPENSSL
        r = subprocess.run(
            [OPENSSL, "dgst", "-sha256", "-engine", "pkcs11", "-keyform", "engine",
             "-passin", "env:QREDO_PKCS11_PIN", "-sign", uri],
            input=data, capture_output=True, env=self.child_env(), check=True, timeout=60,
        )  # fmt: skip
        return r.stdout


def make_hsm(base: Path, token: str = TOKEN) -> Hsm:
    """Initialise a fresh token in ``base/tokens`` under ``base/softhsm2.conf``."""
    why = missing()
    if why is not None:
        pytest.skip(why)
    assert SOFTHSM_UTIL
    assert MODULE
    # The engine crashes at exit after a failed login (libp11 with OpenSSL 3.0, exit 139):
    # no core files from the failure tests, wherever the limit was left.
    soft, hard = resource.getrlimit(resource.RLIMIT_CORE)
    if soft != 0:
        resource.setrlimit(resource.RLIMIT_CORE, (0, hard))
    (base / "tokens").mkdir(mode=0o700)
    conf = base / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {base / 'tokens'}\nobjectstore.backend = file\n"
        "log.level = ERROR\n"
    )
    env = dict(os.environ, SOFTHSM2_CONF=str(conf))
    subprocess.run(
        [SOFTHSM_UTIL, "--init-token", "--free", "--label", token, "--so-pin", SO_PIN,
         "--pin", PIN],
        env=env, check=True, capture_output=True, stdin=subprocess.DEVNULL, timeout=60,
    )  # fmt: skip
    return Hsm(base, conf, token, MODULE)


def logging_wrapper(directory: Path, real: str, name: str) -> tuple[Path, Path]:
    """``directory/name``: logs its argv (one line, tab-separated), then runs ``real``.

    Returns (wrapper, log).
    """
    directory.mkdir(exist_ok=True)
    log = directory / f"{name}.log"
    wrapper = directory / name
    wrapper.write_text(
        "#!/bin/sh\n"
        f"{{ sep=; for a in \"$@\"; do printf '%s%s' \"$sep\" \"$a\"; sep='\t'; done; "
        f"printf '\\n'; }} >> {shlex.quote(str(log))}\n"
        f'exec {shlex.quote(real)} "$@"\n'
    )
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    return wrapper, log
