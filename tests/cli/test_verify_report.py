"""`lethe verify-report` as a third party runs it: the published key list from a file (offline) or a loopback URL,
exit 0 / 1 / 2 with the reason, the HTML page's hash, and never a key created."""

import hashlib
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cli.verify_report import verify_report
from lethe.signing import SigningKey, key_id_of, public_jwk, public_pem, sign

ROOT = Path(__file__).resolve().parents[2]
PAGE = b"<!doctype html><title>Lethe audit report a1</title><p>verdict: shallow</p>"


def _key(seed: int) -> SigningKey:
    private = Ed25519PrivateKey.from_private_bytes(bytes([seed]) * 32)
    return SigningKey(key_id_of(private.public_key()), private)


KEY = _key(7)
REPORT = {"audit_id": "a1", "verdict": "shallow", "html_sha256": hashlib.sha256(PAGE).hexdigest()}
KEY_LIST = {"keys": [{"key_id": KEY.key_id, "algorithm": "Ed25519", "jwk": {**public_jwk(KEY.public)}}]}


def _cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"LETHE_DATA_DIR": str(tmp_path / "data"), "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [sys.executable, "-m", "cli.main", "verify-report", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
    )


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    paths = {"report": tmp_path / "report.json", "keys": tmp_path / "keys.json", "html": tmp_path / "report.html"}
    paths["report"].write_text(json.dumps(sign(REPORT, KEY), indent=2))
    paths["keys"].write_text(json.dumps(KEY_LIST))
    paths["html"].write_bytes(PAGE)
    return paths


def test_offline_with_the_key_list_and_the_page(tmp_path: Path, files: dict[str, Path]) -> None:
    good = _cli(tmp_path, str(files["report"]), "--key-file", str(files["keys"]), "--html", str(files["html"]))
    assert good.returncode == 0, good.stderr
    assert good.stdout.startswith(f"valid: {files['report']} is the report of audit a1 (verdict shallow), signed by ")
    assert "the HTML page is the one the report signed" in good.stdout
    # Nothing was created: no data dir, no key.
    assert not (tmp_path / "data").exists()


def test_a_pem_public_key_is_enough(tmp_path: Path, files: dict[str, Path]) -> None:
    pem = tmp_path / "key.pem"
    pem.write_text(public_pem(KEY.public))
    assert verify_report(files["report"], pem, None, None) == 0


def test_invalid_reports_exit_1_with_the_reason(tmp_path: Path, files: dict[str, Path]) -> None:
    signed = json.loads(files["report"].read_text())
    text = json.dumps(signed).replace('"verdict": "shallow"', '"verdict": "shallow", "verdict": "robust"')
    files["report"].write_text(text)
    duplicate = _cli(tmp_path, str(files["report"]), "--key-file", str(files["keys"]))
    assert duplicate.returncode == 1 and "INVALID" in duplicate.stderr and "duplicate key 'verdict'" in duplicate.stderr

    signed["report"]["verdict"] = "robust"
    files["report"].write_text(json.dumps(signed))
    tampered = _cli(tmp_path, str(files["report"]), "--key-file", str(files["keys"]))
    assert tampered.returncode == 1 and "changed after it was signed" in tampered.stderr

    files["report"].write_text(json.dumps(sign(REPORT, _key(8))))
    other = _cli(tmp_path, str(files["report"]), "--key-file", str(files["keys"]))
    assert other.returncode == 1 and "which is not among the keys given" in other.stderr
    assert not (tmp_path / "data").exists()


def test_an_edited_html_page_fails(tmp_path: Path, files: dict[str, Path]) -> None:
    files["html"].write_bytes(PAGE.replace(b"shallow", b"robust"))
    edited = _cli(tmp_path, str(files["report"]), "--key-file", str(files["keys"]), "--html", str(files["html"]))
    assert edited.returncode == 1 and f"INVALID: {files['html']}: the HTML page was changed" in edited.stderr


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (["--key-file", "{missing}"], "--key-file"),
        (["--key-file", "{report}"], "not an Ed25519 JWK"),  # a report is no key list
        ([], "give exactly one of --key-file and --key-url"),
        (["--key-url", "http://192.0.2.1/v1/signing-keys"], "plain http is accepted only on loopback"),
        (["--key-url", "ftp://127.0.0.1/keys"], "expected an https:// URL"),
    ],
)
def test_unusable_input_exits_2(tmp_path: Path, files: dict[str, Path], args: list[str], reason: str) -> None:
    args = [a.format(missing=tmp_path / "nope.json", report=files["report"]) for a in args]
    result = _cli(tmp_path, str(files["report"]), *args)
    assert result.returncode == 2 and reason in result.stderr, result.stderr
    files["report"].write_text("{not json")
    assert _cli(tmp_path, str(files["report"]), "--key-file", str(files["keys"])).returncode == 2
    assert not (tmp_path / "data").exists()


class _KeyServer(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/v1/signing-keys":
            body = json.dumps(KEY_LIST).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        else:  # a redirect elsewhere must not be followed
            self.send_response(302)
            self.send_header("Location", "/v1/signing-keys")
            self.send_header("Content-Length", "0")
            self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def key_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _KeyServer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_the_key_list_from_a_loopback_url(
    tmp_path: Path, files: dict[str, Path], key_server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert verify_report(files["report"], None, f"{key_server}/v1/signing-keys", files["html"]) == 0
    assert verify_report(files["report"], None, f"{key_server}/moved", None) == 2
    assert "answered 302" in capsys.readouterr().err
