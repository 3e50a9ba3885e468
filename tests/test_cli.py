"""The command line as users meet it: real subprocesses, exit codes, streams and colour."""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
import sys

import pytest
from conftest import run_cli

import qredo_openssl as q

COLOUR = re.compile(r"\x1b\[[0-9;]*3[0-9]m|\x1b\[[0-9;]*9[0-7]m|\x1b\[38;")
ANSI = re.compile(r"\x1b\[")


def test_version():
    r = run_cli("--version")
    assert r.returncode == 0
    assert r.stdout == f"qredo-openssl {q.__version__}\n"


@pytest.mark.parametrize(
    "argv", [["--help"], ["-h", "send"], ["-qh", "send"], ["-hq", "check"], ["--help", "sign"]]
)
def test_help_lists_every_command(argv):
    """Whatever follows it: only the invoked command's module is loaded, but not for the help."""
    r = run_cli(*argv)
    assert r.returncode == 0
    for cmd in ("keygen", "pubkey", "convert", "check", "doctor", "apikey", "sign", "verify",
                "send", "rotate"):  # fmt: skip
        assert cmd in r.stdout, cmd


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param([], id="no-command"),
        pytest.param(["frobnicate"], id="unknown-command"),
        pytest.param(["keygen", "--bits", "x"], id="bad-int"),
        pytest.param(["keygen", "--jobs", "0"], id="zero-jobs"),
        pytest.param(["keygen", "--timeout", "-1"], id="bad-timeout"),
        pytest.param(["keygen", "--timeout", "nan"], id="nan-timeout"),
        pytest.param(["keygen", "--timeout", "inf"], id="inf-timeout"),
        pytest.param(["--jso", "check"], id="abbreviated-json"),
        pytest.param(["check", "--qui"], id="abbreviated-quiet"),
        pytest.param(["keygen", "a", "b", "--private", "p.pem"], id="override-many"),
        pytest.param(["check", "--no-such-option"], id="unknown-option"),
    ],
)
def test_usage_errors_exit_2_with_one_line(argv, tmp_path):
    r = run_cli(*argv, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: ")
    assert r.stdout == ""
    assert os.listdir(tmp_path) == []


def test_an_option_value_that_names_a_command_is_still_a_value(make_fake, tmp_path):
    """Only the invoked command's parser is built; a value that names another command (the
    OpenSSL binary here is a file called ``check``) must not mislead that guess."""
    fake = make_fake("1.1.1")
    named = tmp_path / "bin" / "check"
    named.parent.mkdir()
    named.symlink_to(fake.path)
    path = os.pathsep.join([str(named.parent), os.environ.get("PATH", "")])
    r = run_cli("--openssl", "check", "--json", "keygen", "--dry-run", str(tmp_path / "k"),
                env={"PATH": path})  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["openssl"]["path"].endswith("check")


def test_a_misspelled_command_gets_the_nearest_name():
    r = run_cli("chek", ".")
    assert r.returncode == 2
    assert "did you mean check?" in r.stderr
    for name in ("keygen", "sign", "send", "rotate"):  # the choices name every command
        assert name in r.stderr


def test_usage_error_as_json(tmp_path):
    r = run_cli("--json", "keygen", "--bits", "7", cwd=tmp_path)
    assert r.returncode == 2
    doc = json.loads(r.stdout)
    assert doc["error"]["code"] == 2
    assert "--bits" in doc["error"]["message"]


def test_global_options_before_or_after_command(make_fake, tmp_path):
    fake = make_fake("1.1.1")
    a = run_cli("--json", "--openssl", str(fake.path), "keygen", "--dry-run", str(tmp_path))
    b = run_cli("keygen", "--dry-run", "--json", "--openssl", str(fake.path), str(tmp_path))
    assert a.returncode == b.returncode == 0
    assert json.loads(a.stdout) == json.loads(b.stdout)
    assert json.loads(a.stdout)["openssl"]["path"] == str(fake.path)


def test_quiet_keeps_data_only(make_fake, tmp_path):
    fake = make_fake("3.0")
    r = run_cli("-q", "keygen", "--openssl", str(fake.path), str(tmp_path / "k"))
    assert r.returncode == 0
    assert r.stdout.startswith("-----BEGIN PUBLIC KEY-----")
    assert r.stderr == ""


def test_json_is_one_document(make_fake, tmp_path):
    fake = make_fake("3.0")
    r = run_cli("--json", "keygen", "--openssl", str(fake.path), str(tmp_path / "k"))
    assert r.returncode == 0
    doc = json.loads(r.stdout)  # raises if there is anything but one document
    assert doc["keys"][0]["public_pem"] == (tmp_path / "k" / "public.pem").read_text()


@pytest.mark.parametrize(
    ("env", "colour"),
    [
        pytest.param({}, False, id="pipe"),
        pytest.param({"NO_COLOR": "1"}, False, id="pipe-no-color"),
        pytest.param({"FORCE_COLOR": "1"}, True, id="pipe-force-color"),
        pytest.param({"FORCE_COLOR": "1", "NO_COLOR": "1"}, False, id="force-and-no-color"),
    ],
)
def test_colour_on_a_pipe(tmp_path, env, colour):
    r = run_cli("keygen", "--openssl", str(tmp_path / "missing"), env=env)
    assert r.returncode == 3
    assert bool(COLOUR.search(r.stderr)) is colour
    assert not ANSI.search(r.stdout)
    if not env:
        assert not ANSI.search(r.stderr)


def _run_in_pty(argv: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Run with stdout and stderr on a real terminal; return exit code and what it showed."""
    pid, fd = pty.fork()
    if pid == 0:  # pragma: no cover - the child
        os.execve(sys.executable, [sys.executable, "-m", "qredo_openssl", *argv], env)
    chunks = []
    while True:
        try:
            data = os.read(fd, 4096)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    return os.waitstatus_to_exitcode(status), b"".join(chunks).decode("utf-8", "replace")


@pytest.mark.parametrize(
    ("extra", "colour"),
    [pytest.param({}, True, id="terminal"), pytest.param({"NO_COLOR": "1"}, False, id="no-color")],
)
def test_colour_on_a_terminal(tmp_path, extra, colour):
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "FORCE_COLOR")}
    env.update(extra, TERM="xterm-256color")
    code, shown = _run_in_pty(["keygen", "--openssl", str(tmp_path / "missing")], env)
    assert code == 3
    assert "OpenSSL not found" in shown
    assert bool(COLOUR.search(shown)) is colour


def test_python_m_and_console_script_agree(tmp_path):
    script = os.path.join(os.path.dirname(sys.executable), "qredo-openssl")
    if not os.path.exists(script):
        pytest.skip("console script not installed in this environment")
    r = subprocess.run([script, "--version"], capture_output=True, text=True, check=False)
    assert r.stdout == run_cli("--version").stdout


def test_broken_pipe_is_quiet(make_fake, tmp_path):
    fake = make_fake("3.0")
    r = subprocess.run(
        f"{sys.executable} -m qredo_openssl keygen --openssl {fake.path} {tmp_path}/k | head -c 1",
        shell=True, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert "Traceback" not in r.stderr


def test_control_characters_in_messages_are_escaped(tmp_path):
    r = run_cli("keygen", "--openssl", str(tmp_path / "evil\x1b[2Jname"))
    assert r.returncode == 3
    assert "\x1b" not in r.stderr
    assert "evil\\x1b[2Jname" in r.stderr


def test_progress_on_a_terminal(make_fake, tmp_path):
    """Several DIRs on a terminal draw a rich progress bar; the keys land all the same."""
    fake = make_fake("3.0")
    dirs = [str(tmp_path / f"k{i}") for i in range(3)]
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "FORCE_COLOR")}
    env["TERM"] = "xterm-256color"
    code, shown = _run_in_pty(["keygen", "--openssl", str(fake.path), *dirs], env)
    assert code == 0, shown
    assert "Traceback" not in shown
    assert "keygen" in shown  # the progress bar's label
    assert shown.count("-----BEGIN PUBLIC KEY-----") == 3
    for d in dirs:
        assert (tmp_path / d / "private.pem").exists()


@pytest.mark.real_openssl
@pytest.mark.parametrize("redirect", [">/dev/full", ">&-"], ids=["disk-full", "closed"])
@pytest.mark.parametrize("json_flag", ["", "--json"], ids=["text", "json"])
def test_unwritable_stdout_is_one_line(tmp_path, redirect, json_flag):
    r = subprocess.run(
        f"{sys.executable} -m qredo_openssl {json_flag} check {tmp_path} {redirect}",
        shell=True, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("error: ")


def test_quiet_silences_warnings(make_fake, tmp_path):
    fake = make_fake("3.0")
    loud = run_cli(
        "keygen", "--dry-run", "--bits", "4096", "--openssl", str(fake.path), str(tmp_path)
    )
    quiet = run_cli(
        "-q", "keygen", "--dry-run", "--bits", "4096", "--openssl", str(fake.path), str(tmp_path)
    )
    assert "warning: Qredo documents 2048-bit keys" in loud.stderr
    assert quiet.stderr == ""
    assert quiet.stdout == loud.stdout
