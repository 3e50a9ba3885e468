"""Keys that never leave a PKCS#11 token: SoftHSM2, OpenSC's pkcs11-tool, OpenSSL's engine.

One token and one key per module (made by ``keygen --pkcs11``, which is itself under test);
tests that change a directory work on a copy. Fakes only where the real thing cannot be had
here: LibreSSL, and the pkcs11 provider (not installable from Debian 12's sources).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shlex
import shutil
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import REAL_OPENSSL, run_cli
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from hypothesis import given
from hypothesis import strategies as st
from softhsm import PIN, PKCS11_TOOL, Hsm, logging_wrapper, make_hsm

from qredo_openssl._errors import BadInputError
from qredo_openssl._pkcs11_errors import explain
from qredo_openssl._pkcs11_uri import Pkcs11Uri, parse_key_uri, parse_uri

URL = "https://api.qredo.network/api/v1/p/company"
STAMP = "1700000000"
LABEL = "qredo-key"
P11KIT = Path("/usr/lib/x86_64-linux-gnu/p11-kit-proxy.so")


@pytest.fixture(scope="module")
def hsm(tmp_path_factory: pytest.TempPathFactory) -> Hsm:
    return make_hsm(tmp_path_factory.mktemp("hsm"))


@pytest.fixture(scope="module")
def tokendir(hsm: Hsm, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A key directory made by ``keygen --pkcs11``: private.uri and public.pem."""
    d = tmp_path_factory.mktemp("tokenkey") / "keys"
    r = run_cli("keygen", "--pkcs11", f"pkcs11:token={hsm.token};object={LABEL}", str(d),
                env=hsm.env)  # fmt: skip
    assert r.returncode == 0, r.stderr
    return d


def copy_dir(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def x_sign(stdout: str) -> bytes:
    value = next(line for line in stdout.splitlines() if line.startswith("x-sign: "))[8:]
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))


def verify(public: Path, signature: bytes, data: bytes) -> None:
    key = serialization.load_pem_public_key(public.read_bytes())
    key.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())  # type: ignore[union-attr]


def uri_of(d: Path) -> str:
    return (d / "private.uri").read_text().strip()


# --- keygen, sign, check, doctor on the real token ----------------------------------------------


def test_keygen_makes_a_never_extractable_key_in_the_token(hsm, tokendir):
    uri = uri_of(tokendir)
    assert uri.startswith(f"pkcs11:token={hsm.token};object={LABEL};id=%")
    assert not (tokendir / "private.pem").exists()
    assert stat.S_IMODE((tokendir / "public.pem").stat().st_mode) == 0o644
    blocks = hsm.objects().split("Object;")
    private = [b for b in blocks if f"label:      {LABEL}" in b and "sign" in b and "decrypt" in b]
    assert len(private) == 1
    assert "never extractable" in private[0]
    assert "sensitive" in private[0]
    pub = serialization.load_pem_public_key((tokendir / "public.pem").read_bytes())
    assert pub.key_size == 2048  # type: ignore[union-attr]


def test_sign_verifies_with_public_pem_and_equals_the_engine(hsm, tokendir):
    r = run_cli("sign", str(tokendir), "--url", URL, "--timestamp", STAMP, env=hsm.env)
    assert r.returncode == 0, r.stderr
    sig = x_sign(r.stdout)
    verify(tokendir / "public.pem", sig, (STAMP + URL).encode())
    direct = hsm.engine_sign(uri_of(tokendir) + ";type=private", (STAMP + URL).encode())
    assert sig == direct  # PKCS#1 v1.5 is deterministic


def test_sign_batch_j4_with_the_token_key_all_valid(hsm, tokendir, tmp_path):
    lines = [{"url": f"{URL}/{i}", "timestamp": STAMP, "body": f'{{"n":{i}}}'} for i in range(24)]
    (tmp_path / "batch.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    r = run_cli("sign", str(tokendir), "--batch", str(tmp_path / "batch.jsonl"), "-j", "4",
                env=hsm.env)  # fmt: skip
    assert r.returncode == 0, r.stderr
    results = [json.loads(line) for line in r.stdout.splitlines()]
    assert [x["line"] for x in results] == list(range(1, 25))
    for x, req in zip(results, lines):
        value = x["headers"]["x-sign"]
        sig = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
        verify(tokendir / "public.pem", sig, (STAMP + req["url"] + req["body"]).encode())


def test_check_ok(hsm, tokendir):
    r = run_cli("--json", "check", str(tokendir), env=hsm.env)
    assert r.returncode == 0, r.stdout
    status = {f["name"]: f["status"] for f in json.loads(r.stdout)}
    for name in ("private.source", "private.exists", "private.extractable", "private.bits",
                 "private.exponent", "public.format", "public.matches"):  # fmt: skip
        assert status[name] == "ok", (name, r.stdout)
    for name in ("private.format", "private.encrypted", "private.valid", "private.mode"):
        assert status[name] == "skip"


def test_check_without_pin_skips_with_a_hint(hsm, tokendir):
    env = dict(hsm.env, QREDO_PKCS11_PIN="")
    r = run_cli("--json", "check", str(tokendir), env=env)
    assert r.returncode == 0, r.stdout
    found = {f["name"]: f for f in json.loads(r.stdout)}
    assert found["public.matches"]["status"] == "skip"
    assert "QREDO_PKCS11_PIN" in found["public.matches"]["message"]
    assert found["private.bits"]["status"] == "ok"


def test_tampered_public_pem_fails_public_matches(hsm, tokendir, keys, tmp_path):
    d = copy_dir(tokendir, tmp_path / "k")
    os.chmod(d / "public.pem", 0o644)
    shutil.copy(keys.public, d / "public.pem")
    r = run_cli("--json", "check", str(d), env=hsm.env)
    assert r.returncode == 1
    found = {f["name"]: f for f in json.loads(r.stdout)}
    assert found["public.matches"]["status"] == "fail"
    assert "pubkey --force" in found["public.matches"]["message"]
    # pubkey --force puts the token's public key back
    r = run_cli("pubkey", "--force", str(d), env=hsm.env)
    assert r.returncode == 0, r.stderr
    assert (d / "public.pem").read_bytes() == (tokendir / "public.pem").read_bytes()
    assert run_cli("check", str(d), env=hsm.env).returncode == 0
    r = run_cli("pubkey", str(d), env=hsm.env)  # already the token key's: nothing to do
    assert r.returncode == 0, r.stderr
    assert "nothing to do" in r.stderr


def test_both_key_sources_fail_check_and_sign_refuses(hsm, tokendir, keys, tmp_path):
    d = copy_dir(tokendir, tmp_path / "k")
    shutil.copy(keys.pkcs1, d / "private.pem")
    r = run_cli("--json", "check", str(d), env=hsm.env)
    assert r.returncode == 1
    found = {f["name"]: f for f in json.loads(r.stdout)}
    assert found["private.source"]["status"] == "fail"
    r = run_cli("sign", str(d), "--url", URL, env=hsm.env)
    assert r.returncode == 1
    assert r.stderr.startswith("error: both ")
    assert "private.uri" in r.stderr


def test_pin_is_in_no_child_argv(hsm, tmp_path):
    assert REAL_OPENSSL
    assert PKCS11_TOOL
    openssl, openssl_log = logging_wrapper(tmp_path / "bin", REAL_OPENSSL, "openssl")
    tool, tool_log = logging_wrapper(tmp_path / "bin", PKCS11_TOOL, "pkcs11-tool")
    d = tmp_path / "k"
    opts = ("--openssl", str(openssl), "--pkcs11-tool", str(tool))
    uri = f"pkcs11:token={hsm.token};object=argv-key"
    assert run_cli("keygen", "--pkcs11", uri, *opts, str(d), env=hsm.env).returncode == 0
    assert run_cli("sign", str(d), "--url", URL, *opts, env=hsm.env).returncode == 0
    assert run_cli("check", str(d), *opts, env=hsm.env).returncode == 0
    logged = openssl_log.read_text() + tool_log.read_text()
    assert PIN not in logged
    assert "-passin\tenv:QREDO_PKCS11_PIN" in openssl_log.read_text()
    assert "--pin\tenv:QREDO_PKCS11_PIN" in tool_log.read_text()


def test_pin_file(hsm, tokendir, tmp_path):
    pin = tmp_path / "pin"
    pin.write_text(PIN + "\n")
    env = dict(hsm.env, QREDO_PKCS11_PIN="")
    r = run_cli("sign", str(tokendir), "--url", URL, "--pin-file", str(pin), env=env)
    assert r.returncode == 0, r.stderr
    r = run_cli("sign", str(tokendir), "--url", URL, env=env)
    assert r.returncode == 1
    assert "no PIN" in r.stderr


def test_wrong_pin_is_one_clean_line(hsm, tokendir):
    env = dict(hsm.env, QREDO_PKCS11_PIN="wrong-pin")
    r = run_cli("sign", str(tokendir), "--url", URL, env=env)
    assert r.returncode == 3
    assert r.stderr.strip().splitlines() == [
        f"error: signing with {uri_of(tokendir)} failed: wrong PIN for token '{hsm.token}'"
    ]
    assert "signal" not in r.stderr


def test_wrong_pin_is_tried_once_per_command(hsm, tokendir, tmp_path):
    """A real token locks after a few wrong PINs: a batch must not try it for every line."""
    assert REAL_OPENSSL
    openssl, log = logging_wrapper(tmp_path / "bin", REAL_OPENSSL, "openssl")
    lines = "".join(json.dumps({"url": f"{URL}/{i}"}) + "\n" for i in range(6))
    (tmp_path / "batch.jsonl").write_text(lines)
    env = dict(hsm.env, QREDO_PKCS11_PIN="wrong-pin")
    r = run_cli("sign", str(tokendir), "--batch", str(tmp_path / "batch.jsonl"), "-j", "3",
                "--openssl", str(openssl), env=env)  # fmt: skip
    assert r.returncode == 1
    assert r.stderr.count("wrong PIN") == 6
    assert [c for c in log.read_text().splitlines() if c.startswith("dgst")] != []
    assert len([c for c in log.read_text().splitlines() if c.startswith("dgst")]) == 1


@pytest.mark.parametrize(
    ("uri", "says"),
    [
        pytest.param("pkcs11:token={token};object=nope", "no key 'nope'", id="object"),
        pytest.param("pkcs11:token=no-such-token;object=x", "no token matches", id="token"),
    ],
)
def test_missing_object_or_token(hsm, tmp_path, uri, says):
    d = tmp_path / "k"
    d.mkdir()
    (d / "private.uri").write_text(uri.format(token=hsm.token) + "\n")
    r = run_cli("sign", str(d), "--url", URL, env=hsm.env)
    assert r.returncode == 3
    assert says in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = run_cli("--json", "check", str(d), env=hsm.env)
    assert r.returncode == 1
    found = {f["name"]: f for f in json.loads(r.stdout)}
    assert found["private.exists"]["status"] == "fail"


def test_module_that_cannot_be_loaded(hsm, tokendir, tmp_path):
    bogus = tmp_path / "bogus.so"
    bogus.write_bytes(b"not an ELF file")
    for command in (["sign", "--url", URL], ["pubkey", "--force"]):
        r = run_cli(*command, str(tokendir), "--pkcs11-module", str(bogus), env=hsm.env)
        assert r.returncode == 3
        assert f"the PKCS#11 module {bogus} cannot be loaded" in r.stderr
    r = run_cli("--json", "check", str(tokendir), "--pkcs11-module", str(bogus), env=hsm.env)
    found = {f["name"]: f for f in json.loads(r.stdout)}
    assert "cannot be loaded" in found["private.exists"]["message"]
    r = run_cli("sign", str(tokendir), "--url", URL, "--pkcs11-module", str(tmp_path / "none"))
    assert r.returncode == 3
    assert "is not a file" in r.stderr


@pytest.mark.skipif(not P11KIT.exists(), reason="no p11-kit proxy module here")
def test_default_module_is_the_p11_kit_proxy(hsm, tokendir):
    env = {k: v for k, v in hsm.env.items() if k != "QREDO_PKCS11_MODULE"}
    r = run_cli("--json", "doctor", str(tokendir), env=env)
    assert json.loads(r.stdout)["pkcs11"]["module_source"] == "p11-kit proxy"
    r = run_cli("sign", str(tokendir), "--url", URL, "--timestamp", STAMP, env=env)
    assert r.returncode == 0, r.stderr
    verify(tokendir / "public.pem", x_sign(r.stdout), (STAMP + URL).encode())


def test_existing_object_is_never_replaced(hsm, tokendir, tmp_path):
    before = hsm.objects()
    r = run_cli("keygen", "--pkcs11", f"pkcs11:token={hsm.token};object={LABEL}",
                str(tmp_path / "k"), env=hsm.env)  # fmt: skip
    assert r.returncode == 4
    assert "refusing" in r.stderr
    assert hsm.objects() == before
    assert not (tmp_path / "k" / "private.uri").exists()


def test_keygen_json_with_an_id_then_existing_files_refused(hsm, tmp_path):
    d = tmp_path / "k"
    uri = f"pkcs11:token={hsm.token};object=json-key;id=%42"
    r = run_cli("--json", "keygen", "--pkcs11", uri, "--bits", "3072", str(d), env=hsm.env)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["uri"] == uri
    assert doc["bits"] == 3072
    assert uri_of(d) == uri
    assert {c["name"]: c["status"] for c in doc["checks"]}["private.bits"] == "warn"
    other = f"pkcs11:token={hsm.token};object=other-key"
    r = run_cli("keygen", "--pkcs11", other, str(d), env=hsm.env)
    assert r.returncode == 4
    assert "other-key" not in hsm.objects()  # refused before anything was made


def test_doctor_names_route_module_and_token(hsm, tokendir):
    r = run_cli("--json", "doctor", str(tokendir), env=hsm.env)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)["pkcs11"]
    assert doc["route"] == "engine"
    assert doc["module"] == hsm.module
    assert doc["token"] == hsm.token


def test_keygen_refuses_a_pin_in_the_uri(tmp_path):
    r = run_cli("keygen", "--pkcs11", "pkcs11:token=T;object=O?pin-value=1234", str(tmp_path))
    assert r.returncode == 1
    assert "holds a PIN (pin-value)" in r.stderr
    assert "1234" not in r.stderr


# --- fakes: LibreSSL, the provider route --------------------------------------------------------


def token_dir(tmp_path: Path) -> Path:
    d = tmp_path / "k"
    d.mkdir()
    (d / "private.uri").write_text("pkcs11:token=T;object=O\n")
    return d


def test_libressl_is_refused(make_fake, tmp_path):
    fake = make_fake("libressl")
    r = run_cli("sign", str(token_dir(tmp_path)), "--url", URL, "--openssl", str(fake.path),
                env={"QREDO_PKCS11_PIN": "1234"})  # fmt: skip
    assert r.returncode == 3
    assert "LibreSSL 3.3.6 cannot use PKCS#11 tokens" in r.stderr


PROVIDER_FAKE = """#!/bin/sh
{{ sep=; for a in "$@"; do printf '%s%s' "$sep" "$a"; sep='\t'; done; printf '\\n'; }} >> {log}
echo "PKCS11_PROVIDER_MODULE=$PKCS11_PROVIDER_MODULE" >> {log}
case "$1" in
  version) echo "OpenSSL 3.5.0 8 Apr 2025"; exit 0 ;;
  engine) echo "no such engine" >&2; exit 1 ;;
  dgst) cat >/dev/null; printf 'fake-signature'; exit 0 ;;
esac
exit 1
"""


@pytest.mark.parametrize("chosen", [True, False], ids=["flag", "no-engine"])
def test_provider_route_argv(tmp_path, chosen):
    log = tmp_path / "openssl.log"
    fake = tmp_path / "openssl"
    fake.write_text(PROVIDER_FAKE.format(log=log))
    fake.chmod(0o755)
    module = tmp_path / "module.so"
    module.write_bytes(b"")
    route = ["--pkcs11-route", "provider"] if chosen else []
    opts = ["--openssl", str(fake), "--pkcs11-module", str(module), *route]
    r = run_cli("sign", str(token_dir(tmp_path)), "--url", URL, *opts,
                env={"QREDO_PKCS11_PIN": "1234"})  # fmt: skip
    assert r.returncode == 0, r.stderr
    lines = log.read_text().splitlines()
    dgst = next(line.split("\t") for line in lines if line.startswith("dgst"))
    assert dgst == [
        "dgst", "-sha256", "-provider", "pkcs11", "-provider", "default",
        "-passin", "env:QREDO_PKCS11_PIN", "-sign", "pkcs11:token=T;object=O;type=private",
    ]  # fmt: skip
    assert f"PKCS11_PROVIDER_MODULE={module}" in lines
    assert ("engine\tpkcs11\t-t" in lines) is not chosen
    assert "1234" not in log.read_text()


# --- the URI parser and the failure words --------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "says"),
    [
        pytest.param("pkcs11:token=T;object=O?pin-value=1", "holds a PIN", id="pin-value"),
        pytest.param("pkcs11:token=T;object=O?pin-source=file:/p", "holds a PIN", id="pin-src"),
        pytest.param("pkcs11:token=T;token=U;object=O", "appears twice", id="twice"),
        pytest.param("pkcs11:token=T;object=O%2", "two hex digits", id="escape"),
        pytest.param("pkcs11:token=T;object=a b", "not allowed", id="space"),
        pytest.param("pkcs11:object=O", "names no token", id="no-token"),
        pytest.param("pkcs11:token=T", "names no key", id="no-key"),
        pytest.param("pkcs11:token=T;object=O;type=public", "public object", id="public"),
        pytest.param("pkcs11:token=T;objekt=O", "unknown attribute", id="unknown"),
        pytest.param("file:///x", "does not start with", id="scheme"),
        pytest.param("pkcs11:token=T;object=O?module-path=/x.so", "not used", id="module"),
    ],
)
def test_bad_uris_are_refused(text, says):
    with pytest.raises(BadInputError, match=says):
        parse_key_uri(text)


def test_uri_canonical_form():
    uri = parse_key_uri("PKCS11:token=My%20Token;object=k%3B1;id=%01%ab;type=private")
    assert (uri.token, uri.object, uri.id) == ("My Token", "k;1", b"\x01\xab")
    assert str(uri) == "pkcs11:token=My%20Token;object=k%3B1;id=%01%ab"
    assert str(uri.with_type("public")).endswith(";type=public")


_text = st.text(st.characters(min_codepoint=1, max_codepoint=0x2FFF, exclude_categories=("Cs",)))


@given(token=_text, label=_text, key_id=st.binary(max_size=16))
def test_uri_round_trips(token, label, key_id):
    uri = Pkcs11Uri((("token", token.encode()), ("object", label.encode()), ("id", key_id)))
    again = parse_uri(str(uri))
    assert again == uri


@given(st.text(max_size=80))
def test_uri_parser_only_ever_says_bad_input(text):
    with contextlib.suppress(BadInputError):
        parse_uri("pkcs11:" + text)


# stderr lines as the tools print them (docs: /work/notes/pkcs11.md section 7, verified)
@pytest.mark.parametrize(
    ("stderr", "says"),
    [
        ("40679551BD7F0000:error:418000A0:PKCS#11 module:ERR_CKR_error:PIN incorrect:p11_slot.c",
         "wrong PIN for token 'T'"),
        ("error: PKCS11 function C_Login failed: rv = CKR_PIN_INCORRECT (0xa0)", "wrong PIN"),
        ("No matching initialized token was found for private key", "no token matches"),
        ('No slot with token named "T" found', "no token matches"),
        ("Multiple matching slots (2); will not try to login", "more than one token"),
        ("The private key was not found at: pkcs11:token=T;object=O", "no key 'O' in token"),
        ('Invalid engine "pkcs11"', "no pkcs11 engine"),
        ("Unable to load module /x.so", "module /m.so cannot be loaded"),
        ("error: Failed to load pkcs11 module", "cannot be loaded"),
    ],
)  # fmt: skip
def test_failures_are_said_in_words(stderr, says):
    assert says in (explain(stderr, parse_key_uri("pkcs11:token=T;object=O"), "/m.so") or "")


def test_unknown_failure_shows_the_tools_words_not_the_signal():
    from qredo_openssl._errors import ToolError
    from qredo_openssl._pkcs11_errors import token_error

    exc = ToolError("openssl dgst was killed by signal 11: Engine", returncode=-11,
                    stderr='Engine "pkcs11" set.\nSomething odd happened\n')  # fmt: skip
    error = token_error(exc, "signing with pkcs11:token=T;object=O", None, "/m.so")
    said = "signing with pkcs11:token=T;object=O failed: it crashed: Something odd happened"
    assert str(error) == said
    assert error.exit_code == 3


# --- send with the token key, against the loopback Qredo server ----------------------------------


def test_send_with_the_token_key_is_accepted_by_the_server(hsm, tokendir, tmp_path, keys):
    """The whole flow with a key that never leaves the token: the server verifies x-sign
    against the uploaded public.pem; before the upload (another key) it answers 401."""
    from qredo_server import QredoServer, make_tls_material

    apikey = base64.b64encode(b'{"key_id":"kid-token","key":"k"}').decode()
    d = copy_dir(tokendir, tmp_path / "keys")
    (d / "apikey").write_text(apikey + "\n")
    tls = make_tls_material(tmp_path / "tls")
    env = {**hsm.env, "TMPDIR": str(tmp_path)}
    with QredoServer(tls, keys.public, apikey, timeout=5.0) as srv:  # another key uploaded
        before = run_cli("send", "--cacert", str(tls.ca), "--url", f"{srv.base}/company",
                         str(d), env=env)  # fmt: skip
        assert before.returncode == 5, before.stderr
        srv.upload((d / "public.pem").read_bytes())
        r = run_cli("send", "--cacert", str(tls.ca), "--url", f"{srv.base}/company", str(d),
                    env=env)  # fmt: skip
        assert r.returncode == 0, r.stderr
        assert [x.verdict for x in srv.requests] == ["signature", "ok"]
        assert json.loads(r.stdout)["target"] == "/api/v1/p/company"


# --- the token's public key is exported once per command -------------------------------------


@pytest.mark.parametrize("public", ["tampered", "same"])
def test_pubkey_exports_the_token_public_key_once(hsm, tokendir, keys, tmp_path, public):
    """``pubkey`` compares the token's public key with public.pem and writes that same export:
    one ``openssl pkey`` call, not one for the comparison and another for the file."""
    assert REAL_OPENSSL
    openssl, log = logging_wrapper(tmp_path / "bin", REAL_OPENSSL, "openssl")
    d = copy_dir(tokendir, tmp_path / "k")
    if public == "tampered":
        os.chmod(d / "public.pem", 0o644)
        shutil.copy(keys.public, d / "public.pem")
    r = run_cli("pubkey", "--force", "--openssl", str(openssl), str(d), env=hsm.env)
    assert r.returncode == 0, r.stderr
    assert (d / "public.pem").read_bytes() == (tokendir / "public.pem").read_bytes()
    exports = [c for c in log.read_text().splitlines() if c.startswith("pkey\t")]
    assert len(exports) == 1, exports


# --- keygen --pkcs11: a later step fails after the key was made in the token ------------------


def labels_and_ids(hsm: Hsm) -> set[tuple[str, str, str]]:
    """(kind, label, id) of every object in the token, as pkcs11-tool lists them."""
    found, kind, label = set(), "", ""
    for line in hsm.objects().splitlines():
        if " Object;" in line:
            kind = line.split(" Object;")[0]
        elif line.strip().startswith("label:"):
            label = line.split(":", 1)[1].strip()
        elif line.strip().startswith("ID:"):
            found.add((kind, label, line.split(":", 1)[1].strip()))
    return found


def _fail_export(m: pytest.MonkeyPatch) -> None:
    from qredo_openssl._pkcs11 import Token
    from qredo_openssl._pkcs11_errors import TokenError

    def export(self, uri):
        raise TokenError(f"exporting the public key of {uri} failed: fake")

    m.setattr(Token, "public_pem", export)


def _fail_publish(m: pytest.MonkeyPatch) -> None:
    from qredo_openssl._errors import WriteError
    from qredo_openssl._files import Publisher

    real = Publisher.publish

    def publish(self, tmp, final, *, secret=False):
        if final.endswith("private.uri"):  # public.pem is placed already: taken back
            raise WriteError(f"cannot write {final}: disk full")
        return real(self, tmp, final, secret=secret)

    m.setattr(Publisher, "publish", publish)


def _checks_fail(m: pytest.MonkeyPatch) -> None:
    from qredo_openssl import _pkcs11_keygen
    from qredo_openssl._checks import Finding

    real = _pkcs11_keygen.check_token_key

    def check(paths, openssl, options=None):
        return [
            Finding(f.name, "fail", "fake: the key can leave the token")
            if f.name == "private.extractable" else f
            for f in real(paths, openssl, options)
        ]  # fmt: skip

    m.setattr(_pkcs11_keygen, "check_token_key", check)


def _checks_raise(m: pytest.MonkeyPatch) -> None:
    from qredo_openssl import _pkcs11_keygen
    from qredo_openssl._pkcs11_errors import TokenError

    def check(paths, openssl, options=None):
        raise TokenError("listing the objects of token failed: fake")

    m.setattr(_pkcs11_keygen, "check_token_key", check)


FAULTS = {
    "export": (_fail_export, "exporting the public key", 3),
    "publish": (_fail_publish, "disk full", 1),
    "check-fails": (_checks_fail, "failed its check private.extractable", 3),
    "check-raises": (_checks_raise, "listing the objects", 3),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_keygen_removes_its_new_key_when_a_later_step_fails(hsm, tokendir, tmp_path, fault):
    inject, says, code = FAULTS[fault]
    before = labels_and_ids(hsm)
    assert any(label == LABEL for _, label, _ in before)  # another key is there, and stays
    d = tmp_path / "k"
    label = f"failed-{fault}"
    with pytest.MonkeyPatch.context() as m:
        inject(m)
        r = run_cli("keygen", "--pkcs11", f"pkcs11:token={hsm.token};object={label}", str(d),
                    env=hsm.env)  # fmt: skip
    assert r.returncode == code, r.stderr
    [line] = r.stderr.strip().splitlines()[-1:]
    assert says in line
    assert line.endswith(f"nothing was kept: the new key was removed from token '{hsm.token}'")
    assert labels_and_ids(hsm) == before  # no stray key, and nothing else removed
    assert not d.exists() or sorted(p.name for p in d.iterdir()) == []


def run_removal_fix(hsm, fix: list[str]) -> None:
    """Run a printed ``pkcs11-tool --delete-object --type privkey`` fix, then the same for the
    public key object, as its message says; each must succeed."""
    for kind in ("privkey", "pubkey"):
        argv = list(fix)
        argv[argv.index("privkey")] = kind
        done = subprocess.run(argv, env=hsm.child_env(), capture_output=True, text=True,
                              check=False, stdin=subprocess.DEVNULL, timeout=60)  # fmt: skip
        assert done.returncode == 0, done.stderr


def test_keygen_says_what_is_left_when_the_removal_fails(hsm, tokendir, tmp_path):
    """The token refuses the removal: the error names the objects left and carries the
    command that removes them, which runs as printed."""
    assert PKCS11_TOOL
    tool = tmp_path / "bin" / "pkcs11-tool"
    tool.parent.mkdir()
    tool.write_text(
        "#!/bin/sh\n"
        'for a in "$@"; do [ "$a" = --delete-object ] && { echo "error: refused" >&2; exit 1; }; '
        "done\n"
        f'exec {PKCS11_TOOL} "$@"\n'
    )
    tool.chmod(0o755)
    before = labels_and_ids(hsm)
    d = tmp_path / "k"
    uri = f"pkcs11:token={hsm.token};object=left-key;id=%5e%17"
    with pytest.MonkeyPatch.context() as m:
        _fail_export(m)
        r = run_cli("keygen", "--pkcs11", uri, "--pkcs11-tool", str(tool), str(d), env=hsm.env)
    assert r.returncode == 3
    line = r.stderr.strip().splitlines()[-1]
    assert f"the new key stays in token '{hsm.token}' as {uri}" in line
    assert "label 'left-key', id 5e17" in line
    left = labels_and_ids(hsm) - before
    assert left == {("Private Key", "left-key", "5e17"), ("Public Key", "left-key", "5e17")}
    assert not d.exists()
    fix = shlex.split(line.rsplit("; run: ", 1)[1])
    assert fix == [
        str(tool), "--module", hsm.module, "--token-label", hsm.token, "--login",
        "--pin", "env:QREDO_PKCS11_PIN",
        "--delete-object", "--type", "privkey", "--id", "5e17", "--label", "left-key",
    ]  # fmt: skip
    assert PIN not in line
    run_removal_fix(hsm, [PKCS11_TOOL, *fix[1:]])
    assert labels_and_ids(hsm) == before


@pytest.mark.parametrize("where", ["keypairgen", "publish"])
def test_keygen_interrupted_says_what_the_token_holds(hsm, tokendir, tmp_path, where):
    """Ctrl-C once the key is (or may be) in the token: exit 130, no file written, and the
    message names the key and carries the command that removes it, which runs as printed."""
    from qredo_openssl._pkcs11 import Token

    before = labels_and_ids(hsm)
    d = tmp_path / "k"
    uri = f"pkcs11:token={hsm.token};object=cut-key;id=%7a%01"
    with pytest.MonkeyPatch.context() as m:
        if where == "publish":
            def export(self, uri):
                raise KeyboardInterrupt
            m.setattr(Token, "public_pem", export)
        else:  # the key is made, then Ctrl-C lands before pkcs11-tool's end is seen
            real = Token.tool_run

            def tool_run(self, what, uri, args, **kw):
                out = real(self, what, uri, args, **kw)
                if "--keypairgen" in args:
                    raise KeyboardInterrupt
                return out
            m.setattr(Token, "tool_run", tool_run)
        r = run_cli("--json", "keygen", "--pkcs11", uri, str(d), env=hsm.env)
    assert r.returncode == 130, r.stderr
    holds = "may hold" if where == "keypairgen" else "holds"
    error = json.loads(r.stdout)["error"]
    assert error["message"].startswith(
        f"interrupted; no file is left; token '{hsm.token}' {holds} the new key {uri} "
    )
    assert "label 'cut-key', id 7a01" in error["message"]
    assert PIN not in r.stdout + r.stderr
    assert not d.exists() or list(d.iterdir()) == []
    assert labels_and_ids(hsm) - before == {
        ("Private Key", "cut-key", "7a01"), ("Public Key", "cut-key", "7a01")
    }
    run_removal_fix(hsm, error["fix"])
    assert labels_and_ids(hsm) == before


def test_keygen_interrupted_after_its_files_landed_says_they_name_the_key(hsm, tokendir, tmp_path):
    """Ctrl-C in the last cleanup, the files already in place: the key is kept and named by
    them, and the message says so (no removal command, which would break the DIR)."""
    from qredo_openssl import _files

    d = tmp_path / "k"
    uri = f"pkcs11:token={hsm.token};object=late-key;id=%7a%02"
    real = _files.shutil.rmtree

    def rmtree(path, *a, **kw):  # the staging directory in DIR, once the files are out
        real(path, *a, **kw)
        if os.path.dirname(path) == str(d) and (d / "private.uri").exists():
            raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as m:
        m.setattr(_files.shutil, "rmtree", rmtree)
        r = run_cli("--json", "keygen", "--pkcs11", uri, str(d), env=hsm.env)
    assert r.returncode == 130, r.stderr
    error = json.loads(r.stdout)["error"]
    assert error["message"].startswith(f"interrupted; the new key {uri} was made and ")
    assert error["fix"] == ["qredo-openssl", "check", str(d)]
    assert (d / "private.uri").read_text().strip() == uri
    assert run_cli("check", str(d), env=hsm.env).returncode == 0


def test_keygen_interrupted_while_undoing_a_failure_says_both(hsm, tokendir, tmp_path):
    """A check fails, and Ctrl-C lands while the new key is being removed: the message keeps
    the failure, says the token may still hold the key, and its fix removes it."""
    from qredo_openssl._pkcs11 import Token

    before = labels_and_ids(hsm)
    d = tmp_path / "k"
    uri = f"pkcs11:token={hsm.token};object=undo-key;id=%7a%03"
    real = Token.tool_run

    def tool_run(self, what, uri, args, **kw):
        if "--delete-object" in args:
            raise KeyboardInterrupt
        return real(self, what, uri, args, **kw)

    with pytest.MonkeyPatch.context() as m:
        _checks_fail(m)
        m.setattr(Token, "tool_run", tool_run)
        r = run_cli("--json", "keygen", "--pkcs11", uri, str(d), env=hsm.env)
    assert r.returncode == 130, r.stderr
    error = json.loads(r.stdout)["error"]
    assert "failed its check private.extractable" in error["message"]
    assert "removing the new key was cut off; no file is left;" in error["message"]
    assert f"'{hsm.token}' may still hold the new key {uri} " in error["message"]
    assert not d.exists() or list(d.iterdir()) == []
    run_removal_fix(hsm, error["fix"])
    assert labels_and_ids(hsm) == before


def _rollback_fails(m: pytest.MonkeyPatch) -> None:
    from qredo_openssl._files import Publisher

    _checks_fail(m)
    m.setattr(Publisher, "rollback", lambda self: None)  # the files stay: they name the key


def _label_taken(hsm: Hsm, label: str) -> Callable[[pytest.MonkeyPatch], None]:
    def inject(m: pytest.MonkeyPatch) -> None:
        from qredo_openssl._pkcs11 import Token
        from qredo_openssl._pkcs11_errors import TokenError

        def export(self, uri):  # meanwhile, someone makes another key with the same label
            r = hsm.tool("--keypairgen", "--key-type", "EC:prime256v1", "--label", label,
                         "--id", "99", login=True)  # fmt: skip
            assert r.returncode == 0, r.stderr
            raise TokenError(f"exporting the public key of {uri} failed: fake")

        m.setattr(Token, "public_pem", export)

    return inject


@pytest.mark.parametrize("unsafe", ["file-left", "label-taken"])
def test_keygen_removes_nothing_when_removal_is_unsafe(hsm, tokendir, tmp_path, unsafe):
    before = labels_and_ids(hsm)
    d = tmp_path / "k"
    label = f"unsafe-{unsafe}"
    uri = f"pkcs11:token={hsm.token};object={label};id=%77"
    inject = _rollback_fails if unsafe == "file-left" else _label_taken(hsm, label)
    with pytest.MonkeyPatch.context() as m:
        inject(m)
        r = run_cli("keygen", "--pkcs11", uri, str(d), env=hsm.env)
    assert r.returncode == 3, r.stderr
    line = r.stderr.strip().splitlines()[-1]
    why = f"{d / 'private.uri'} names it" if unsafe == "file-left" else "4 objects in the token"
    assert f"not removed: {why}" in line
    ours = {("Private Key", label, "77"), ("Public Key", label, "77")}
    others = {("Private Key", label, "99"), ("Public Key", label, "99")}
    assert labels_and_ids(hsm) - before == (ours if unsafe == "file-left" else ours | others)
    fix = shlex.split(line.rsplit("; run: ", 1)[1])
    run_removal_fix(hsm, fix)  # it removes ours, and only ours
    assert labels_and_ids(hsm) - before == (set() if unsafe == "file-left" else others)
