"""The per-tenant request rate on the routes that write: a token bucket per tenant, kept in the API process.

Where the buckets live: in this process's memory. `lethe serve` runs the API as one process, in the embedded
default and in docker-compose alike, so the limit is exact there; an installation that runs N API processes
behind a balancer lets a tenant through up to N times the rate (each process counts on its own). A shared bucket
in Redis would need Redis on the embedded default, which has none. Buckets are forgotten on restart (a tenant then
starts with a full burst) and there is one per tenant that wrote since (tenants are made by an admin, so few).

Which routes: those that write (POST): each creates rows, objects or jobs. Reads are left free: they are cheap
index lookups, and clients poll a job's status while it runs.
"""

import threading
import time
import uuid
from dataclasses import dataclass

from api.errors import TooManyRequests


@dataclass
class _Bucket:
    tokens: float
    updated_at: float


class RateLimiter:
    """Token buckets: each tenant holds up to `burst` tokens, refilled at `per_minute` a minute; a request
    takes one."""

    def __init__(self, per_minute: float, burst: int) -> None:
        self.rate_per_s = per_minute / 60
        self.burst = burst
        self._buckets: dict[uuid.UUID, _Bucket] = {}
        # Sync routes (and their dependencies) run in a thread pool.
        self._lock = threading.Lock()

    def take(self, tenant_id: uuid.UUID) -> None:
        """Take a token from the tenant's bucket; TooManyRequests, with the wait until the next token, if empty."""
        now = time.monotonic()
        with self._lock:
            bucket = self._buckets.setdefault(tenant_id, _Bucket(float(self.burst), now))
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated_at) * self.rate_per_s)
            bucket.updated_at = now
            if bucket.tokens >= 1:
                bucket.tokens -= 1
                return
            wait_s = (1 - bucket.tokens) / self.rate_per_s
        raise TooManyRequests(
            "rate_limited",
            f"the tenant sent more than {self.burst} writes at once or more than {self.rate_per_s * 60:g} a minute "
            f"(LETHE_RATE_LIMIT_BURST, LETHE_RATE_LIMIT_PER_MINUTE): the next is allowed in {wait_s:.1f} s",
            wait_s,
        )
