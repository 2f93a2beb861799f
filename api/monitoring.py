"""Prometheus figures of the API's own requests: an ASGI middleware over every request, and the registry GET
/metrics exposes (with the catalogue's figures, `api/services/monitoring.py`).

Requests are labelled by their route's path template (`/v1/jobs/{job_id}`), never the raw path, so the number of
series stays bounded whatever clients send: a path no route matches counts as `route="<unmatched>"`. The middleware
sits outside the request gate, so requests the gate answers (401, 413, 429) are counted too.

Processes: each API process counts its own requests. `lethe serve` runs one; where several serve one port
(`uvicorn --workers N`, gunicorn), set PROMETHEUS_MULTIPROC_DIR to an empty directory shared by them (before they
start, emptied at each start): prometheus-client then keeps the counters in files there, and every process's
/metrics answers the sum over all of them (its multiprocess mode; gauges of the catalogue are read per scrape and
are the same whichever process answers).
"""

import os
import re
import time
from collections.abc import Iterable

from fastapi import FastAPI
from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Histogram,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

UNMATCHED_ROUTE = "<unmatched>"
# Seconds: from a health check (milliseconds) to a large upload or a slow catalogue (tens of seconds).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def multiprocess_dir() -> str | None:
    """The directory prometheus-client's multiprocess mode keeps its files in, when it is on."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class RequestMetrics:
    """The request counter and latency histogram of one app, in a registry of its own (several apps in one
    process, as in the tests, each count their own)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "lethe_http_requests",
            "HTTP requests answered, by method, route template and status code.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "lethe_http_request_duration_seconds",
            "Time from a request's arrival to the end of its response body, by method, route template and status.",
            ["method", "route", "status"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        if multiprocess_dir() is None:
            # The process's own figures (CPU, memory, open files, GC); in multiprocess mode they would describe
            # only the process that happens to answer the scrape.
            for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
                self.registry.register(collector)

    def scrape_registry(self, catalogue: Collector) -> CollectorRegistry:
        """What one scrape exposes: this process's (or, in multiprocess mode, every process's) request figures
        and the catalogue's."""
        registry = CollectorRegistry()
        if multiprocess_dir() is None:
            registry.register(_Forward(self.registry))
        else:
            MultiProcessCollector(registry)
        registry.register(catalogue)
        return registry


class _Forward(Collector):
    """The families of another registry, so that a scrape's registry can hold them without re-registering."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterable[Metric]:
        return self.registry.collect()


class RouteTemplates:
    """The path template a request was served under: the route Starlette's router picked (`scope["route"]`), or for
    a request answered before routing (by the request gate: 401, 413, 429), the spec path its path matches."""

    def __init__(self) -> None:
        self._patterns: list[tuple[re.Pattern[str], str]] | None = None

    def of(self, scope: Scope) -> str:
        route = scope.get("route")
        if route is not None and isinstance(getattr(route, "path", None), str):
            return str(route.path)
        if self._patterns is None:
            app: FastAPI = scope["app"]
            self._patterns = [
                (re.compile("^" + re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(path)) + "$"), path)
                for path in app.openapi()["paths"]
            ]
        for pattern, path in self._patterns:
            if pattern.match(scope["path"]):
                return path
        return UNMATCHED_ROUTE


class RequestMetricsMiddleware:
    """Counts each HTTP request and times it to the end of its response body (a stream's too)."""

    def __init__(self, app: ASGIApp, metrics: RequestMetrics) -> None:
        self.app, self.metrics = app, metrics
        self.templates = RouteTemplates()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client gets if the app raises before it answers

        async def counted_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, counted_send)
        finally:
            labels = (scope["method"], self.templates.of(scope), str(status))
            self.metrics.requests.labels(*labels).inc()
            self.metrics.latency.labels(*labels).observe(time.perf_counter() - started)
