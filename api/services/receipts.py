"""Signing deletion receipts: the one place that decides how a receipt is signed."""

from typing import Any

from sqlalchemy.orm import Session

from lethe.settings import Settings
from lethe.signing import sign, signing_key


def signed_receipt(settings: Settings, session: Session, receipt: dict[str, Any]) -> dict[str, Any]:
    """`{"receipt": receipt, "signature": {...}}`, signed with the server's report-signing key over the receipt's
    canonical JSON (lethe/signing.py), so it verifies exactly as a report does.

    `session` is for a signer that keeps its keys in the catalogue; the HMAC signer reads its key from settings.
    """
    del session
    signed = sign(receipt, signing_key(settings))
    return {"receipt": signed["report"], "signature": signed["signature"]}
