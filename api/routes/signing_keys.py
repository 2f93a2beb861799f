"""The keys that sign audit reports and deletion receipts: published to anyone (no API key), rotated by the admin."""

from typing import Any

from fastapi import APIRouter

from api.deps import AdminDep, SessionDep, SettingsDep
from api.errors import ErrorBody, error_responses
from api.schemas import Ed25519Jwk, RotationOut, SigningKeyOut, SigningKeysOut
from api.services import signing_keys as keys
from lethe.signing import public_key_from_x, public_pem
from models.tables import SigningKey

# The OpenAPI tag is the published spec's (SDKs name their classes after it): renaming it is an API change.
router = APIRouter(prefix="/v1", tags=["signing"])


def _out(row: SigningKey) -> SigningKeyOut:
    public = public_key_from_x(row.public_key)
    return SigningKeyOut(
        key_id=row.key_id,
        algorithm="Ed25519",
        jwk=Ed25519Jwk(x=row.public_key, kid=row.key_id),
        public_key_pem=public_pem(public),
        created_at=row.created_at,
        valid_from=row.valid_from,
        retired_at=row.retired_at,
        current=row.retired_at is None,
    )


@router.get("/signing-keys", response_model=SigningKeysOut, responses=error_responses(503))
def list_signing_keys(session: SessionDep) -> SigningKeysOut:
    """Every public key this installation ever signed with (ids, JWK and PEM, validity); public, no API key: a third
    party checks a report or receipt with it (`lethe verify-report FILE --key-url .../v1/signing-keys`, or offline
    with this JSON saved to a file and `--key-file`). Retired keys stay listed: what they signed stays valid."""
    return SigningKeysOut(keys=[_out(row) for row in keys.list_signing_keys(session)])


def _rotate_responses() -> dict[int | str, dict[str, Any]]:
    responses = error_responses(401, 429, 503)
    responses[401] = {**responses[401], "description": "No X-API-Key: this operation needs the admin key."}
    responses[403] = {
        "model": ErrorBody,
        "description": "forbidden: the key is not the admin key, or no admin key is configured.",
    }
    return responses


@router.post("/signing-keys/rotate", response_model=RotationOut, responses=_rotate_responses())
def rotate_signing_key(session: SessionDep, settings: SettingsDep, _admin: AdminDep) -> RotationOut:
    """Make a new current signing key and retire the previous one (admin key only). The retired key stays published
    and everything it signed still verifies; new reports and receipts are signed with the new key."""
    rotation = keys.rotate_signing_key(settings, session)
    return RotationOut(current=_out(rotation.current), retired=rotation.retired)
