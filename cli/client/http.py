"""The HTTP side of the client commands: an httpx client on the resolved Lethe, and the API's `{error, detail}`
turned into one clear line and an exit status."""

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import typer

from cli.client.config import ClientConfig, resolve
from cli.errors import CliError
from cli.exit_codes import ExitCode


def api_error(response: httpx.Response) -> CliError:
    """The refusal as a line naming the request, the status and the API's own code and detail."""
    request = response.request
    where = f"{request.method} {request.url.path}"
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        message = f"{where}: {response.status_code} {body['error']}: {body.get('detail', '')}".rstrip(": ")
    else:
        text = response.text.strip().replace("\n", " ")[:200]
        message = f"{where}: {response.status_code} {response.reason_phrase}" + (f": {text}" if text else "")
    if response.status_code == 401:
        message += " (set LETHE_API_KEY, or api_key in the profile)"
    if response.status_code in (429, 503) and response.headers.get("Retry-After"):
        message += f" (retry after {response.headers['Retry-After']} s)"
    return CliError(message, ExitCode.API_ERROR)


class LetheClient:
    """An httpx client on one Lethe, with the API key; every non-2xx answer raises a `CliError`."""

    def __init__(self, config: ClientConfig, transport: httpx.BaseTransport | None = None) -> None:
        self.config = config
        headers = {"User-Agent": "lethe-cli"}
        if config.api_key:
            headers["X-API-Key"] = config.api_key
        self.http = httpx.Client(base_url=config.url, headers=headers, timeout=config.timeout_s, transport=transport)

    def close(self) -> None:
        self.http.close()

    def unreachable(self, exc: httpx.HTTPError) -> CliError:
        return CliError(
            f"cannot reach Lethe at {self.config.url} ({self.config.source}): {type(exc).__name__}: {exc}",
            ExitCode.UNREACHABLE,
        )

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise self.unreachable(exc) from exc
        if response.is_error:
            raise api_error(response)
        return response

    def get_json(self, path: str, **kwargs: Any) -> Any:
        return self.request("GET", path, **kwargs).json()

    def post_json(self, path: str, **kwargs: Any) -> Any:
        return self.request("POST", path, **kwargs).json()

    @contextmanager
    def stream(self, method: str, path: str, **kwargs: Any) -> Iterator[httpx.Response]:
        """A streamed response, once its status says it is a success (the error body is read to render it)."""
        try:
            with self.http.stream(method, path, **kwargs) as response:
                if response.is_error:
                    response.read()
                    raise api_error(response)
                yield response
        except httpx.TransportError as exc:
            raise self.unreachable(exc) from exc

    def page(self, path: str, params: dict[str, Any]) -> tuple[list[dict[str, Any]], str | None]:
        """One page of a list route: its items and next cursor (a server before pagination answers a bare list)."""
        body = self.get_json(path, params={k: v for k, v in params.items() if v is not None})
        if isinstance(body, list):
            return body, None
        return list(body["items"]), body.get("next_cursor")

    def listing(self, path: str, params: dict[str, Any], follow: bool) -> tuple[list[dict[str, Any]], str | None]:
        """A page, or with `follow` every page from there to the last (then no cursor is left)."""
        items, cursor = self.page(path, params)
        while follow and cursor:
            more, cursor = self.page(path, {**params, "cursor": cursor})
            items.extend(more)
        return items, cursor


@contextmanager
def client(ctx: typer.Context) -> Iterator[LetheClient]:
    """The client of the profile named at the root (`lethe --profile NAME ...`), closed afterwards."""
    config = resolve(ctx.find_root().obj)
    if config.api_key is None:
        raise CliError(
            f"no API key for {config.url}: set LETHE_API_KEY, or api_key in a profile of the config file",
            ExitCode.USAGE,
        )
    lethe = LetheClient(config)
    try:
        yield lethe
    finally:
        lethe.close()
