"""Start-up paths load only what they use: no ``sh``, ``rich`` or ``asyncio`` where not needed.

Real subprocesses under ``python -X importtime``, which lists every module a run imported.
That list is the evidence; nothing here measures or asserts a time.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import key_pair

HEAVY = ("sh", "rich", "asyncio")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("FORCE_COLOR", None)  # FORCE_COLOR would ask for rich even on a pipe
    return env


def imported(*args: str, input: str | None = None, env: dict[str, str] | None = None) -> set[str]:
    """Every module ``python -m qredo_openssl ARGS`` had loaded when it exited, output to
    pipes (no terminal). Read from ``sys.modules`` at exit: ``-X importtime`` misses what
    ``importlib.import_module`` loads (the CLI loads its command module so)."""
    code = (
        "import atexit, json, os, runpy, sys\n"
        "fd = int(os.environ['MODULES_FD'])\n"
        "atexit.register(lambda: os.write(fd, json.dumps(sorted(sys.modules)).encode()))\n"
        "sys.argv[0] = 'qredo_openssl'\n"
        "runpy.run_module('qredo_openssl', run_name='__main__', alter_sys=True)\n"
    )
    read, write = os.pipe()
    try:
        r = subprocess.run(
            [sys.executable, "-c", code, *args],
            input=input,
            capture_output=True,
            text=True,
            env={**(_env() if env is None else env), "MODULES_FD": str(write)},
            pass_fds=(write,),
            timeout=120,
        )
        os.close(write)
        write = -1
        with os.fdopen(read, "rb") as f:
            read = -1
            mods = set(json.loads(f.read() or b"[]"))
    finally:
        for fd in (read, write):
            if fd >= 0:
                os.close(fd)
    assert "qredo_openssl._cli" in mods, r.stderr  # the listing really is there
    return mods


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(["--version"], id="version"),
        pytest.param(["--help"], id="help"),
        pytest.param(["keygen", "--help"], id="keygen-help"),
        pytest.param(["--json", "frobnicate"], id="json-usage-error"),
        pytest.param(
            ["--json", "--openssl", "/nonexistent/openssl", "check", "."], id="json-no-openssl"
        ),
    ],
)
def test_paths_without_openssl_import_nothing_heavy(args: list[str]) -> None:
    mods = imported(*args)
    assert [m for m in HEAVY if m in mods] == []


def test_version_builds_no_command() -> None:
    mods = imported("--version")
    assert sorted(m for m in mods if m.startswith("qredo_openssl._cli.")) == [
        "qredo_openssl._cli._base"
    ]


def test_json_apikey_imports_nothing_heavy(tmp_path: Path) -> None:
    key = "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo="
    mods = imported("--json", "apikey", str(tmp_path / "k"), input=key + "\n")
    assert (tmp_path / "k" / "apikey").exists()
    assert [m for m in HEAVY if m in mods] == []


@pytest.fixture
def key_dir(keys, tmp_path: Path) -> Path:
    return key_pair(tmp_path / "k", keys)


@pytest.mark.real_openssl
@pytest.mark.parametrize(
    "args", [pytest.param(["--json"], id="json"), pytest.param([], id="table")]
)
def test_check_on_a_pipe_does_not_import_rich(key_dir: Path, args: list[str]) -> None:
    mods = imported(*args, "check", str(key_dir))
    assert "sh" in mods  # it did run OpenSSL
    assert "rich" not in mods
    # sh loads without it: _shload._AsyncioOnDemand, kept because it saves ~40 ms a command
    # (its docstring has the measurements; scripts/bench case "s" re-measures it)
    assert "asyncio" not in mods
    # Only what a PEM pair's check uses: its command module, no token, rotation or send code.
    ours = {m for m in mods if m.startswith("qredo_openssl.")}
    assert {m for m in ours if m.startswith("qredo_openssl._cli.")} == {
        "qredo_openssl._cli._base", "qredo_openssl._cli.checks"
    }
    unused = ("_pkcs11", "_journal", "_rotate", "_send", "_curl", "_sign", "_keygen", "_batch")
    assert [m for m in ours if m.split(".")[1].startswith(unused)] == []


@pytest.mark.real_openssl
def test_sh_async_still_works_after_our_import() -> None:
    """However ``sh`` is imported for us, its asyncio support must stay intact for others."""
    code = (
        "import sys\n"
        "from qredo_openssl._shload import load_sh as _sh\n"
        "sh = _sh()\n"
        "import asyncio\n"
        "assert asyncio.__file__\n"  # the real module, whatever stood in while sh loaded
        "async def main():\n"
        "    return await sh.Command(sys.argv[1])('version', _async=True)\n"
        "print(asyncio.run(main()).strip())\n"
    )
    openssl = shutil.which("openssl")
    assert openssl is not None
    r = subprocess.run(
        [sys.executable, "-c", code, openssl], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr
    assert "SSL" in r.stdout


def test_every_public_name_resolves():
    """The lazy public API: each name in __all__ loads, and from the module it says."""
    import qredo_openssl as q

    for name in q.__all__:
        assert getattr(q, name) is not None, name
    assert set(dir(q)) == set(q.__all__)
    with pytest.raises(AttributeError):
        q.no_such_name  # noqa: B018
