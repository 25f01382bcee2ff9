"""Every failure leaves as the contract's error shape: {"error": {"code", "message"}}."""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable

import msgspec
from aiohttp import web
from aiohttp.typedefs import Middleware

from courier.domain.errors import CourierError
from courier.metrics import Metrics

log = logging.getLogger(__name__)

_HTTP_CODES = {
    400: ("bad_request", "The request is malformed."),
    401: ("unauthorized", "A valid bearer token is required."),
    403: ("forbidden", "This is not allowed."),
    404: ("not_found", "There is nothing at this address."),
    405: ("method_not_allowed", "This method is not allowed here."),
    413: ("payload_too_large", "The request body is too large."),
    415: ("unsupported_media_type", "The body's media type is not accepted here."),
    431: ("headers_too_large", "The request headers are too large."),
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_body(code: str, message: str) -> bytes:
    return msgspec.json.encode({"error": {"code": code, "message": message}})


def error_response(exc: CourierError) -> web.Response:
    headers = {}
    if exc.status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    if exc.retry_after is not None:
        headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
    return web.Response(
        status=exc.status,
        body=error_body(exc.code, exc.message),
        content_type="application/json",
        headers=headers,
    )


def error_middleware(metrics: Metrics) -> Middleware:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except CourierError as exc:
            metrics.errors.labels(exc.code).inc()
            response = error_response(exc)
            if exc.status in (408, 413, 415):
                response.force_close()  # the rest of the body is not read: no keep-alive
            return response
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            code, message = _HTTP_CODES.get(exc.status, (f"http_{exc.status}", exc.reason))
            metrics.errors.labels(code).inc()
            response = error_response(CourierError(code, message, exc.status))
            if exc.status in (408, 413, 415):
                response.force_close()  # aiohttp's own 413 too: the rest of the body is unread
            if exc.status == 405 and "Allow" in exc.headers:
                response.headers["Allow"] = exc.headers["Allow"]
            return response
        except Exception:
            log.exception("unhandled error on %s %s", request.method, request.path)
            metrics.errors.labels("internal_error").inc()
            return error_response(
                CourierError("internal_error", "The server failed to answer; retry.", 500)
            )

    return middleware
