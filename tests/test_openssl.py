"""Finding, identifying and running OpenSSL: the version matrix, discovery and failures."""

from __future__ import annotations

import os
import signal
import stat
from pathlib import Path

import pytest
from conftest import VERSIONS
from hypothesis import given
from hypothesis import strategies as st

import qredo_openssl as q
from qredo_openssl._errors import OpenSSLError
from qredo_openssl._openssl import decide_traditional, find_openssl, openssl_source, parse_version
from qredo_openssl._run import child_env
from qredo_openssl._run import run as _run


def run_openssl(path: str, args: list[str], **kw: object) -> object:
    return _run(path, args, error=OpenSSLError, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("line", "flavour", "numbers", "letter", "needs"),
    [
        pytest.param(VERSIONS["1.0.2"], "OpenSSL", (1, 0, 2), "k", False, id="1.0.2k-fips"),
        pytest.param(VERSIONS["1.1.1"], "OpenSSL", (1, 1, 1), "w", False, id="1.1.1w"),
        pytest.param(VERSIONS["3.0"], "OpenSSL", (3, 0, 7), "", True, id="3.0.7"),
        pytest.param(VERSIONS["3.5"], "OpenSSL", (3, 5, 0), "", True, id="3.5.0-library"),
        pytest.param(VERSIONS["quictls"], "OpenSSL", (3, 1, 5), "", True, id="quictls"),
        pytest.param(VERSIONS["libressl"], "LibreSSL", (3, 3, 6), "", False, id="libressl"),
        pytest.param("LibreSSL 2.8.3\n", "LibreSSL", (2, 8, 3), "", False, id="libressl-old"),
        pytest.param("OpenSSL 3.0.0-alpha1 1 Jan 2021", "OpenSSL", (3, 0, 0), "", True, id="alpha"),
        pytest.param(
            "OpenSSL 1.0.2zf 1 Jan 2022", "OpenSSL", (1, 0, 2), "zf", False, id="2letters"
        ),
        pytest.param(VERSIONS["garbage"], "unknown", (None, None, None), "", None, id="garbage"),
        pytest.param("", "unknown", (None, None, None), "", None, id="empty"),
    ],
)
def test_parse_version(line, flavour, numbers, letter, needs):
    v = parse_version(line)
    assert v.flavour == flavour
    assert (v.major, v.minor, v.patch) == numbers
    assert v.letter == letter
    assert v.needs_traditional is needs
    assert v.raw == line.strip().splitlines()[0].strip() if line.strip() else v.raw == ""


def test_library_version_does_not_decide():
    # The CLI's own version is the first on the line, whatever the library says.
    v = parse_version("OpenSSL 1.1.1w  11 Sep 2023 (Library: OpenSSL 3.0.2 15 Mar 2022)")
    assert (v.major, v.minor, v.patch, v.letter) == (1, 1, 1, "w")
    assert v.needs_traditional is False


@given(st.text())
def test_parse_version_never_raises(text):
    v = parse_version(text)
    assert v.flavour in ("OpenSSL", "LibreSSL", "unknown")


@given(
    flavour=st.sampled_from(["OpenSSL", "LibreSSL"]),
    major=st.integers(0, 99),
    minor=st.integers(0, 99),
    patch=st.integers(0, 99),
    letter=st.sampled_from(["", "a", "k", "w", "zf"]),
    suffix=st.sampled_from(["", "-fips", "+quic", "-dev", "-alpha1"]),
    date=st.sampled_from(["", " 1 Nov 2022", "  26 Jan 2017"]),
    library=st.booleans(),
)
def test_parse_version_round_trips(flavour, major, minor, patch, letter, suffix, date, library):
    line = f"{flavour} {major}.{minor}.{patch}{letter}{suffix}{date}"
    if library:
        line += f" (Library: {flavour} 9.9.9{date})"
    v = parse_version(line + "\n")
    assert (v.flavour, v.major, v.minor, v.patch) == (flavour, major, minor, patch)
    assert (v.letter, v.suffix, v.raw) == (letter, suffix, line)
    assert v.number == f"{major}.{minor}.{patch}{letter}"
    assert v.needs_traditional is (flavour == "OpenSSL" and major >= 3)


def test_child_env_is_a_copy_in_the_c_locale():
    env = {"PATH": "/bin", "LANG": "de_DE.UTF-8"}
    child = child_env(env)
    assert child == {"PATH": "/bin", "LANG": "de_DE.UTF-8", "LC_ALL": "C"}
    assert env == {"PATH": "/bin", "LANG": "de_DE.UTF-8"}


def test_child_env_holds_secrets_only_when_handed_them():
    """The API key and the PIN given in the environment reach no child that does not need them."""
    env = {"PATH": "/bin", "QREDO_APIKEY": "secret-key", "QREDO_PKCS11_PIN": "1234"}
    assert child_env(env) == {"PATH": "/bin", "LC_ALL": "C"}
    assert child_env(env, {"QREDO_PKCS11_PIN": "1234"})["QREDO_PKCS11_PIN"] == "1234"


def _exe(path: Path, text: str = "#!/bin/sh\necho OpenSSL 3.0.7 1 Nov 2022\n") -> Path:
    path.write_text(text)
    path.chmod(0o755)
    return path


def test_find_openssl_order(tmp_path):
    flag = _exe(tmp_path / "flag-openssl")
    env_bin = _exe(tmp_path / "env-openssl")
    (tmp_path / "bin").mkdir()
    on_path = _exe(tmp_path / "bin" / "openssl")
    environ = {"PATH": str(tmp_path / "bin"), "QREDO_OPENSSL": str(env_bin)}
    assert find_openssl(str(flag), environ) == str(flag)
    assert find_openssl(None, environ) == str(env_bin)
    assert find_openssl(None, {"PATH": str(tmp_path / "bin")}) == str(on_path)
    assert openssl_source(str(flag), environ) == "--openssl"
    assert openssl_source(None, environ) == "QREDO_OPENSSL"
    assert openssl_source(None, {}) == "PATH"


@pytest.mark.parametrize(
    ("explicit", "environ", "says"),
    [
        pytest.param(
            "/nonexistent/openssl", {}, r"/nonexistent/openssl \(from --openssl\)", id="flag"
        ),
        pytest.param(None, {"QREDO_OPENSSL": "/no/such"}, "from QREDO_OPENSSL", id="env"),
        pytest.param(None, {"PATH": "/nonexistent"}, "on PATH", id="path"),
    ],
)
def test_find_openssl_missing(explicit, environ, says):
    with pytest.raises(q.OpenSSLError, match=says) as info:
        find_openssl(explicit, environ)
    assert info.value.exit_code == 3


def test_not_executable(tmp_path):
    f = tmp_path / "openssl"
    f.write_text("#!/bin/sh\n")
    f.chmod(0o644)
    with pytest.raises(q.OpenSSLError, match="not found"):
        find_openssl(str(f), {})


def test_run_failure_carries_stderr(tmp_path):
    fake = _exe(
        tmp_path / "openssl", "#!/bin/sh\necho 'first line' >&2\necho 'second' >&2\nexit 7\n"
    )
    with pytest.raises(q.OpenSSLError) as info:
        run_openssl(str(fake), ["genrsa", "-out", "x"])
    err = info.value
    assert err.returncode == 7
    assert err.stderr == "first line\nsecond\n"
    assert err.argv == (str(fake), "genrsa", "-out", "x")
    assert "openssl genrsa failed (exit 7): first line" in str(err)


def test_run_timeout_kills(tmp_path):
    pidfile = tmp_path / "pid"
    fake = _exe(tmp_path / "openssl", f"#!/bin/sh\necho $$ > {pidfile}\nexec sleep 30\n")
    with pytest.raises(q.OpenSSLError, match=r"timed out after 0\.5 s"):
        run_openssl(str(fake), ["genrsa"], timeout=0.5)
    pid = int(pidfile.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_run_unrunnable(tmp_path):
    bad = tmp_path / "openssl"
    bad.write_bytes(b"\x7fELF garbage")
    bad.chmod(0o755)
    with pytest.raises(q.OpenSSLError, match=r"cannot run .*Exec format error"):
        run_openssl(str(bad), ["version"])
    assert _zombies() == []  # the child whose exec failed was reaped


def _zombies() -> list[int]:
    """This process's children that exited and were never reaped, from /proc."""
    found = []
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, ppid = stat_file.read_text().rsplit(") ", 1)[1].split()[:2]
        except (OSError, IndexError, ValueError):
            continue
        if int(ppid) == os.getpid() and state == "Z":
            found.append(int(stat_file.parent.name))
    return found


def test_child_umask_is_077(tmp_path):
    fake = _exe(tmp_path / "openssl", "#!/bin/sh\ntouch made\n")
    old = os.umask(0o022)
    try:
        run_openssl(str(fake), ["x"], cwd=str(tmp_path))
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "made").stat().st_mode) == 0o600


def test_stdin_is_data_not_argv(tmp_path):
    fake = _exe(tmp_path / "openssl", "#!/bin/sh\ncat\n")
    out = run_openssl(str(fake), ["dgst"], stdin=b"secret payload")
    assert out.stdout == b"secret payload"
    assert out.argv == (str(fake), "dgst")


@pytest.mark.parametrize("flavour", list(VERSIONS))
def test_traditional_decision_matrix(make_fake, flavour):
    from conftest import HAS_TRADITIONAL

    fake = make_fake(flavour)
    openssl = q.detect_openssl(str(fake.path))
    d = decide_traditional(openssl)
    assert d.use is HAS_TRADITIONAL[flavour]
    probed = ["genrsa", "-help"] in fake.calls()
    assert probed is (flavour == "garbage")  # probe only when the version line is unreadable


def test_garbage_without_traditional_probe(make_fake):
    fake = make_fake("garbage", has_traditional=False)
    d = decide_traditional(q.detect_openssl(str(fake.path)))
    assert d.use is False
    assert "does not list" in d.reason


@pytest.mark.parametrize(("mode", "use"), [("always", True), ("never", False)])
def test_traditional_override(make_fake, mode, use):
    fake = make_fake("1.1.1" if use else "3.0")
    d = decide_traditional(q.detect_openssl(str(fake.path)), mode)
    assert d.use is use
    assert ["genrsa", "-help"] not in fake.calls()


def test_version_command_fails(make_fake):
    fake = make_fake("3.0", version_action="echo 'broken library' >&2; exit 1")
    with pytest.raises(q.OpenSSLError, match="broken library"):
        q.detect_openssl(str(fake.path))


def test_not_a_utf8_name_is_bad_input(tmp_path):
    fake = _exe(tmp_path / "openssl", "#!/bin/sh\nexit 0\n")
    name = os.fsdecode(b"key\xff.pem")
    with pytest.raises(q.BadInputError, match="not a UTF-8 name"):
        run_openssl(str(fake), ["rsa", "-in", name])


def test_silent_binary_is_not_openssl(tmp_path):
    fake = _exe(tmp_path / "openssl", "#!/bin/sh\nexit 0\n")
    with pytest.raises(q.OpenSSLError, match="printed no version"):
        q.detect_openssl(str(fake))


def _pidfds_here() -> bool:
    from qredo_openssl import _run as run_module

    fd = run_module._open_pidfd(os.getpid())
    if fd is None or fd < 0:
        return False
    os.close(fd)
    return True


@pytest.mark.skipif(not _pidfds_here(), reason="no pidfds here (Linux >= 5.3)")
def test_a_reaped_child_is_never_signalled_by_its_pid(tmp_path, monkeypatch):
    """Once a child is reaped its pid may be another process's: a late kill (a timeout
    firing, Ctrl-C in another thread) goes through the child's pidfd, never ``os.kill``."""
    from qredo_openssl import _run as run_module
    from qredo_openssl._shload import load_sh

    exe = _exe(tmp_path / "quick", "#!/bin/sh\nexit 0\n")
    argv = (str(exe),)
    proc = run_module._start(
        load_sh(), str(exe), [], argv, "quick", q.ToolError, b"", None, dict(os.environ), (0,)
    )
    try:
        proc.wait()  # exited and reaped: its pid is free for anyone
        sent: list[int] = []
        monkeypatch.setattr(os, "kill", lambda pid, sig: sent.append(pid))
        run_module._kill(proc)
        assert sent == []
    finally:
        with run_module._live_lock:
            fd = run_module._pidfds.pop(id(proc), None)
            run_module._live.pop(id(proc), None)
        if fd is not None and fd >= 0:
            os.close(fd)


def test_a_child_run_is_done_with_is_never_signalled(tmp_path, monkeypatch):
    """A kill that comes after run() returned (a Ctrl-C snapshot, a timer already firing)
    signals nothing at all: neither the pid (maybe another process's now) nor a pidfd (its
    number maybe another child's now)."""
    from qredo_openssl import _run as run_module

    started = []
    real_start = run_module._start
    def start(*a):
        started.append(real_start(*a))
        return started[-1]

    monkeypatch.setattr(run_module, "_start", start)
    exe = _exe(tmp_path / "quick", "#!/bin/sh\nexit 0\n")
    run_module.run(str(exe), [], tool="quick")
    sent: list[object] = []
    monkeypatch.setattr(os, "kill", lambda *a: sent.append(a))
    if hasattr(signal, "pidfd_send_signal"):
        monkeypatch.setattr(signal, "pidfd_send_signal", lambda *a: sent.append(a))
    run_module._kill(started[0])
    assert sent == []




def test_a_lazy_version_is_asked_once_even_when_it_fails(tmp_path):
    """Every later use sees the first failure again: a binary that hangs or says nothing is
    asked once, not once per DIR or per thread."""
    log = tmp_path / "calls.log"
    fake = _exe(tmp_path / "openssl", f"#!/bin/sh\necho \"$1\" >> {log}\nexit 0\n")
    openssl = q.detect_openssl(str(fake), lazy=True)
    assert not log.exists()  # nothing asked yet
    for _ in range(3):
        with pytest.raises(q.OpenSSLError, match="printed no version"):
            openssl.version  # noqa: B018
    assert log.read_text().split() == ["version"]


def test_a_lazy_version_killed_by_a_signal_is_asked_again(tmp_path):
    """A version run killed by a signal (our own Ctrl-C kills children) says nothing about
    the binary: the next use asks again. Each failure is a fresh exception."""
    log = tmp_path / "calls.log"
    fake = _exe(tmp_path / "openssl", f"#!/bin/sh\necho \"$1\" >> {log}\nkill -9 $$\n")
    openssl = q.detect_openssl(str(fake), lazy=True)
    errors = []
    for _ in range(2):
        with pytest.raises(q.OpenSSLError, match="killed by signal 9") as info:
            openssl.version  # noqa: B018
        errors.append(info.value)
    assert log.read_text().split() == ["version", "version"]
    assert errors[0] is not errors[1]
