"""Managing API keys (the admin API and `lethe api-keys`): list, create, revoke, rotate. The key itself is shown once,
when it is made; a listing shows its prefix, never its hash."""

import base64
import binascii
import json
import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from sqlalchemy.orm import Session

from api.errors import Conflict, InvalidInput, NotFound
from api.scopes import SCOPES
from api.services.auth import issue_key
from models.repositories import ApiKeyRepository, TenantRepository
from models.tables import ApiKey, Tenant, utcnow

KeyStatus = Literal["active", "revoked", "expired"]
TENANT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
MAX_NAME_LENGTH = 200
# How long a rotated key may keep working beside its replacement, at most: long enough to roll out the new key.
MAX_GRACE_S = 30 * 24 * 3600


@dataclass(frozen=True)
class ApiKeyView:
    """What an operator may see of a key: never its hash."""

    id: uuid.UUID
    tenant: str
    prefix: str
    scopes: list[str]
    name: str
    status: KeyStatus
    created_at: datetime
    last_used_at: datetime | None
    expires_at: datetime | None
    revoked_at: datetime | None
    replaced_by: uuid.UUID | None

    @classmethod
    def of(cls, key: ApiKey, tenant: str, now: datetime) -> "ApiKeyView":
        return cls(
            id=key.id,
            tenant=tenant,
            prefix=key.prefix,
            scopes=list(key.scopes),
            name=key.name,
            status=status_of(key, now),
            created_at=key.created_at,
            last_used_at=key.last_used_at,
            expires_at=key.expires_at,
            revoked_at=key.revoked_at,
            replaced_by=key.replaced_by,
        )


@dataclass(frozen=True)
class IssuedKey:
    """A key just made: its view and the key itself, which is shown this once."""

    view: ApiKeyView
    key: str


@dataclass(frozen=True)
class KeyPage:
    items: list[ApiKeyView]
    next_cursor: str | None


def status_of(key: ApiKey, now: datetime) -> KeyStatus:
    if key.revoked_at is not None:
        return "revoked"
    if key.expires_at is not None and key.expires_at <= now:
        return "expired"
    return "active"


def check_scopes(scopes: Iterable[str]) -> list[str]:
    """The scopes, sorted and without repeats; InvalidInput naming the allowed ones if any is unknown or none given."""
    chosen = sorted(set(scopes))
    unknown = [scope for scope in chosen if scope not in SCOPES]
    if unknown or not chosen:
        got = f"unknown {', '.join(repr(s) for s in unknown)}" if unknown else "none given"
        raise InvalidInput(f"scopes: {got}; allowed are {', '.join(SCOPES)}")
    return chosen


def _tenant_name(session: Session, key: ApiKey) -> str:
    tenant = session.get(Tenant, key.tenant_id)
    assert tenant is not None, "api_keys.tenant_id is a foreign key"
    return tenant.name


def _get(session: Session, key_id: uuid.UUID) -> ApiKey:
    key = ApiKeyRepository(session).get(key_id)
    if key is None:
        raise NotFound(f"api key {key_id}: not found")
    return key


def create(
    session: Session,
    tenant: str,
    scopes: Iterable[str],
    name: str = "",
    expires_at: datetime | None = None,
    now: datetime | None = None,
) -> IssuedKey:
    """A new key for `tenant` (made if new) with these scopes; InvalidInput naming a bad field."""
    now = now or utcnow()
    if not TENANT_NAME.match(tenant):
        raise InvalidInput(
            f"tenant: {tenant!r} is not a tenant name (1 to 100 letters, digits, '.', '_' or '-', starting with a "
            "letter or digit)"
        )
    chosen = check_scopes(scopes)
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidInput(f"name: at most {MAX_NAME_LENGTH} characters, got {len(name)}")
    if expires_at is not None and expires_at <= now:
        raise InvalidInput(f"expires_at: {expires_at.isoformat()} is not in the future")
    row, key = issue_key(session, tenant, chosen, name, expires_at)
    return IssuedKey(ApiKeyView.of(row, tenant, now), key)


def revoke(session: Session, key_id: uuid.UUID, now: datetime | None = None) -> ApiKeyView:
    """Revoke the key now; a key revoked already stays as it was (revoking twice is harmless). NotFound if unknown."""
    now = now or utcnow()
    key = _get(session, key_id)
    if key.revoked_at is None:
        key.revoked_at = now
        session.flush()
    return ApiKeyView.of(key, _tenant_name(session, key), now)


def rotate(session: Session, key_id: uuid.UUID, grace_s: int = 0, now: datetime | None = None) -> IssuedKey:
    """A new key with the old one's tenant, scopes and name; the old one revoked now (`grace_s` 0) or expiring after
    `grace_s` seconds, so that its holders can switch over. Conflict if the old one is not active or was rotated
    already (rotate the key that replaced it)."""
    now = now or utcnow()
    if not 0 <= grace_s <= MAX_GRACE_S:
        raise InvalidInput(f"grace_s: must be between 0 and {MAX_GRACE_S} (30 days), got {grace_s}")
    old = _get(session, key_id)
    status = status_of(old, now)
    if status != "active":
        raise Conflict(f"api key {key_id}: it is {status}, so there is nothing to rotate; create a new key instead")
    if old.replaced_by is not None:
        raise Conflict(f"api key {key_id}: already rotated; its replacement is {old.replaced_by}")
    tenant = _tenant_name(session, old)
    new, key = issue_key(session, tenant, old.scopes, old.name)
    old.replaced_by = new.id
    if grace_s == 0:
        old.revoked_at = now
    else:
        until = now + timedelta(seconds=grace_s)
        old.expires_at = until if old.expires_at is None else min(old.expires_at, until)
    session.flush()
    return IssuedKey(ApiKeyView.of(new, tenant, now), key)


def _encode_cursor(key: ApiKey) -> str:
    raw = json.dumps([key.created_at.isoformat(), str(key.id)]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        created_at, key_id = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        after = datetime.fromisoformat(created_at), uuid.UUID(key_id)
    except (binascii.Error, ValueError, TypeError) as exc:  # json.JSONDecodeError is a ValueError
        raise InvalidInput("cursor: not a cursor this server issued (pass `next_cursor` of the previous page)") from exc
    if after[0].tzinfo is None:
        raise InvalidInput("cursor: not a cursor this server issued (pass `next_cursor` of the previous page)")
    return after


def list_keys(
    session: Session,
    limit: int = 50,
    cursor: str | None = None,
    tenant: str | None = None,
    status: KeyStatus | None = None,
    now: datetime | None = None,
) -> KeyPage:
    """A page of keys, newest first; of one tenant (by name; an unknown one has none) and status when given."""
    now = now or utcnow()
    after = _decode_cursor(cursor) if cursor else None
    tenant_id = None
    if tenant is not None:
        found = TenantRepository(session).get_by_name(tenant)
        if found is None:
            return KeyPage([], None)
        tenant_id = found.id
    # One more than the page: whether there is a next page, without counting.
    rows = ApiKeyRepository(session).page(now, limit + 1, after, tenant_id, status)
    items = [ApiKeyView.of(key, tenant_name, now) for key, tenant_name in rows[:limit]]
    next_cursor = _encode_cursor(rows[limit - 1][0]) if len(rows) > limit else None
    return KeyPage(items, next_cursor)
