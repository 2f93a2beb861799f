"""GET /metrics: Prometheus's text format (or OpenMetrics, when the scraper asks for it).

Not in the OpenAPI spec: it is for the installation's monitoring, not for clients or generated SDKs. The request gate
lets it through without an API key (api/app.py names it a public path); when LETHE_METRICS_TOKEN is set, this route
answers only `Authorization: Bearer <token>`.
"""

import hmac

from fastapi import APIRouter, Request, Response
from prometheus_client.exposition import choose_encoder

from api.errors import Unauthorized
from api.monitoring import RequestMetrics
from api.services.monitoring import CatalogueCollector

METRICS_PATH = "/metrics"

router = APIRouter(include_in_schema=False)


@router.get(METRICS_PATH)
def metrics(request: Request) -> Response:
    """The API's request figures and the catalogue's and broker's, read now."""
    state = request.app.state
    token = state.settings.metrics_token
    if token is not None:
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode("utf-8"), token.get_secret_value().encode("utf-8")
        ):
            raise Unauthorized(
                "Authorization: GET /metrics needs `Bearer <LETHE_METRICS_TOKEN>`", {"WWW-Authenticate": "Bearer"}
            )
    request_metrics: RequestMetrics = state.request_metrics
    registry = request_metrics.scrape_registry(CatalogueCollector(state.settings, state.queue))
    encoder, content_type = choose_encoder(request.headers.get("accept", ""))
    return Response(encoder(registry), media_type=None, headers={"Content-Type": content_type})
