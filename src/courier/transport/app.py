"""The aiohttp application: HTTP routes, the WebSocket endpoint and the web app on one port."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import msgspec
from aiohttp import web

from courier.transport.errors import error_middleware
from courier.transport.http_api import HttpApi
from courier.transport.openapi import build_openapi
from courier.transport.ws import WsEndpoint

STATIC_DIR = Path(str(resources.files("courier.transport"))) / "static"


def build_app(api: HttpApi, ws: WsEndpoint, request_max_bytes: int) -> web.Application:
    app = web.Application(
        middlewares=[error_middleware(api.metrics)], client_max_size=request_max_bytes
    )
    app.add_routes(api.routes())
    app.router.add_get("/v1/ws", ws.handle)
    openapi = msgspec.json.encode(build_openapi())

    async def openapi_json(request: web.Request) -> web.Response:
        return web.Response(body=openapi, content_type="application/json")

    app.router.add_get("/openapi.json", openapi_json)
    index = STATIC_DIR / "index.html"

    async def home(request: web.Request) -> web.StreamResponse:
        if index.is_file():
            return web.FileResponse(index, headers={"Cache-Control": "no-cache"})
        return web.json_response({"name": "courier", "api": "/openapi.json"})

    app.router.add_get("/", home)
    if STATIC_DIR.is_dir():
        app.router.add_static("/static/", STATIC_DIR, append_version=False)

    async def on_shutdown(app: web.Application) -> None:
        await ws.shutdown()

    app.on_shutdown.append(on_shutdown)
    return app
