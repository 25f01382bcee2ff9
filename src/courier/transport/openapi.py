"""OpenAPI 3.1 description of the HTTP API, served at /openapi.json.

Request schemas are generated from the same msgspec Structs that validate the bodies, so the
description cannot drift from what the server accepts. The bounds that are settings (body
length, request size, long-poll cap) come from the running server's values, and every answer
a route can give is listed, so a generic client or a contract tester (Schemathesis) can hold
the server to it. Links chain the calls as a client makes them: register, log in, then use
the token.
"""

from __future__ import annotations

from typing import Any

import msgspec

from courier import __version__
from courier.service.delivery import (
    EVENTS_LIMIT_DEFAULT,
    EVENTS_LIMIT_MAX,
    HISTORY_LIMIT_DEFAULT,
    HISTORY_LIMIT_MAX,
)
from courier.transport import wire
from courier.transport.openapi_groups import group_components, group_paths
from courier.transport.openapi_profiles import profile_components, profile_paths
from courier.transport.wire_seq import SEQ_MAX  # also the bound of a seq cursor in a query

_REF = "#/components/schemas/{name}"
JSON = "application/json"


class Limits(msgspec.Struct, frozen=True, kw_only=True):
    """The settings the description depends on (defaults: PROTOCOL.md's)."""

    body_max_chars: int = 4096
    request_max_bytes: int = 64 * 1024
    longpoll_max_wait: float = 60.0


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {JSON: {"schema": schema}}}


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": _REF.format(name=name)}


def _header(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "required": True, "schema": schema}


def _error(description: str, **headers: dict[str, Any]) -> dict[str, Any]:
    answer: dict[str, Any] = {"description": description, **_json(_ref("Error"))}
    if headers:
        answer["headers"] = headers
    return answer


def _q(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema,
    }


def _bearer(token: str) -> dict[str, str]:
    """Link parameters that authenticate the next call with a token from a login answer."""
    return {"header.Authorization": "Bearer {" + token + "}"}


_SEQ = {"type": "integer", "minimum": 0, "maximum": SEQ_MAX}
_RETRY_AFTER = _header("Seconds to wait before trying again.", {"type": "integer", "minimum": 1})
_WWW_AUTHENTICATE = _header("Always `Bearer`.", {"type": "string", "const": "Bearer"})

_EVENT = {
    "type": "object",
    "description": "A timeline event: a message (to a peer or in a group), a receipt, or a"
    " group's membership event. A client ignores a type it does not know.",
    "required": ["seq", "type"],
    "properties": {
        "seq": {"type": "integer", "minimum": 1},
        "type": {"type": "string"},
        "group": {"type": "string"},
        "action": {"enum": ["created", "added", "removed", "left", "renamed", "role"]},
        "by": {"type": "string"},
        "member": {"type": ["string", "null"]},
        "name": {"type": "string"},
        "role": {"enum": ["owner", "admin", "member", None]},
        "id": {"type": "string"},
        "from": {"type": "string"},
        "to": {"type": "string"},
        "body": {"type": "string"},
        "ts": {"type": "integer"},
        "client_id": {"type": "string"},
        "status": {"enum": ["delivered", "read"]},
        "peer": {"type": "string"},
        "up_to": {"type": "integer"},
    },
}
_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string", "pattern": "^[a-z0-9_]+$"},
                "message": {"type": "string"},
            },
        }
    },
}
_SENT = {
    "type": "object",
    "required": ["id", "seq", "ts", "client_id"],
    "properties": {
        "id": {"type": "string"},
        "seq": {"type": "integer", "minimum": 1},
        "ts": {"type": "integer"},
        "client_id": {"type": "string"},
    },
}
_SESSION = {
    "type": "object",
    "description": "One of the caller's sessions (a login: one bearer token).",
    "required": ["id", "created_ts", "last_used_ts", "user_agent", "current"],
    "properties": {
        "id": {
            "type": "string",
            "pattern": wire.SESSION_ID_PATTERN,
            "description": "The session's public id (not its token).",
        },
        "created_ts": {"type": "integer", "description": "Login time, ms since the epoch."},
        "last_used_ts": {
            "type": "integer",
            "description": "Last use, ms since the epoch; recorded about once an hour.",
        },
        "user_agent": {
            "type": "string",
            "maxLength": 256,
            "description": "The User-Agent header of the login (empty when there was none).",
        },
        "current": {"type": "boolean", "description": "The session of this request's token."},
    },
}
_HEALTH = {
    "type": "object",
    "required": ["status", "store"],
    "properties": {
        "status": {"enum": ["ok", "degraded", "down"]},
        "store": {"type": "boolean"},
        "broker": {"type": "boolean"},
        "cache": {"type": "boolean"},
    },
}
_USER = {
    "type": "object",
    "required": ["username"],
    "properties": {"username": {"type": "string"}},
}
_TOKEN = {
    "type": "object",
    "required": ["token", "username"],
    "properties": {"token": {"type": "string"}, "username": {"type": "string"}},
}
_EVENTS = {
    "type": "object",
    "required": ["events", "last_seq", "more"],
    "properties": {
        "events": {"type": "array", "items": _ref("Event")},
        "last_seq": {"type": "integer", "minimum": 0},
        "more": {"type": "boolean"},
    },
}
_CONVERSATIONS = {
    "type": "object",
    "required": ["conversations"],
    "properties": {
        "conversations": {
            "type": "array",
            "items": {
                "type": "object",
                "description": "A conversation with a peer, or a group's (`group`, `name`).",
                "required": ["last", "unread"],
                "properties": {
                    "peer": {"type": "string"},
                    "group": {"type": "string"},
                    "name": {"type": "string"},
                    "last": _ref("Event"),
                    "unread": {"type": "integer", "minimum": 0},
                },
                "oneOf": [{"required": ["peer"]}, {"required": ["group", "name"]}],
            },
        }
    },
}
_HISTORY = {
    "type": "object",
    "required": ["messages", "next_before"],
    "properties": {
        "messages": {"type": "array", "items": _ref("Event")},
        "next_before": {"type": ["integer", "null"], "minimum": 1},
    },
}


def _use(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/responses/{name}"}


# Answers many operations share. Any request may meet the connection caps (per source address,
# and in all): 429 and 503 with Retry-After, before it reaches its route.
_RETRY = {"Retry-After": _RETRY_AFTER}
_SHARED: dict[str, Any] = {
    "Unauthorized": _error(
        "`unauthorized`: no bearer token, an invalid or revoked one, or a session expired by"
        " disuse.",
        **{"WWW-Authenticate": _WWW_AUTHENTICATE},
    ),
    "Unavailable": _error(
        "`store_unavailable`: the message store is down; or `server_full`: the server holds"
        " all the connections it can (with `Retry-After`). Retry.",
        **{"Retry-After": {**_RETRY_AFTER, "required": False}},
    ),
    "RateLimited": _error(
        "`rate_limited`: too many of these requests; or `too_many_connections`: this address"
        " holds all the connections it may. Retry after `Retry-After` seconds.",
        **_RETRY,
    ),
    "AddressFull": _error(
        "`too_many_connections`: this address holds all the connections it may. Retry after"
        " `Retry-After` seconds.",
        **_RETRY,
    ),
    "TooManyConnections": _error(
        "`too_many_connections`: the user holds all the live connections (WebSockets and"
        " long-polls) allowed; or this address holds all the connections it may (with"
        " `Retry-After`).",
        **{"Retry-After": {**_RETRY_AFTER, "required": False}},
    ),
    "HeadersTooLarge": _error("`headers_too_large`: the request head is too large."),
    "UnsupportedMediaType": _error(
        "`unsupported_media_type`: the body is not sent as `Content-Type: application/json`."
    ),
    "RequestTimeout": _error("`request_timeout`: the request body did not arrive in time."),
    "BadQuery": _error("`bad_request`: a query parameter is not an integer or is out of range."),
}


def _shared(limits: Limits) -> dict[str, Any]:
    return {
        **_SHARED,
        "PayloadTooLarge": _error(
            f"`payload_too_large`: the request body is over {limits.request_max_bytes} bytes."
        ),
    }


def _answers(throttle: str, own: dict[str, Any]) -> dict[str, Any]:
    """An operation's own answers, and those every request may meet on the way to it."""
    shared = {"429": _use(throttle), "431": _use("HeadersTooLarge"), "503": _use("Unavailable")}
    return {**shared, **own}


def _body_errors() -> dict[str, Any]:
    """The answers every operation with a JSON request body can give about the body itself."""
    return {
        "400": _error(
            "`bad_request`: the body is not JSON, or a field is missing, of the wrong type or"
            " out of its bounds."
        ),
        "408": _use("RequestTimeout"),
        "413": _use("PayloadTooLarge"),
        "415": _use("UnsupportedMediaType"),
    }


def _body(name: str) -> dict[str, Any]:
    return {"required": True, **_json(_ref(name))}


def _components(limits: Limits) -> dict[str, Any]:
    _, components = msgspec.json.schema_components(
        [wire.Credentials, wire.LoginBody, wire.SendBody, wire.AckBody, wire.ReadBody],
        ref_template=_REF,
    )
    # The bound of `body` is a setting, so the service checks it rather than the Struct.
    components["SendBody"]["properties"]["body"].update(
        minLength=1, maxLength=limits.body_max_chars
    )
    _exactly_one(components["SendBody"], "to", "group")
    _exactly_one(components["ReadBody"], "peer", "group")
    components.update({"Event": _EVENT, "Error": _ERROR, "Sent": _SENT, "Session": _SESSION})
    components.update(group_components())
    components.update(profile_components())
    return components


def _merged(*parts: dict[str, Any]) -> dict[str, Any]:
    """Path items of several parts; a path in two of them (`/v1/users`) gets both's methods."""
    out: dict[str, Any] = {}
    for part in parts:
        for path, item in part.items():
            out[path] = {**out.get(path, {}), **item}
    return out


def _exactly_one(schema: dict[str, Any], a: str, b: str) -> None:
    """A body naming exactly one of two fields (a peer or a group), each a plain string."""
    for name in (a, b):
        schema["properties"][name] = {"type": "string", "maxLength": 64}
    schema["oneOf"] = [
        {"required": [a], "not": {"required": [b]}},
        {"required": [b], "not": {"required": [a]}},
    ]


def _ws_headers() -> list[dict[str, Any]]:
    """The headers of a WebSocket opening handshake (RFC 6455 4.1)."""

    def header(name: str, schema: dict[str, Any]) -> dict[str, Any]:
        return {"name": name, "in": "header", "required": True, "schema": schema}

    return [
        header("Upgrade", {"type": "string", "enum": ["websocket"]}),
        header("Connection", {"type": "string", "enum": ["Upgrade"]}),
        header("Sec-WebSocket-Version", {"type": "string", "enum": ["13"]}),
        # 16 random bytes in base64.
        header("Sec-WebSocket-Key", {"type": "string", "pattern": "^[A-Za-z0-9+/]{22}==$"}),
    ]


def build_openapi(limits: Limits | None = None) -> dict[str, Any]:
    limits = limits or Limits()
    cap = f"{limits.longpoll_max_wait:g}"
    secured: list[dict[str, list[str]]] = [{"bearer": []}]
    bearer = _bearer("$response.body#/token")
    limit_events = _q(
        "limit",
        {"type": "integer", "minimum": 1, "default": EVENTS_LIMIT_DEFAULT},
        f"At most this many events; a value above {EVENTS_LIMIT_MAX} is served as"
        f" {EVENTS_LIMIT_MAX}.",
    )
    limit_history = _q(
        "limit",
        {"type": "integer", "minimum": 1, "default": HISTORY_LIMIT_DEFAULT},
        f"At most this many; a value above {HISTORY_LIMIT_MAX} is served as {HISTORY_LIMIT_MAX}.",
    )
    unknown_user = _error("`unknown_user`: there is no such user.")
    registered = {
        "description": "Registered",
        **_json(_USER),
        "links": {
            "LogIn": {
                "operationId": "login",
                "requestBody": {
                    "username": "$request.body#/username",
                    "password": "$request.body#/password",
                },
            },
            "SendToThem": {
                "operationId": "send",
                "requestBody": {"to": "$response.body#/username"},
            },
            "ConversationWithThem": {
                "operationId": "history",
                "parameters": {"path.peer": "$response.body#/username"},
            },
        },
    }
    logged_in = {
        "description": "Logged in",
        **_json(_TOKEN),
        "links": {
            "Events": {"operationId": "events", "parameters": bearer},
            "Conversations": {"operationId": "conversations", "parameters": bearer},
            "LogOut": {"operationId": "logout", "parameters": bearer},
        },
    }
    paths: dict[str, Any] = {
        "/v1/users": {
            "post": {
                "operationId": "register",
                "summary": "Register a user",
                "security": [],
                "requestBody": _body("Credentials"),
                "responses": _answers(
                    "RateLimited",
                    {
                        "201": registered,
                        **_body_errors(),
                        "409": _error("`username_taken`"),
                    },
                ),
            }
        },
        "/v1/sessions": {
            "post": {
                "operationId": "login",
                "summary": "Log in: returns a bearer token",
                "security": [],
                "requestBody": _body("LoginBody"),
                "responses": _answers(
                    "RateLimited",
                    {
                        "201": logged_in,
                        **_body_errors(),
                        "401": _error("`invalid_credentials`: no such user, or a wrong password."),
                    },
                ),
            },
            "get": {
                "operationId": "sessions",
                "summary": "The caller's sessions, most recently used first (at most 100)",
                "security": secured,
                "responses": _answers(
                    "AddressFull",
                    {
                        "200": {
                            "description": "Sessions",
                            **_json(
                                {
                                    "type": "object",
                                    "required": ["sessions"],
                                    "properties": {
                                        "sessions": {
                                            "type": "array",
                                            "maxItems": 100,
                                            "items": _ref("Session"),
                                        }
                                    },
                                }
                            ),
                        },
                        "401": _use("Unauthorized"),
                    },
                ),
            },
        },
        "/v1/sessions/{id}": {
            "delete": {
                "operationId": "endSession",
                "summary": "End one of the caller's sessions: its token stops working and its"
                " live connections close, on every node",
                "security": secured,
                "parameters": [
                    {
                        "name": "id",
                        "in": "path",
                        "required": True,
                        "description": "A session id from GET /v1/sessions.",
                        "schema": {"type": "string", "pattern": wire.SESSION_ID_PATTERN},
                    }
                ],
                "responses": _answers(
                    "AddressFull",
                    {
                        "204": {"description": "Ended"},
                        "400": _error("The id is not a session id (16 hexadecimal digits)."),
                        "404": _error("unknown_session: not one of the caller's sessions."),
                        "401": _use("Unauthorized"),
                    },
                ),
            }
        },
        "/v1/sessions/current": {
            "delete": {
                "operationId": "logout",
                "summary": "Log out: the token stops working everywhere",
                "security": secured,
                "responses": _answers(
                    "AddressFull",
                    {"204": {"description": "Logged out"}, "401": _use("Unauthorized")},
                ),
            }
        },
        "/v1/messages": {
            "post": {
                "operationId": "send",
                "summary": "Send a message; answered once it is durably stored",
                "security": secured,
                "requestBody": _body("SendBody"),
                "responses": _answers(
                    "RateLimited",
                    {
                        "201": {
                            "description": "Stored",
                            **_json(_ref("Sent")),
                            "links": _sent_links(),
                        },
                        "200": {
                            "description": "A retry of the same client_id: the original answer",
                            **_json(_ref("Sent")),
                            "links": _sent_links(),
                        },
                        **_body_errors(),
                        "400": _error(
                            "`bad_request`: the body is not JSON, or a field is missing, of the"
                            " wrong type or out of its bounds; or `to` is the sender."
                        ),
                        "401": _use("Unauthorized"),
                        "404": _error("`unknown_user`: there is no user named `to`."),
                        "413": _error(
                            f"`body_too_long`: `body` is over {limits.body_max_chars} characters;"
                            " or `payload_too_large`: the request body is over"
                            f" {limits.request_max_bytes} bytes."
                        ),
                    },
                ),
            }
        },
        "/v1/events": {
            "get": {
                "operationId": "events",
                "summary": "Pull (wait=0) or long-poll (wait>0) the events after a seq",
                "security": secured,
                "parameters": [
                    _q("after", {**_SEQ, "default": 0}, "Events with seq > after."),
                    _q(
                        "wait",
                        {"type": "number", "minimum": 0, "default": 0},
                        "Seconds to hold the request while there is nothing to answer (0: answer"
                        f" at once); a value above {cap} is served as {cap}.",
                    ),
                    limit_events,
                ],
                "responses": _answers(
                    "TooManyConnections",
                    {
                        "200": {
                            "description": "Events, oldest first",
                            **_json(_EVENTS),
                            "links": {
                                "Next": {
                                    "operationId": "events",
                                    "parameters": {"query.after": "$response.body#/last_seq"},
                                }
                            },
                        },
                        "400": _use("BadQuery"),
                        "401": _use("Unauthorized"),
                    },
                ),
            }
        },
        "/v1/ack": {
            "post": {
                "operationId": "ack",
                "summary": "Cumulative delivered-ack of this device",
                "security": secured,
                "requestBody": _body("AckBody"),
                "responses": _answers(
                    "AddressFull",
                    {
                        "204": {"description": "Acknowledged"},
                        **_body_errors(),
                        "400": _error(
                            "`bad_request`: the body is not JSON, or `seq` is missing or not a"
                            " whole number in range; or `seq` is beyond the head of the caller's"
                            " timeline."
                        ),
                        "401": _use("Unauthorized"),
                    },
                ),
            }
        },
        "/v1/read": {
            "post": {
                "operationId": "read",
                "summary": "Messages from peer up to seq are read",
                "security": secured,
                "requestBody": _body("ReadBody"),
                "responses": _answers(
                    "AddressFull",
                    {
                        "204": {"description": "Marked read"},
                        **_body_errors(),
                        "400": _error(
                            "`bad_request`: the body is not JSON, or a field is missing, of the"
                            " wrong type or out of its bounds; or `seq` is beyond the head of the"
                            " caller's timeline."
                        ),
                        "401": _use("Unauthorized"),
                        "404": _error("`unknown_user`: there is no user named `peer`."),
                    },
                ),
            }
        },
        "/v1/conversations": {
            "get": {
                "operationId": "conversations",
                "summary": "Conversations, most recent first, with unread counts",
                "security": secured,
                "parameters": [limit_history],
                "responses": _answers(
                    "AddressFull",
                    {
                        "200": {"description": "Conversations", **_json(_CONVERSATIONS)},
                        "400": _use("BadQuery"),
                        "401": _use("Unauthorized"),
                    },
                ),
            }
        },
        "/v1/conversations/{peer}/messages": {
            "get": {
                "operationId": "history",
                "summary": "A page of one conversation, newest first",
                "security": secured,
                "parameters": [
                    {"name": "peer", "in": "path", "required": True, "schema": {"type": "string"}},
                    _q(
                        "before",
                        {**_SEQ, "minimum": 1},
                        "Messages with seq < before (the `next_before` of the previous page).",
                    ),
                    limit_history,
                ],
                "responses": _answers(
                    "AddressFull",
                    {
                        "200": {"description": "Messages", **_json(_HISTORY)},
                        "400": _use("BadQuery"),
                        "401": _use("Unauthorized"),
                        "404": unknown_user,
                    },
                ),
            }
        },
        "/healthz": {
            "get": {
                "operationId": "health",
                "summary": "200 while the store can serve (degraded: broker or cache down)",
                "security": [],
                "responses": _answers(
                    "AddressFull",
                    {
                        "200": {"description": "Serving", **_json(_HEALTH)},
                        "503": {
                            "description": "The store is down; or `server_full` (an error).",
                            **_json({"anyOf": [_HEALTH, _ref("Error")]}),
                        },
                    },
                ),
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "summary": "Prometheus metrics (also on the metrics listener, without a token)",
                "security": [{"metrics": []}],
                "responses": _answers(
                    "AddressFull",
                    {
                        "200": {
                            "description": "Prometheus text exposition format",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        },
                        "401": _error(
                            "`unauthorized`: the metrics token is missing or wrong.",
                            **{"WWW-Authenticate": _WWW_AUTHENTICATE},
                        ),
                        "404": _error(
                            "`not_found`: this port serves no metrics (no `metrics_token` is set)."
                        ),
                    },
                ),
            }
        },
        "/v1/ws": {
            "get": {
                "operationId": "websocket",
                "summary": "WebSocket opening handshake (frames in docs/protocol.md)",
                "security": [],
                "parameters": [
                    _q(
                        "token",
                        {"type": "string"},
                        "Bearer token; without it the first frame must be `auth`.",
                    ),
                    _q("after", _SEQ, "Replay the timeline after this seq, then go live."),
                    *_ws_headers(),
                ],
                "responses": _answers(
                    "TooManyConnections",
                    {
                        "101": {
                            "description": "Switching protocols: the connection is a WebSocket",
                            "headers": {
                                "Upgrade": _header("`websocket`", {"type": "string"}),
                                "Connection": _header("`Upgrade`", {"type": "string"}),
                                "Sec-WebSocket-Accept": _header(
                                    "The key's digest (RFC 6455 4.2.2)", {"type": "string"}
                                ),
                            },
                        },
                        "400": _error(
                            "`bad_request`: not a WebSocket upgrade (a plain GET, a missing or"
                            " malformed upgrade header, a body), or `after` is not a seq."
                        ),
                        "401": _error(
                            "`unauthorized`: the `token` is invalid or revoked.",
                            **{"WWW-Authenticate": _WWW_AUTHENTICATE},
                        ),
                        "426": _error(
                            "`upgrade_required`: a WebSocket version other than 13.",
                            **{
                                "Sec-WebSocket-Version": _header(
                                    "The version served.", {"type": "string", "const": "13"}
                                )
                            },
                        ),
                    },
                ),
            }
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Courier",
            "version": __version__,
            "description": "Messenger server API (PROTOCOL.md v1). Every error is"
            ' `{"error": {"code", "message"}}`, also for malformed HTTP (400, 413, 431) and'
            " for a request head that does not arrive in time (408).",
        },
        "paths": _merged(paths, group_paths(secured, limit_history), profile_paths(secured)),
        "components": {
            "schemas": _components(limits),
            "responses": _shared(limits),
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "metrics": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "The `metrics_token` setting.",
                },
            },
        },
        "security": secured,
    }


def _sent_links() -> dict[str, Any]:
    """From a send to what its sender does next: ack it, mark the conversation read, page it."""
    return {
        "Ack": {"operationId": "ack", "requestBody": {"seq": "$response.body#/seq"}},
        "Read": {
            "operationId": "read",
            "requestBody": {"peer": "$request.body#/to", "seq": "$response.body#/seq"},
        },
        "History": {
            "operationId": "history",
            "parameters": {"path.peer": "$request.body#/to"},
        },
        "EventsSince": {
            "operationId": "events",
            "parameters": {"query.after": "$response.body#/seq"},
        },
    }
