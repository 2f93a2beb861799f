"""API keys: only a SHA-256 of each key is stored; the key itself is shown once, when it is made."""

import hashlib
import secrets
import uuid

from sqlalchemy.orm import Session

from api.errors import Unauthorized
from models.repositories import ApiKeyRepository, TenantRepository
from models.tables import ApiKey

DEFAULT_TENANT = "default"
KEY_PREFIX_LENGTH = 12


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def authenticate(session: Session, key: str | None) -> uuid.UUID:
    """The tenant id of an active key, or Unauthorized."""
    if not key:
        raise Unauthorized("send your API key in the X-API-Key header")
    api_key = ApiKeyRepository(session).get_active_by_hash(hash_key(key))
    if api_key is None:
        raise Unauthorized("unknown or revoked API key")
    return api_key.tenant_id


def ensure_key(session: Session, key: str, tenant_name: str = DEFAULT_TENANT) -> ApiKey:
    """Make sure `key` exists for `tenant_name` (the bootstrap key); idempotent."""
    existing = ApiKeyRepository(session).get_active_by_hash(hash_key(key))
    if existing is not None:
        return existing
    tenant = TenantRepository(session).get_or_create(tenant_name)
    return ApiKeyRepository(session).create(tenant.id, key[:KEY_PREFIX_LENGTH], hash_key(key), ["*"])


def create_key(session: Session, tenant_name: str) -> str:
    """A new random key for `tenant_name`; the caller shows it once."""
    key = "lethe_" + secrets.token_urlsafe(30)
    ensure_key(session, key, tenant_name)
    return key
