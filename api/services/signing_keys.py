"""The installation's signing keys: the first one, rotation, the current one, and the published list.

The catalogue says which key is current and publishes every public key; the private keys are files in
LETHE_SIGNING_KEY_DIR (lethe/signing.py says why). Keys are created only here, by explicit actions: the API's first
start (`ensure_signing_key`, when the catalogue has none) and `rotate_signing_key` (admin API, `lethe signing-keys
rotate`). Both hold the catalogue's key-creation lock, so API processes starting together make one first key and two
rotations never leave two current keys. A key file written by a transaction that then rolls back is never current
and never published: an orphan file, harmless.
"""

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy.orm import Session

from api.errors import ServiceUnavailable
from lethe.settings import Settings
from lethe.signing import ALGORITHM, KeyFileMissing, SigningKey, generate_key, load_signing_key, public_jwk
from models.repositories import SigningKeyRepository
from models.tables import SigningKey as SigningKeyRow
from models.tables import utcnow


def _create(settings: Settings, session: Session) -> SigningKeyRow:
    """A new current key: its private file written, its public row added (the caller retires the others)."""
    key = generate_key(settings.signing_keys_dir)
    now = utcnow()
    row = SigningKeyRow(
        key_id=key.key_id,
        algorithm=ALGORITHM,
        public_key=public_jwk(key.public)["x"],
        created_at=now,
        valid_from=now,
    )
    return SigningKeyRepository(session).add(row)


def ensure_signing_key(settings: Settings, session: Session) -> SigningKeyRow | None:
    """The installation's first key, made on its first start; None when there is a current key already."""
    keys = SigningKeyRepository(session)
    keys.lock()
    if keys.current() is not None:
        return None
    return _create(settings, session)


@dataclass(frozen=True)
class Rotation:
    current: SigningKeyRow
    retired: list[str]


def rotate_signing_key(settings: Settings, session: Session) -> Rotation:
    """A new current key; the previous one is retired (its public key stays published: what it signed verifies)."""
    keys = SigningKeyRepository(session)
    keys.lock()
    previous = [row.key_id for row in keys.list() if row.retired_at is None]
    new = _create(settings, session)
    keys.retire_all_but(new.key_id, new.valid_from)
    return Rotation(new, previous)


def list_signing_keys(session: Session) -> Sequence[SigningKeyRow]:
    """Every key ever used, oldest first."""
    return SigningKeyRepository(session).list()


def current_signing_key(settings: Settings, session: Session) -> SigningKey:
    """The key this process signs with now (reports, deletion receipts); ServiceUnavailable if there is none or this
    process cannot read its file (LETHE_SIGNING_KEY_DIR not mounted)."""
    row = SigningKeyRepository(session).current()
    if row is None:
        raise ServiceUnavailable("no signing key: the catalogue has none yet (the API makes one when it starts)")
    try:
        return load_signing_key(settings.signing_keys_dir, row.key_id)
    except KeyFileMissing as exc:
        raise ServiceUnavailable(str(exc), retry_after_s=60) from exc
