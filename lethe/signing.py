"""Signed audit reports: an HMAC-SHA256 (server key) over the report's canonical JSON.

A signed report is `{"report": {...}, "signature": {"algorithm", "key_id", "value"}}`. The canonical JSON is the
report with sorted keys, no whitespace, UTF-8, and no NaN or infinity (JSON has none), so anyone holding the key
recomputes the same bytes from the stored or downloaded file. `key_id` (the first 16 hex digits of the key's
SHA-256) names the key without revealing it, so a verifier knows which key to ask for.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lethe.settings import Settings

ALGORITHM = "HMAC-SHA256"
KEY_FILE = "report_signing.key"


def canonical_json(report: Any) -> bytes:
    """The bytes the signature covers: sorted keys, compact separators, UTF-8; NaN and infinity refused."""
    return json.dumps(report, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode(
        "utf-8"
    )


def key_id(key: bytes) -> str:
    return hashlib.sha256(key).hexdigest()[:16]


def sign(report: dict[str, Any], key: bytes) -> dict[str, Any]:
    """The signed report: the report and its HMAC over canonical_json(report)."""
    value = hmac.new(key, canonical_json(report), hashlib.sha256).hexdigest()
    return {"report": report, "signature": {"algorithm": ALGORITHM, "key_id": key_id(key), "value": value}}


@dataclass(frozen=True)
class Verification:
    valid: bool
    reason: str


def verify(signed: Any, key: bytes) -> Verification:
    """Whether `signed` is a report signed with `key`, and why not."""
    if not isinstance(signed, dict) or not isinstance(signed.get("report"), dict):
        return Verification(False, "not a signed report: expected an object with 'report' and 'signature'")
    signature = signed.get("signature")
    if not isinstance(signature, dict) or not isinstance(signature.get("value"), str):
        return Verification(False, "the report carries no signature")
    if signature.get("algorithm") != ALGORITHM:
        return Verification(False, f"unsupported signature algorithm {signature.get('algorithm')!r}")
    if signature.get("key_id") != key_id(key):
        return Verification(
            False, f"signed with key {signature.get('key_id')!r}, but this server's key is {key_id(key)!r}"
        )
    try:
        expected = hmac.new(key, canonical_json(signed["report"]), hashlib.sha256).hexdigest()
    except ValueError as exc:  # NaN or infinity: never in a report Lethe signed
        return Verification(False, f"the report is not canonical JSON: {exc}")
    if not hmac.compare_digest(expected, signature["value"]):
        return Verification(False, "the signature does not match: the report was changed after it was signed")
    return Verification(True, f"signed by key {key_id(key)}")


def signing_key(settings: Settings) -> bytes:
    """The server's key: LETHE_REPORT_SIGNING_KEY, or (embedded default) a random key kept in data_dir."""
    if settings.report_signing_key is not None:
        return settings.report_signing_key.get_secret_value().encode("utf-8")
    path = settings.data_dir / KEY_FILE
    if not path.exists():
        _create_key_file(path)
    return path.read_bytes().strip()


def _create_key_file(path: Path) -> None:
    """A 256-bit random key, hex, readable by the owner only; a concurrent creator's key wins if it was first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    with os.fdopen(descriptor, "w") as handle:
        handle.write(secrets.token_hex(32) + "\n")
