"""The API key: validation, the ``apikey`` command (pipe and real pseudo-terminal), and ``check``.

The key is a secret, so almost every CLI test also proves it shows up on neither stdout nor
stderr, whatever the mode.
"""

from __future__ import annotations

import base64
import errno
import io
import json
import os
import select
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import Keys, run_cli
from helpers import key_pair, leftovers, umask
from hypothesis import assume, given
from hypothesis import strategies as st

import qredo_openssl as q
from qredo_openssl import _files
from qredo_openssl._apikey import ApiKeyInfo, read_apikey_input, validate_apikey

SECRET = "S3cr3t-Inner-Value-Never-Shown~~?"  # its Base64 has "_" (URL-safe), "/" (standard)
KEY_ID = "kid-7f3a9c"
JSON_RAW = json.dumps({"key_id": KEY_ID, "key": SECRET}).encode()
# Bytes whose Base64 has +/ (standard) or -_ (URL-safe) in it, and needs "==" padding.
BIN_RAW = b"\xfb\xff\xbf\x10\x42" * 6 + b"\x01"


def std(raw: bytes, padded: bool = True) -> str:
    text = base64.b64encode(raw).decode()
    return text if padded else text.rstrip("=")


def url(raw: bytes, padded: bool = True) -> str:
    text = base64.urlsafe_b64encode(raw).decode()
    return text if padded else text.rstrip("=")


JSON_KEY = url(JSON_RAW, padded=False)  # what the Qredo Web App shows
VALID = [
    pytest.param(std(BIN_RAW), "standard", None, id="standard-padded"),
    pytest.param(std(BIN_RAW, False), "standard", None, id="standard-unpadded"),
    pytest.param(url(BIN_RAW), "url-safe", None, id="urlsafe-padded"),
    pytest.param(url(BIN_RAW, False), "url-safe", None, id="urlsafe-unpadded"),
    pytest.param(std(JSON_RAW), "standard", KEY_ID, id="json-standard-padded"),
    pytest.param(JSON_KEY, "url-safe", KEY_ID, id="json-urlsafe-unpadded"),
    pytest.param("QUJD", "standard", None, id="no-special-characters"),
]
K = std(BIN_RAW)
INVALID = [
    pytest.param("", "empty", id="empty"),
    pytest.param(K[:10] + " " + K[10:], "whitespace inside", id="space-inside"),
    pytest.param(K[:10] + "\t" + K[10:], "whitespace inside", id="tab-inside"),
    pytest.param(K[:10] + "\n" + K[10:], "whitespace inside", id="line-break-inside"),
    pytest.param(K[:10] + "\u00a0" + K[10:], "whitespace inside", id="nbsp-inside"),
    pytest.param(f'"{K}"', "quoted", id="double-quoted"),
    pytest.param(f"'{K}'", "quoted", id="single-quoted"),
    pytest.param(f"\u201c{K}\u201d", "quoted", id="curly-quoted"),
    pytest.param(K + "!", "a character outside the Base64 alphabet", id="punctuation"),
    pytest.param(K[:4] + "\u00e9" + K[4:], "non-ASCII character at position 5", id="non-ascii"),
    pytest.param(K[:4] + "\x07" + K[4:], "control character", id="control-character"),
    pytest.param(K[:4] + "=" + K[4:], "padding '=' inside it at position 5", id="padding-inside"),
    pytest.param(K[:8] + "-_" + K[8:], "mixes the standard", id="mixed-alphabets"),
    pytest.param(std(BIN_RAW, False)[:-1], "wrong length", id="cut-short"),
    pytest.param(std(BIN_RAW)[:-1], "wrong length", id="padding-short"),
    pytest.param(url(b'{"key": "x"}'), "without key_id", id="json-without-key-id"),
    pytest.param(url(b'{"key_id": "x"}'), "without key", id="json-without-key"),
]
# Only the validator sees this one: piped input drops a leading BOM (see read_apikey_input).
BOM_KEY = pytest.param("\ufeff" + K, "byte-order mark", id="bom")


def fragments(key: str, size: int = 12) -> list[str]:
    """Every run of ``size`` characters of ``key`` with whitespace and quotes taken out."""
    core = "".join(c for c in key if c.isalnum() or c in "+/-_")
    return [core[i : i + size] for i in range(max(1, len(core) - size + 1))]


def assert_secret_absent(text: str, key: str) -> None:
    assert SECRET not in text
    leaked = [f for f in fragments(key) if f and f in text]
    assert not leaked, f"part of the API key was shown: {leaked[:1]}"


# -- validate_apikey ------------------------------------------------------------------------


@pytest.mark.parametrize(("key", "alphabet", "key_id"), VALID)
def test_valid_keys(key: str, alphabet: str, key_id: str | None) -> None:
    assert validate_apikey(key) == ApiKeyInfo(alphabet, key_id)


@pytest.mark.parametrize(("key", "reason"), [*INVALID, BOM_KEY])
def test_invalid_keys_have_a_one_line_reason_without_the_key(key: str, reason: str) -> None:
    with pytest.raises(q.BadInputError, match=reason) as info:
        validate_apikey(key)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("the API key")
    if key:
        assert_secret_absent(message, key)


@given(raw=st.binary(min_size=1, max_size=256), urlsafe=st.booleans(), padded=st.booleans())
def test_any_bytes_in_base64_validate(raw: bytes, urlsafe: bool, padded: bool) -> None:
    # A JSON object must hold key_id and key (SPEC), so random bytes that happen to be one are
    # the one documented exception.
    assume(not raw.strip().startswith(b"{"))
    text = (url if urlsafe else std)(raw, padded)
    info = validate_apikey(text)
    assert info.key_id is None
    if set(text) & set("-_"):
        assert info.alphabet == "url-safe"
    if set(text) & set("+/"):
        assert info.alphabet == "standard"


@given(key_id=st.text(max_size=40), secret=st.text(max_size=40), urlsafe=st.booleans())
def test_json_keys_show_their_key_id(key_id: str, secret: str, urlsafe: bool) -> None:
    raw = json.dumps({"key_id": key_id, "key": secret}).encode()
    assert validate_apikey((url if urlsafe else std)(raw, padded=False)).key_id == key_id


# -- read_apikey_input and save_apikey, in process ------------------------------------------


def piped(data: bytes) -> io.TextIOWrapper:
    return io.TextIOWrapper(io.BytesIO(data), encoding="utf-8")


@pytest.mark.parametrize(
    ("data", "text"),
    [
        pytest.param(b"abc\n", "abc\n", id="newline-kept-for-the-caller"),
        pytest.param(b"\xef\xbb\xbfabc\r\n", "abc\r\n", id="bom-dropped"),
        pytest.param(b"", "", id="empty"),
    ],
)
def test_read_piped_input(data: bytes, text: str) -> None:
    assert read_apikey_input(piped(data)) == text


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        pytest.param(b"A" * 65 * 1024, "over 64 KiB", id="too-large"),
        pytest.param(b"QUJD\xff\n", "not UTF-8", id="not-utf8"),
    ],
)
def test_read_piped_input_refuses(data: bytes, reason: str) -> None:
    with pytest.raises(q.BadInputError, match=reason):
        read_apikey_input(piped(data))


def test_read_closed_stdin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", None)
    with pytest.raises(q.BadInputError, match="standard input is closed"):
        read_apikey_input()


class _Unreadable(io.RawIOBase):
    def readable(self) -> bool:
        return True

    def readinto(self, buffer: object) -> int:
        raise OSError(errno.EIO, "Input/output error")


def test_read_unreadable_stdin() -> None:
    stream = io.TextIOWrapper(io.BufferedReader(_Unreadable()))
    with pytest.raises(q.BadInputError, match="cannot read the API key from standard input"):
        read_apikey_input(stream)


def test_save_writes_one_line_0600_whatever_the_umask(tmp_path: Path) -> None:
    target = tmp_path / "new" / "apikey"
    with umask(0):
        saved = q.save_apikey(str(target), f"  {JSON_KEY}\r\n")
    assert saved == q.SavedApiKey(str(target), "url-safe", KEY_ID, ())
    assert target.read_bytes() == JSON_KEY.encode() + b"\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert stat.S_IMODE(target.parent.stat().st_mode) == 0o700
    assert leftovers(target.parent) == []


@pytest.mark.parametrize("kind", ["file", "directory", "dangling-symlink"])
def test_save_never_clobbers(tmp_path: Path, kind: str) -> None:
    target = tmp_path / "apikey"
    if kind == "file":
        target.write_bytes(b"old\n")
    elif kind == "directory":
        target.mkdir()
    else:
        target.symlink_to(tmp_path / "nowhere")
    with pytest.raises(q.RefusedOverwriteError, match="already exists"):
        q.save_apikey(str(target), K)
    assert os.path.lexists(target)
    if kind == "file":
        assert target.read_bytes() == b"old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["apikey"]


def test_save_bad_key_creates_nothing(tmp_path: Path) -> None:
    with pytest.raises(q.BadInputError):
        q.save_apikey(str(tmp_path / "new" / "apikey"), f'"{K}"')
    assert list(tmp_path.iterdir()) == []


def test_save_force_keeps_a_backup(tmp_path: Path) -> None:
    target = tmp_path / "apikey"
    q.save_apikey(str(target), K)
    saved = q.save_apikey(str(target), JSON_KEY, force=True)
    assert len(saved.backups) == 1
    backup = Path(saved.backups[0])
    assert backup.parent == tmp_path
    assert backup.name.startswith("apikey.")
    assert backup.name.endswith("Z.bak")
    assert backup.read_bytes() == K.encode() + b"\n"
    assert target.read_bytes() == JSON_KEY.encode() + b"\n"


@pytest.mark.parametrize("exc", [OSError(errno.EIO, "disk on fire"), KeyboardInterrupt()])
def test_save_failure_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exc: BaseException
) -> None:
    target = tmp_path / "apikey"
    real_publish = _files.Publisher.publish

    def publish_then_fail(self: _files.Publisher, tmp: str, final: str, **kw: bool) -> None:
        real_publish(self, tmp, final, **kw)
        raise exc

    monkeypatch.setattr(_files.Publisher, "publish", publish_then_fail)
    with pytest.raises(type(exc)):
        q.save_apikey(str(target), K)
    assert list(tmp_path.iterdir()) == []


def test_save_failure_with_force_restores_the_old_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "apikey"
    target.write_bytes(b"old\n")
    real_publish = _files.Publisher.publish

    def publish_then_fail(self: _files.Publisher, tmp: str, final: str, **kw: bool) -> None:
        real_publish(self, tmp, final, **kw)
        raise OSError(errno.EIO, "disk on fire")

    monkeypatch.setattr(_files.Publisher, "publish", publish_then_fail)
    with pytest.raises(OSError, match="disk on fire"):
        q.save_apikey(str(target), K, force=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["apikey"]
    assert target.read_bytes() == b"old\n"


# -- the apikey command, through real subprocesses ------------------------------------------


@pytest.mark.parametrize("ending", ["\n", "\r\n", "", "  \t\n\n"])
@pytest.mark.parametrize(("key", "alphabet", "key_id"), VALID)
def test_cli_saves_valid_keys(
    tmp_path: Path, key: str, alphabet: str, key_id: str | None, ending: str
) -> None:
    keydir = tmp_path / "keys"
    r = run_cli("apikey", f"{keydir}/", input=(key + ending).encode())
    assert r.returncode == 0, r.stderr
    target = keydir / "apikey"
    assert target.read_bytes() == key.encode() + b"\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert r.stdout == ""
    assert f"Saved {keydir}/apikey (0600" in r.stderr
    assert (f"key_id: {key_id}" in r.stderr) == (key_id is not None)
    assert_secret_absent(r.stdout + r.stderr, key)
    assert leftovers(keydir) == []


@pytest.mark.parametrize(("key", "reason"), INVALID)
@pytest.mark.parametrize("mode", [(), ("--json",), ("-q",)])
def test_cli_refuses_invalid_keys(
    tmp_path: Path, key: str, reason: str, mode: tuple[str, ...]
) -> None:
    keydir = tmp_path / "keys"
    r = run_cli(*mode, "apikey", str(keydir), input=(key + "\n").encode())
    assert r.returncode == 1
    assert not keydir.exists()  # not even the directory
    lines = r.stderr.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: the API key")
    if mode == ("--json",):
        assert json.loads(r.stdout)["error"]["code"] == 1
    else:
        assert r.stdout == ""
    if key:
        assert_secret_absent(r.stdout + r.stderr, key)


@pytest.mark.parametrize("mode", [(), ("--json",), ("-q",)])
def test_cli_never_shows_the_key(tmp_path: Path, mode: tuple[str, ...]) -> None:
    target = tmp_path / "apikey"
    r = run_cli(*mode, "apikey", str(tmp_path), input=f"{JSON_KEY}\n".encode())
    assert r.returncode == 0, r.stderr
    assert_secret_absent(r.stdout + r.stderr, JSON_KEY)
    assert target.read_bytes() == JSON_KEY.encode() + b"\n"
    if mode == ("--json",):
        assert json.loads(r.stdout) == {
            "path": str(target),
            "key_id": KEY_ID,
            "alphabet": "url-safe",
            "backups": [],
        }
        assert r.stderr == ""
    elif mode == ("-q",):
        assert r.stdout == r.stderr == ""
    else:
        assert r.stdout == ""
        assert r.stderr == f"Saved {target} (0600, url-safe Base64); key_id: {KEY_ID}\n"


def test_cli_drops_a_byte_order_mark(tmp_path: Path) -> None:
    r = run_cli("apikey", str(tmp_path), input=f"\ufeff{K}\r\n".encode())
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "apikey").read_bytes() == K.encode() + b"\n"


def test_cli_key_without_json_has_null_key_id(tmp_path: Path) -> None:
    r = run_cli("--json", "apikey", str(tmp_path), input=f"{K}\n".encode())
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["key_id"] is None


@pytest.mark.parametrize("mode", [(), ("--json",)])
def test_cli_existing_apikey_is_refused_and_unchanged(
    tmp_path: Path, mode: tuple[str, ...]
) -> None:
    target = tmp_path / "apikey"
    target.write_bytes(b"old-key\n")
    target.chmod(0o640)
    r = run_cli(*mode, "apikey", str(tmp_path), input=f"{JSON_KEY}\n".encode())
    assert r.returncode == 4
    assert "already exists" in r.stderr
    assert target.read_bytes() == b"old-key\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["apikey"]
    if mode:
        assert json.loads(r.stdout)["error"]["code"] == 4
    assert_secret_absent(r.stdout + r.stderr, JSON_KEY)


@pytest.mark.parametrize("mode", [(), ("--json",)])
def test_cli_force_keeps_the_old_key(tmp_path: Path, mode: tuple[str, ...]) -> None:
    target = tmp_path / "apikey"
    assert run_cli("apikey", str(tmp_path), input=f"{K}\n".encode()).returncode == 0
    r = run_cli(*mode, "apikey", "--force", str(tmp_path), input=f"{JSON_KEY}\n".encode())
    assert r.returncode == 0, r.stderr
    backups = sorted(tmp_path.glob("apikey.*.bak"))
    assert len(backups) == 1
    assert backups[0].read_bytes() == K.encode() + b"\n"
    assert target.read_bytes() == JSON_KEY.encode() + b"\n"
    if mode:
        assert json.loads(r.stdout)["backups"] == [str(backups[0])]
    else:
        assert f"kept the old file as {backups[0]}" in r.stderr
    assert_secret_absent(r.stdout + r.stderr, JSON_KEY)
    assert_secret_absent(r.stdout + r.stderr, K)


def test_cli_apikey_option_names_the_file(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere" / "qredo.key"
    r = run_cli("apikey", "--apikey", str(target), input=f"{K}\n".encode())
    assert r.returncode == 0, r.stderr
    assert target.read_bytes() == K.encode() + b"\n"


def test_cli_with_stdin_closed(tmp_path: Path) -> None:
    cmd = f'exec "$0" -m qredo_openssl apikey {tmp_path}/k <&-'
    r = subprocess.run(
        ["sh", "-c", cmd, sys.executable], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 1
    assert (
        r.stderr == "error: standard input is closed: pipe the API key in, or run on a terminal\n"
    )
    assert not (tmp_path / "k").exists()


def test_cli_needs_no_openssl_and_never_loads_sh(tmp_path: Path) -> None:
    """apikey runs no child at all, so the key cannot reach any argv."""
    code = (
        "import sys\n"
        "from qredo_openssl._cli import main\n"
        "rc = main(['--openssl', '/nonexistent/openssl', 'apikey', sys.argv[1]])\n"
        "sys.exit(100 + rc if 'sh' in sys.modules else rc)\n"
    )
    empty = tmp_path / "empty-path"
    empty.mkdir()
    env = {**os.environ, "PATH": str(empty), "QREDO_OPENSSL": "/nonexistent/openssl"}
    r = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "k")],
        input=f"{K}\n",
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "k" / "apikey").read_bytes() == K.encode() + b"\n"


# -- the hidden prompt, through a real pseudo-terminal --------------------------------------


def _ctty_child() -> None:  # pragma: no cover - runs in the child
    import fcntl
    import termios

    fcntl.ioctl(0, termios.TIOCSCTTY, 0)  # the pty becomes /dev/tty, as in a real terminal


class Pty:
    """The CLI on a real pseudo-terminal; the test types into the master side."""

    def __init__(self, *args: str, cwd: Path, controlling: bool) -> None:
        self.master, slave = os.openpty()
        env = {k: v for k, v in os.environ.items() if k != "FORCE_COLOR"}
        env.update(NO_COLOR="1", TERM="dumb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "qredo_openssl", *args],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            cwd=cwd,
            env=env,
            start_new_session=True,  # never the terminal pytest itself may be running in
            preexec_fn=_ctty_child if controlling else None,  # before exec: one call, no locks
        )
        os.close(slave)
        self.seen = b""

    def read_until(self, wanted: bytes | None, deadline: float = 60) -> bytes:
        """Read until ``wanted`` shows up (None: until the child closes the terminal)."""
        end = time.monotonic() + deadline  # a guard against hanging, not an assertion
        while wanted is None or wanted not in self.seen:
            assert time.monotonic() < end, f"timed out; saw {self.seen!r}"
            ready, _, _ = select.select([self.master], [], [], 0.5)
            if not ready:
                continue
            try:
                chunk = os.read(self.master, 4096)
            except OSError as exc:  # Linux: EIO once every slave fd is closed
                if exc.errno != errno.EIO:
                    raise
                chunk = b""
            if not chunk:
                break
            self.seen += chunk
        return self.seen

    def type(self, data: bytes) -> None:
        os.write(self.master, data)

    def finish(self) -> tuple[int, str]:
        out = self.read_until(None)
        rc = self.proc.wait(timeout=60)
        os.close(self.master)
        return rc, out.decode("utf-8", "replace")


@pytest.mark.parametrize(
    "controlling", [pytest.param(True, id="dev-tty"), pytest.param(False, id="stdin-tty")]
)
def test_hidden_prompt_on_a_terminal(tmp_path: Path, controlling: bool) -> None:
    term = Pty("apikey", "keys", cwd=tmp_path, controlling=controlling)
    # Type only once the prompt is up: getpass turns echo off before it writes the prompt.
    term.read_until(b"(input hidden): ")
    term.type(JSON_KEY.encode() + b"\n")
    rc, out = term.finish()
    assert rc == 0, out
    assert "Qredo API key (input hidden): " in out
    assert f"key_id: {KEY_ID}" in out
    assert_secret_absent(out, JSON_KEY)
    target = tmp_path / "keys" / "apikey"
    assert target.read_bytes() == JSON_KEY.encode() + b"\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


def test_ctrl_d_at_the_prompt_is_an_empty_key(tmp_path: Path) -> None:
    term = Pty("apikey", "keys", cwd=tmp_path, controlling=True)
    term.read_until(b"(input hidden): ")
    term.type(b"\x04")
    rc, out = term.finish()
    assert rc == 1
    assert "error: the API key is empty" in out
    assert not (tmp_path / "keys").exists()


def test_ctrl_c_at_the_prompt_keeps_nothing(tmp_path: Path) -> None:
    term = Pty("apikey", "keys", cwd=tmp_path, controlling=True)
    term.read_until(b"(input hidden): ")
    term.type(K[:10].encode() + b"\x03")
    rc, out = term.finish()
    assert rc == 130
    assert "interrupted" in out
    assert_secret_absent(out, K)
    assert not (tmp_path / "keys").exists()


def test_existing_apikey_is_refused_before_the_prompt(tmp_path: Path) -> None:
    (tmp_path / "apikey").write_bytes(b"old\n")
    term = Pty("apikey", ".", cwd=tmp_path, controlling=True)
    rc, out = term.finish()
    assert rc == 4
    assert "input hidden" not in out
    assert (tmp_path / "apikey").read_bytes() == b"old\n"


# -- check, after apikey --------------------------------------------------------------------


@pytest.mark.real_openssl
def test_check_reports_every_apikey_finding_ok(tmp_path: Path, keys: Keys) -> None:
    keydir = key_pair(tmp_path / "keys", keys)
    r = run_cli("apikey", f"{keydir}/", input=f"{JSON_KEY}\n".encode())
    assert r.returncode == 0, r.stderr

    r = run_cli("--json", "check", f"{keydir}/")
    findings = {f["name"]: f for f in json.loads(r.stdout)}
    for name in ("apikey.exists", "apikey.format", "apikey.mode"):
        assert findings[name]["status"] == "ok", findings[name]
    assert KEY_ID in findings["apikey.format"]["message"]
    assert r.returncode == 0, r.stdout
    assert_secret_absent(r.stdout + r.stderr, JSON_KEY)

    r = run_cli("check", f"{keydir}/")
    assert r.returncode == 0
    assert_secret_absent(r.stdout + r.stderr, JSON_KEY)


def test_check_and_sign_agree_on_a_bom(tmp_path, keys):
    """One reader for the saved key: what check fails, sign refuses too (exit 1)."""
    d = tmp_path / "k"
    d.mkdir()
    shutil.copy(keys.pkcs1, d / "private.pem")
    shutil.copy(keys.public, d / "public.pem")
    (d / "private.pem").chmod(0o600)
    (d / "apikey").write_bytes(b"\xef\xbb\xbf" + base64.b64encode(b"k" * 24) + b"\n")
    (d / "apikey").chmod(0o600)
    check = run_cli("--json", "check", str(d))
    findings = {f["name"]: f["status"] for f in json.loads(check.stdout)}
    assert findings["apikey.format"] == "fail"
    sign = run_cli("sign", "--url", "https://api.qredo.network/api/v1/p/company", str(d))
    assert sign.returncode == 1
    assert sign.stdout == ""
    assert "apikey" in sign.stderr
