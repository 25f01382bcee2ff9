"""The aiohttp application: HTTP routes, the WebSocket endpoint and the web app on one port."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import msgspec
from aiohttp import web

from courier.domain.errors import CourierError
from courier.transport.errors import error_middleware
from courier.transport.http_api import HttpApi
from courier.transport.http_guard import SECURITY_HEADERS, body_limit, guard_middleware
from courier.transport.openapi import Limits, build_openapi
from courier.transport.ws import WsEndpoint
from courier.transport.ws_aiohttp import AiohttpWs

STATIC_DIR = Path(str(resources.files("courier.transport"))) / "static"


async def _secure_headers(request: web.Request, response: web.StreamResponse) -> None:
    response.headers.update(SECURITY_HEADERS)


def build_app(
    api: HttpApi,
    ws: WsEndpoint,
    request_max_bytes: int,
    extra: list[web.RouteDef] | None = None,
) -> web.Application:
    limit, expect = body_limit(request_max_bytes)
    app = web.Application(
        middlewares=[guard_middleware(), error_middleware(api.metrics), limit],
        client_max_size=request_max_bytes,
    )
    app.on_response_prepare.append(_secure_headers)
    for route in [*api.routes(), *(extra or [])]:
        if isinstance(route, web.RouteDef):
            route = web.RouteDef(
                route.method, route.path, route.handler, {"expect_handler": expect, **route.kwargs}
            )
        app.add_routes([route])
    app.router.add_get("/v1/ws", AiohttpWs(ws).handle)
    limits = Limits(
        body_max_chars=api.delivery.body_max_chars,
        request_max_bytes=request_max_bytes,
        longpoll_max_wait=api.longpoll_max_wait,
    )
    openapi = msgspec.json.encode(build_openapi(limits))

    async def openapi_json(request: web.Request) -> web.Response:
        return web.Response(body=openapi, content_type="application/json")

    app.router.add_get("/openapi.json", openapi_json)
    index = STATIC_DIR / "index.html"

    async def home(request: web.Request) -> web.StreamResponse:
        if index.is_file():
            return web.FileResponse(index, headers={"Cache-Control": "no-cache"})
        return web.json_response({"name": "courier", "api": "/openapi.json"})

    app.router.add_get("/", home)
    # A fixed set of files known at start: no path from the request ever reaches the disk.
    assets = {p.name: p for p in STATIC_DIR.iterdir() if p.is_file()} if STATIC_DIR.is_dir() else {}

    async def static(request: web.Request) -> web.StreamResponse:
        path = assets.get(request.match_info["name"])
        if path is None:
            raise CourierError("not_found", "There is no such file.", 404)
        return web.FileResponse(path, headers={"Cache-Control": "no-cache"})

    app.router.add_get("/static/{name}", static)

    async def on_shutdown(app: web.Application) -> None:
        await ws.shutdown()

    app.on_shutdown.append(on_shutdown)
    return app


def build_metrics_app(api: HttpApi) -> web.Application:
    """The metrics listener's app: /metrics and /healthz, for a scraper on a private address."""
    app = web.Application(middlewares=[error_middleware(api.metrics)])
    app.router.add_get("/metrics", api.metrics_text)
    app.router.add_get("/healthz", api.healthz)
    app.on_response_prepare.append(_secure_headers)
    return app
