"""Signed reports: canonical JSON, HMAC, tampering, forgery, the embedded default key file, `lethe verify-report`."""

import hashlib
import hmac
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


# REPORT's canonical JSON written out by hand (keys sorted by code point, so "é" after "verdict"), not by
# canonical_json: the signature must be the RFC 2104 HMAC-SHA256 of exactly these bytes under KEY.
REPORT_CANONICAL = (
    '{"attacks":[{"name":"relearn","recovery":0.8}],"audit_id":"a1","verdict":"shallow","é":"ü"}'.encode()
)


def test_the_signature_is_hmac_sha256_of_the_canonical_json_under_the_key() -> None:
    expected = hmac.new(KEY, REPORT_CANONICAL, hashlib.sha256).hexdigest()
    assert sign(REPORT, KEY)["signature"]["value"] == expected
    assert sign(REPORT, b"x" * 32)["signature"]["value"] == hmac.new(b"x" * 32, REPORT_CANONICAL, "sha256").hexdigest()
    assert sign(REPORT, b"x" * 32)["signature"]["value"] != expected  # the key is part of the signature


def _forged(report: dict, value: str) -> dict:
    """A signed report as a forger would write it: claiming this server's key and algorithm, with `value`."""
    return {"report": report, "signature": {"algorithm": "HMAC-SHA256", "key_id": key_id(KEY), "value": value}}


def test_forgeries_without_the_key_do_not_verify() -> None:
    changed = {**REPORT, "verdict": "robust"}
    changed_bytes = json.dumps(changed, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    other_key = b"x" * 32
    forgeries = {
        # a changed report keeping the original signature
        "changed report": _forged(changed, sign(REPORT, KEY)["signature"]["value"]),
        # a valid HMAC, but under another key, presented as this server's
        "another key": _forged(changed, hmac.new(other_key, changed_bytes, hashlib.sha256).hexdigest()),
        # hashes anyone can compute without a key
        "plain hash": _forged(changed, hashlib.sha256(changed_bytes).hexdigest()),
        "plain hash of the original": _forged(REPORT, hashlib.sha256(REPORT_CANONICAL).hexdigest()),
        # a keyed hash that is not HMAC (sha256(key || message) is open to length extension)
        "key-prefixed hash": _forged(REPORT, hashlib.sha256(KEY + REPORT_CANONICAL).hexdigest()),
    }
    for name, forged in forgeries.items():
        result = verify(forged, KEY)
        assert not result.valid, name
        assert "the report was changed after it was signed" in result.reason, name
    # the genuine signature of the changed report, made with the key, does verify: the forgeries failed on the value
    assert verify(_forged(changed, hmac.new(KEY, changed_bytes, hashlib.sha256).hexdigest()), KEY).valid


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
