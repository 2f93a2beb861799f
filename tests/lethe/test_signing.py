"""Signed reports: canonical JSON, HMAC, tampering, the key file of the embedded default, `lethe verify-report`."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lethe.settings import Settings
from lethe.signing import canonical_json, key_id, sign, signing_key, verify

KEY = b"k" * 32
REPORT = {"audit_id": "a1", "verdict": "shallow", "attacks": [{"name": "relearn", "recovery": 0.8}], "é": "ü"}


def test_canonical_json_is_sorted_compact_utf8_and_refuses_nan() -> None:
    assert canonical_json({"b": 1, "a": [1.5, None], "é": "ü"}) == '{"a":[1.5,null],"b":1,"é":"ü"}'.encode()
    with pytest.raises(ValueError):
        canonical_json({"x": float("nan")})


def test_a_signed_report_verifies_and_key_order_or_whitespace_do_not_matter() -> None:
    signed = sign(REPORT, KEY)
    assert signed["signature"]["algorithm"] == "HMAC-SHA256" and signed["signature"]["key_id"] == key_id(KEY)
    assert len(signed["signature"]["value"]) == 64
    reloaded = json.loads(json.dumps(signed, indent=4, sort_keys=False))
    assert verify(reloaded, KEY).valid


@pytest.mark.parametrize(
    ("tamper", "reason"),
    [
        (lambda s: s["report"].update(verdict="robust"), "the report was changed after it was signed"),
        (lambda s: s["report"]["attacks"][0].update(recovery=0.1), "the report was changed after it was signed"),
        (lambda s: s["signature"].update(value="0" * 64), "the report was changed after it was signed"),
        (lambda s: s["signature"].update(key_id="deadbeefdeadbeef"), "signed with key 'deadbeefdeadbeef'"),
        (lambda s: s["signature"].update(algorithm="MD5"), "unsupported signature algorithm 'MD5'"),
        (lambda s: s.pop("signature"), "the report carries no signature"),
    ],
)
def test_tampering_is_detected_and_explained(tamper, reason: str) -> None:
    signed = json.loads(json.dumps(sign(REPORT, KEY)))
    tamper(signed)
    result = verify(signed, KEY)
    assert not result.valid and reason in result.reason


def test_another_key_does_not_verify() -> None:
    assert not verify(sign(REPORT, KEY), b"x" * 32).valid


def test_embedded_default_keeps_one_random_key_in_the_data_dir(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    key = signing_key(settings)
    assert len(key) == 64 and key == signing_key(Settings(data_dir=tmp_path))
    assert (tmp_path / "report_signing.key").stat().st_mode & 0o077 == 0
    assert signing_key(Settings(data_dir=tmp_path / "other")) != key


def test_configured_key_must_be_strong(tmp_path: Path) -> None:
    assert signing_key(Settings(data_dir=tmp_path, report_signing_key="s" * 40)) == b"s" * 40
    with pytest.raises(ValueError, match="LETHE_REPORT_SIGNING_KEY must be at least 32 characters"):
        Settings(data_dir=tmp_path, report_signing_key="short")


def _verify_cli(path: Path, data_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {"LETHE_DATA_DIR": str(data_dir), "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [sys.executable, "-m", "cli.main", "verify-report", str(path)], env=env, capture_output=True, text=True
    )


def test_verify_report_command(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    signed = sign(REPORT, signing_key(Settings(data_dir=data_dir)))
    path = tmp_path / "report.json"
    path.write_text(json.dumps(signed, indent=2))
    good = _verify_cli(path, data_dir)
    assert good.returncode == 0, good.stderr
    assert good.stdout.startswith(f"valid: {path} is the report of audit a1 (verdict shallow), signed by key ")

    signed["report"]["verdict"] = "robust"
    path.write_text(json.dumps(signed))
    bad = _verify_cli(path, data_dir)
    assert bad.returncode == 1
    assert "INVALID" in bad.stderr and "changed after it was signed" in bad.stderr

    path.write_text("{not json")
    assert _verify_cli(path, data_dir).returncode == 2
