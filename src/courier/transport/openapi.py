"""OpenAPI 3.1 description of the HTTP API, served at /openapi.json.

Request schemas are generated from the same msgspec Structs that validate the bodies, so the
description cannot drift from what the server accepts.
"""

from __future__ import annotations

from typing import Any

import msgspec

from courier import __version__
from courier.transport import wire

_REF = "#/components/schemas/{name}"


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": _REF.format(name=name)}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, **_json(_ref("Error"))}


def _q(name: str, kind: str, description: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": {"type": kind, **extra},
    }


_EVENT = {
    "type": "object",
    "description": "A timeline event: a message or a receipt.",
    "required": ["seq", "type"],
    "properties": {
        "seq": {"type": "integer"},
        "type": {"enum": ["message", "receipt"]},
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
            "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
        }
    },
}
_SENT = {
    "type": "object",
    "required": ["id", "seq", "ts", "client_id"],
    "properties": {
        "id": {"type": "string"},
        "seq": {"type": "integer"},
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
_AUTH_ERRORS = {
    "401": _error("No token, an invalid or revoked one, or a session expired by disuse.")
}


def build_openapi() -> dict[str, Any]:
    _, components = msgspec.json.schema_components(
        [wire.Credentials, wire.LoginBody, wire.SendBody, wire.AckBody, wire.ReadBody],
        ref_template=_REF,
    )
    components.update({"Event": _EVENT, "Error": _ERROR, "Sent": _SENT, "Session": _SESSION})
    secured: list[dict[str, list[str]]] = [{"bearer": []}]
    paths: dict[str, Any] = {
        "/v1/users": {
            "post": {
                "summary": "Register a user",
                "security": [],
                "requestBody": {"required": True, **_json(_ref("Credentials"))},
                "responses": {
                    "201": {
                        "description": "Created",
                        **_json({"type": "object", "properties": {"username": {"type": "string"}}}),
                    },
                    "400": _error("Invalid username or password."),
                    "409": _error("username_taken"),
                },
            }
        },
        "/v1/sessions": {
            "post": {
                "summary": "Log in: returns a bearer token",
                "security": [],
                "requestBody": {"required": True, **_json(_ref("LoginBody"))},
                "responses": {
                    "201": {
                        "description": "Logged in",
                        **_json(
                            {
                                "type": "object",
                                "properties": {
                                    "token": {"type": "string"},
                                    "username": {"type": "string"},
                                },
                            }
                        ),
                    },
                    "401": _error("invalid_credentials"),
                },
            },
            "get": {
                "summary": "The caller's sessions, most recently used first (at most 100)",
                "security": secured,
                "responses": {
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
                    **_AUTH_ERRORS,
                },
            },
        },
        "/v1/sessions/current": {
            "delete": {
                "summary": "Log out: the token stops working everywhere",
                "security": secured,
                "responses": {"204": {"description": "Logged out"}, **_AUTH_ERRORS},
            }
        },
        "/v1/sessions/{id}": {
            "delete": {
                "summary": "End one of the caller's sessions: its token stops working and its "
                "live connections close, on every node",
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
                "responses": {
                    "204": {"description": "Ended"},
                    "400": _error("The id is not a session id (16 hexadecimal digits)."),
                    "404": _error("unknown_session: not one of the caller's sessions."),
                    **_AUTH_ERRORS,
                },
            }
        },
        "/v1/messages": {
            "post": {
                "summary": "Send a message; answered once it is durably stored",
                "security": secured,
                "requestBody": {"required": True, **_json(_ref("SendBody"))},
                "responses": {
                    "201": {"description": "Stored", **_json(_ref("Sent"))},
                    "200": {
                        "description": "A retry of the same client_id: the original answer",
                        **_json(_ref("Sent")),
                    },
                    "400": _error("Invalid body."),
                    "404": _error("unknown_user"),
                    "413": _error("body_too_long"),
                    "429": _error("rate_limited"),
                    **_AUTH_ERRORS,
                },
            }
        },
        "/v1/events": {
            "get": {
                "summary": "Pull (wait=0) or long-poll (wait>0) the events after a seq",
                "security": secured,
                "parameters": [
                    _q("after", "integer", "Events with seq > after.", minimum=0, default=0),
                    _q(
                        "wait",
                        "number",
                        "Seconds to hold the request; capped at 60.",
                        minimum=0,
                        maximum=60,
                        default=0,
                    ),
                    _q(
                        "limit",
                        "integer",
                        "At most this many; capped at 1000.",
                        minimum=1,
                        default=100,
                    ),
                ],
                "responses": {
                    "200": {
                        "description": "Events, oldest first",
                        **_json(
                            {
                                "type": "object",
                                "required": ["events", "last_seq", "more"],
                                "properties": {
                                    "events": {"type": "array", "items": _ref("Event")},
                                    "last_seq": {"type": "integer"},
                                    "more": {"type": "boolean"},
                                },
                            }
                        ),
                    },
                    "400": _error("Invalid parameter."),
                    "429": _error("too_many_connections"),
                    **_AUTH_ERRORS,
                },
            }
        },
        "/v1/ack": {
            "post": {
                "summary": "Cumulative delivered-ack of this device",
                "security": secured,
                "requestBody": {"required": True, **_json(_ref("AckBody"))},
                "responses": {
                    "204": {"description": "Acknowledged"},
                    "400": _error("Invalid seq."),
                    **_AUTH_ERRORS,
                },
            }
        },
        "/v1/read": {
            "post": {
                "summary": "Messages from peer up to seq are read",
                "security": secured,
                "requestBody": {"required": True, **_json(_ref("ReadBody"))},
                "responses": {
                    "204": {"description": "Marked read"},
                    "400": _error("Invalid seq."),
                    "404": _error("unknown_user"),
                    **_AUTH_ERRORS,
                },
            }
        },
        "/v1/conversations": {
            "get": {
                "summary": "Conversations, most recent first, with unread counts",
                "security": secured,
                "parameters": [
                    _q(
                        "limit",
                        "integer",
                        "At most this many; capped at 200.",
                        minimum=1,
                        default=50,
                    )
                ],
                "responses": {
                    "200": {
                        "description": "Conversations",
                        **_json(
                            {
                                "type": "object",
                                "properties": {
                                    "conversations": {
                                        "type": "array",
                                        "items": {
                                            "type": "object",
                                            "properties": {
                                                "peer": {"type": "string"},
                                                "last": _ref("Event"),
                                                "unread": {"type": "integer"},
                                            },
                                        },
                                    }
                                },
                            }
                        ),
                    },
                    **_AUTH_ERRORS,
                },
            }
        },
        "/v1/conversations/{peer}/messages": {
            "get": {
                "summary": "A page of one conversation, newest first",
                "security": secured,
                "parameters": [
                    {"name": "peer", "in": "path", "required": True, "schema": {"type": "string"}},
                    _q("before", "integer", "Messages with seq < before.", minimum=1),
                    _q(
                        "limit",
                        "integer",
                        "At most this many; capped at 200.",
                        minimum=1,
                        default=50,
                    ),
                ],
                "responses": {
                    "200": {
                        "description": "Messages",
                        **_json(
                            {
                                "type": "object",
                                "properties": {
                                    "messages": {"type": "array", "items": _ref("Event")},
                                    "next_before": {"type": ["integer", "null"]},
                                },
                            }
                        ),
                    },
                    "404": _error("unknown_user"),
                    **_AUTH_ERRORS,
                },
            }
        },
        "/healthz": {
            "get": {
                "summary": "200 when the server can serve",
                "security": [],
                "responses": {
                    "200": {"description": "Healthy"},
                    "503": {"description": "A backend is down"},
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "security": [],
                "responses": {"200": {"description": "Text exposition format"}},
            }
        },
        "/v1/ws": {
            "get": {
                "summary": "WebSocket upgrade (frames in docs/protocol.md)",
                "security": [],
                "parameters": [
                    _q("token", "string", "Bearer token (or send an auth frame)."),
                    _q("after", "integer", "Replay the timeline after this seq."),
                ],
                "responses": {
                    "101": {"description": "Switching protocols"},
                    "401": _error("Invalid token."),
                    "429": _error("too_many_connections"),
                },
            }
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Courier",
            "version": __version__,
            "description": "Messenger server API (PROTOCOL.md v1).",
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": secured,
    }
