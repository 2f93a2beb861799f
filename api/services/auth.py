"""API keys: only a SHA-256 of each key is stored; the key itself is shown once, when it is made."""

import hashlib
import logging
import secrets
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from api.errors import Unauthorized
from api.scopes import TENANT_SCOPES
from models.repositories import ApiKeyRepository, TenantRepository
from models.tables import ApiKey, utcnow

log = logging.getLogger("lethe.api")

DEFAULT_TENANT = "default"
KEY_PREFIX_LENGTH = 12
# A key's use is recorded at most this often: one write per key per interval, not one per request.
LAST_USED_RESOLUTION = timedelta(minutes=1)


@dataclass(frozen=True)
class AuthenticatedKey:
    """The key a request was authenticated with: whose it is, what it may do, and its latest recorded use."""

    id: uuid.UUID
    tenant_id: uuid.UUID
    scopes: frozenset[str]
    last_used_at: datetime | None = None

    def use_unrecorded(self, now: datetime) -> bool:
        """Whether a use at `now` is to be recorded (none is, within the last LAST_USED_RESOLUTION)."""
        return self.last_used_at is None or self.last_used_at < now - LAST_USED_RESOLUTION


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def authenticate(session: Session, key: str | None, now: datetime | None = None) -> AuthenticatedKey:
    """The active key `key` is (neither revoked nor expired at `now`); Unauthorized otherwise. Reads only."""
    if not key:
        raise Unauthorized("send your API key in the X-API-Key header")
    api_key = ApiKeyRepository(session).get_active_by_hash(hash_key(key), now or utcnow())
    if api_key is None:
        raise Unauthorized("unknown, revoked or expired API key")
    return AuthenticatedKey(api_key.id, api_key.tenant_id, frozenset(api_key.scopes), api_key.last_used_at)


def record_use(session: Session, api_key: AuthenticatedKey, now: datetime) -> bool:
    """Record a use of the key at `now` unless one within LAST_USED_RESOLUTION is recorded (by any process);
    whether it wrote."""
    return ApiKeyRepository(session).touch(api_key.id, now, unless_since=now - LAST_USED_RESOLUTION)


def issue_key(
    session: Session,
    tenant_name: str,
    scopes: Iterable[str] = TENANT_SCOPES,
    name: str = "",
    expires_at: datetime | None = None,
) -> tuple[ApiKey, str]:
    """A new random key for `tenant_name` (made if new) and its row; the caller shows the key once."""
    key = "lethe_" + secrets.token_urlsafe(30)
    tenant = TenantRepository(session).get_or_create(tenant_name)
    row = ApiKeyRepository(session).create(
        tenant.id, key[:KEY_PREFIX_LENGTH], hash_key(key), sorted(set(scopes)), name, expires_at
    )
    return row, key


def create_key(session: Session, tenant_name: str, scopes: Iterable[str] = TENANT_SCOPES, name: str = "") -> str:
    """A new random key for `tenant_name`; the caller shows it once."""
    return issue_key(session, tenant_name, scopes, name)[1]


def ensure_key(
    session: Session, key: str, tenant_name: str = DEFAULT_TENANT, scopes: Iterable[str] = TENANT_SCOPES, name: str = ""
) -> ApiKey:
    """Make sure `key` exists (a key from the settings: LETHE_BOOTSTRAP_API_KEY, LETHE_ADMIN_API_KEY); idempotent.

    A key that exists is left as it is, revoked or expired too: a restart with the same setting must not undo a
    revocation (revoke it, and set another key to have one again). That is logged, as is a key without the scopes
    asked for (the setting names a key made otherwise)."""
    wanted = sorted(set(scopes))
    existing = ApiKeyRepository(session).get_by_hash(hash_key(key))
    if existing is None:
        tenant = TenantRepository(session).get_or_create(tenant_name)
        return ApiKeyRepository(session).create(tenant.id, key[:KEY_PREFIX_LENGTH], hash_key(key), wanted, name)
    if existing.revoked_at is not None or (existing.expires_at is not None and existing.expires_at <= utcnow()):
        log.warning("%s: the key it names (id %s) is revoked or expired and stays so", name or "key", existing.id)
    elif not set(wanted) <= set(existing.scopes):
        log.warning(
            "%s: the key it names (id %s) has scopes %s, not %s", name or "key", existing.id, existing.scopes, wanted
        )
    return existing
