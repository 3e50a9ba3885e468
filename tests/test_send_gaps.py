"""Gaps closed in ``send`` and in the CLI's structure.

- A body on a request that carries none (HEAD) is a usage error found before anything runs.
- A batch ``body_file`` that would block (a FIFO) is that line's error at once, for ``send
  --batch`` and ``sign --batch`` alike: no worker waits where one Ctrl-C cannot reach it.
- A command module of ``_cli`` imports no other command module (the CLI loads only the
  module of the command run).
"""

from __future__ import annotations

import ast
import base64
import json
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Keys, run_cli
from qredo_server import TLS, QredoServer, make_tls_material

import qredo_openssl as q
import qredo_openssl._cli as cli_package

CURL = shutil.which("curl")
APIKEY = base64.urlsafe_b64encode(b'{"key_id":"test-only","key":"x"}').rstrip(b"=").decode()
SHARED_CLI_MODULES = {"_base", "_render"}


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TLS:
    return make_tls_material(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def server(tls: TLS, keys: Keys) -> Iterator[QredoServer]:
    with QredoServer(tls, keys.public, APIKEY, timeout=5.0) as srv:
        yield srv


@pytest.fixture
def key_dir(tmp_path: Path, keys: Keys) -> Path:
    d = tmp_path / "keys"
    d.mkdir(mode=0o700)
    shutil.copy(keys.pkcs1, d / "private.pem")
    shutil.copy(keys.public, d / "public.pem")
    (d / "apikey").write_text(APIKEY + "\n")
    for name in ("private.pem", "apikey"):
        (d / name).chmod(0o600)
    return d


def logging_tool(tmp_path: Path, name: str) -> tuple[Path, Path]:
    """A stand-in for ``name`` that only notes that it ran (and fails)."""
    log = tmp_path / f"{name}.log"
    tool = tmp_path / f"fake-{name}" / name
    tool.parent.mkdir()
    tool.write_text(f'#!/bin/sh\necho "$@" >> "{log}"\nexit 1\n')
    tool.chmod(0o755)
    return tool, log


def one_line_error(r: subprocess.CompletedProcess[str]) -> str:
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.stderr
    return lines[0]


# --- a body on HEAD ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param([], id="send"),
        pytest.param(["--dry-run"], id="dry-run"),
        pytest.param(["--explain"], id="explain"),
    ],
)
@pytest.mark.parametrize("method", ["HEAD", "head"])
def test_head_with_a_body_is_a_usage_error_before_anything_runs(
    tmp_path: Path, key_dir: Path, method: str, extra: list[str]
) -> None:
    openssl, openssl_log = logging_tool(tmp_path, "openssl")
    curl, curl_log = logging_tool(tmp_path, "curl")
    (tmp_path / "body.json").write_text('{"a": 1}')
    args = ["send", "--openssl", str(openssl), "--curl", str(curl), "--method", method,
            "--body", str(tmp_path / "body.json"), "--url", "https://127.0.0.1/x", *extra,
            str(key_dir)]  # fmt: skip
    r = run_cli(*args)
    assert r.returncode == 2, r.stderr
    line = one_line_error(r)
    assert line.startswith("error: qredo-openssl send: "), line
    assert f"--method {method}" in line
    assert "no body" in line
    assert r.stdout == ""
    assert not openssl_log.exists(), "openssl ran"
    assert not curl_log.exists(), "curl ran"
    j = run_cli("--json", *args)
    assert j.returncode == 2
    assert json.loads(j.stdout)["error"]["code"] == 2


def test_head_without_a_body_is_still_sent_as_a_head(
    tmp_path: Path, key_dir: Path, server: QredoServer, tls: TLS
) -> None:
    if CURL is None:
        pytest.skip("curl is not installed")
    r = run_cli("send", "--cacert", str(tls.ca), "--method", "HEAD", "--url",
                server.base + "/company", "--json", str(key_dir),
                env={"NO_PROXY": "127.0.0.1", "QREDO_APIKEY": ""})  # fmt: skip
    # The test server answers HEAD with 501: enough to show it went out, and as a HEAD.
    assert r.returncode == 5, r.stderr
    doc = json.loads(r.stdout)
    assert doc["request"]["method"] == "HEAD"
    assert doc["status"] == 501


def test_the_library_refuses_head_with_a_body_for_a_dry_run_too(key_dir: Path) -> None:
    """``Sender.dry_run`` and ``Sender.send`` agree: a HEAD carries no body (UsageError)."""
    signer = q.Signer.from_paths(q.KeyPaths.in_dir(str(key_dir)), q.detect_openssl(lazy=True))
    sender = q.Sender(signer, q.detect_curl(), timeout=10)
    for call in (sender.dry_run, sender.send):
        with pytest.raises(q.UsageError, match="HEAD"):
            call("https://127.0.0.1/x", b"{}", method="HEAD")


def test_request_dir_with_head_and_a_body_is_a_usage_error(tmp_path: Path, key_dir: Path) -> None:
    openssl, openssl_log = logging_tool(tmp_path, "openssl")
    curl, curl_log = logging_tool(tmp_path, "curl")
    req = tmp_path / "req"
    req.mkdir()
    (req / "uri").write_text("HEAD https://127.0.0.1/x\n")
    (req / "body").write_text("{}")
    for extra in ([], ["--dry-run"]):
        r = run_cli("send", "--openssl", str(openssl), "--curl", str(curl),
                    "--request-dir", str(req), *extra, str(key_dir))  # fmt: skip
        assert r.returncode == 2, r.stderr
        line = one_line_error(r)
        assert line == "error: qredo-openssl send: a HEAD request carries no body", line
    assert not openssl_log.exists(), "openssl ran"
    assert not curl_log.exists(), "curl ran"


# --- a batch body_file that would block ---------------------------------------------------------


class FifoWatch:
    """Opens and closes the FIFO's writing end whenever a reader has it open, so a reader
    stuck on it gets EOF: the old behaviour (the line read as an empty body) then fails the
    test instead of hanging it. A refusing reader holds it open for microseconds only."""

    def __init__(self, fifo: Path) -> None:
        self.fifo = fifo
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self._done.wait(0.05):
            try:  # ENXIO until a reader has the FIFO open (or waits in open())
                fd = os.open(self.fifo, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:
                continue
            os.close(fd)

    def __enter__(self) -> FifoWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()


def write_batch(folder: Path, url: str) -> Path:
    (folder / "ok.json").write_text('{"a": 1}')
    os.mkfifo(folder / "fifo.json")
    lines = [
        {"url": url + "/one", "body_file": "ok.json", "method": "POST"},
        {"url": url + "/two", "body_file": "fifo.json", "method": "POST"},
        {"url": url + "/three"},
    ]
    batch = folder / "b.jsonl"
    batch.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return batch


@pytest.mark.parametrize("jobs", ["1", "3"])
def test_send_batch_fifo_body_file_fails_alone(
    tmp_path: Path, key_dir: Path, server: QredoServer, tls: TLS, jobs: str
) -> None:
    if CURL is None:
        pytest.skip("curl is not installed")
    batch = write_batch(tmp_path, server.base)
    n = len(server.requests)
    with FifoWatch(tmp_path / "fifo.json"):
        r = run_cli("send", "--cacert", str(tls.ca), "--batch", str(batch), "-j", jobs,
                    str(key_dir), env={"NO_PROXY": "127.0.0.1", "QREDO_APIKEY": ""})  # fmt: skip
    assert r.returncode == 1, r.stderr
    out = [json.loads(x) for x in r.stdout.splitlines()]
    assert [o["line"] for o in out] == [1, 2, 3]
    assert out[0]["status"] == 200
    assert out[2]["status"] == 200
    assert "error" in out[1], "line 2 was read from the FIFO: a worker waited on it"
    assert out[1]["error"]["code"] == 1
    assert "fifo.json is not a regular file" in out[1]["error"]["message"]
    assert r.stderr.count("error:") == 1
    assert "Traceback" not in r.stderr
    sent = sorted(q.target for q in server.requests[n:])  # -j 3: in any order
    assert sent == ["/api/v1/p/one", "/api/v1/p/three"]


def test_sign_batch_fifo_body_file_fails_alone(tmp_path: Path, key_dir: Path) -> None:
    batch = write_batch(tmp_path, "https://api.example/v1")
    with FifoWatch(tmp_path / "fifo.json"):
        r = run_cli("--json", "sign", "--batch", str(batch), "-j", "3", str(key_dir))
    assert r.returncode == 1, r.stderr
    doc = json.loads(r.stdout)
    assert doc["failed"] == 1
    assert [x["line"] for x in doc["results"]] == [1, 2, 3]
    assert "x-sign" in doc["results"][0]["headers"]
    assert "x-sign" in doc["results"][2]["headers"]
    assert "error" in doc["results"][1], "line 2 was read from the FIFO: a worker waited on it"
    error = doc["results"][1]["error"]
    assert error["code"] == 1
    assert "fifo.json is not a regular file" in error["message"]


def test_send_batch_head_line_with_a_body_is_that_lines_usage_error(
    tmp_path: Path, key_dir: Path, server: QredoServer, tls: TLS
) -> None:
    if CURL is None:
        pytest.skip("curl is not installed")
    lines = [{"url": "/a", "method": "HEAD", "body": "{}"}, {"url": "/b", "body": "{}"}]
    batch = tmp_path / "b.jsonl"
    batch.write_text("".join(json.dumps(x) + "\n" for x in lines))
    n = len(server.requests)
    env = {"NO_PROXY": "127.0.0.1", "QREDO_APIKEY": ""}
    r = run_cli("send", "--cacert", str(tls.ca), "--api-base", server.base, "--batch",
                str(batch), str(key_dir), env=env)  # fmt: skip
    assert r.returncode == 2, r.stderr
    out = [json.loads(x) for x in r.stdout.splitlines()]
    assert out[0]["error"] == {"code": 2, "message": "line 1: a HEAD request carries no body"}
    assert out[1]["status"] == 200
    assert [q.target for q in server.requests[n:]] == ["/api/v1/p/b"]


# --- structure -----------------------------------------------------------------------------------


def test_command_modules_import_no_other_command_module() -> None:
    """Only ``_base`` and ``_render`` are shared inside ``_cli``: no command imports another
    (at the top or inside a function), so loading one command loads no other."""
    folder = Path(cli_package.__file__).parent
    commands = sorted(p for p in folder.glob("*.py") if not p.name.startswith("_"))
    assert {p.stem for p in commands} >= {"checks", "keys", "requests", "rotate", "send"}
    found = {}
    for path in commands:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                names = [node.module] if node.module else [a.name for a in node.names]
                found[path.stem] = found.get(path.stem, set()) | set(names)
    bad = {name: sorted(mods - SHARED_CLI_MODULES) for name, mods in found.items()}
    assert {k: v for k, v in bad.items() if v} == {}
