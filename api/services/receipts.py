"""Signing deletion receipts: the one place that decides how a receipt is signed."""

from typing import Any

from sqlalchemy.orm import Session

from api.services.signing_keys import current_signing_key
from lethe.settings import Settings
from lethe.signing import sign_document


def signed_receipt(settings: Settings, session: Session, receipt: dict[str, Any]) -> dict[str, Any]:
    """`{"receipt": receipt, "signature": {...}}`: Ed25519 over the receipt's RFC 8785 canonical JSON with the
    installation's current signing key (lethe/signing.py), so anyone holding the keys published at
    `GET /v1/signing-keys` checks it offline (`lethe verify-report`), exactly as a report."""
    return {"receipt": receipt, "signature": sign_document(receipt, current_signing_key(settings, session))}
