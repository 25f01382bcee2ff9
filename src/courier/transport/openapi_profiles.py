"""The profiles part of the OpenAPI description (PROTOCOL.md, "Profiles and finding people")."""

from __future__ import annotations

from typing import Any

from courier.domain.profiles import (
    DISPLAY_NAME_MAX,
    QUERY_MAX,
    SEARCH_LIMIT_DEFAULT,
    SEARCH_LIMIT_MAX,
)
from courier.transport.openapi_groups import _answers, _body, _error, _json, _ref

_PROFILE = {
    "type": "object",
    "required": ["username", "display_name"],
    "properties": {
        "username": {"type": "string"},
        "display_name": {"type": "string", "maxLength": DISPLAY_NAME_MAX},
    },
}


def profile_components() -> dict[str, Any]:
    return {
        "Profile": _PROFILE,
        "ProfileBody": {
            "type": "object",
            "required": ["display_name"],
            "properties": {
                "display_name": {
                    "type": "string",
                    "maxLength": DISPLAY_NAME_MAX,
                    "description": "Printable text; spaces are tidied; empty clears it.",
                }
            },
        },
    }


def _blocks_paths(secured: list[dict[str, list[str]]]) -> dict[str, Any]:
    name = {"name": "username", "in": "path", "required": True, "schema": {"type": "string"}}
    refused = {
        "400": _error("`bad_request`: the caller's own name."),
        "404": _error("`unknown_user`: no such user."),
    }
    return {
        "/v1/blocks": {
            "get": {
                "operationId": "blocks",
                "summary": "The users the caller has blocked, in name order",
                "security": secured,
                "responses": _answers(
                    {
                        "200": {
                            "description": "Blocked users",
                            **_json(
                                {
                                    "type": "object",
                                    "required": ["blocks"],
                                    "properties": {
                                        "blocks": {"type": "array", "items": {"type": "string"}}
                                    },
                                }
                            ),
                        }
                    }
                ),
            }
        },
        "/v1/blocks/{username}": {
            "put": {
                "operationId": "block",
                "summary": "Block a user: their 1:1 messages, receipts, typing and presence no"
                " longer reach the caller (they are not told); idempotent",
                "security": secured,
                "parameters": [name],
                "responses": _answers(
                    {
                        "204": {"description": "Blocked"},
                        **refused,
                        "409": _error("`too_many_blocks`: the caller has blocked 1000 users."),
                    }
                ),
            },
            "delete": {
                "operationId": "unblock",
                "summary": "Unblock a user; idempotent",
                "security": secured,
                "parameters": [name],
                "responses": _answers({"204": {"description": "Unblocked"}, **refused}),
            },
        },
    }


_PRESENCE = {
    "type": "object",
    "required": ["presence"],
    "properties": {
        "presence": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["user", "online", "last_seen"],
                "properties": {
                    "user": {"type": "string"},
                    "online": {"type": ["boolean", "null"]},
                    "last_seen": {"type": ["integer", "null"]},
                },
            },
        }
    },
}


def _presence_paths(secured: list[dict[str, list[str]]]) -> dict[str, Any]:
    return {
        "/v1/presence": {
            "get": {
                "operationId": "presence",
                "summary": "Whether some users are online, and when they were last seen; null"
                " for anyone who is not a contact of the caller",
                "security": secured,
                "parameters": [
                    {
                        "name": "users",
                        "in": "query",
                        "required": True,
                        "description": "1..100 usernames separated by commas",
                        "schema": {"type": "string", "minLength": 1, "maxLength": 3300},
                    }
                ],
                "responses": _answers(
                    {
                        "200": {"description": "One entry per name asked", **_json(_PRESENCE)},
                        "400": _error("`bad_request`: no names, or more than 100."),
                    }
                ),
            }
        }
    }


def profile_paths(secured: list[dict[str, list[str]]]) -> dict[str, Any]:
    profile = {"description": "The caller's profile", **_json(_ref("Profile"))}
    return {
        **_blocks_paths(secured),
        **_presence_paths(secured),
        "/v1/me": {
            "get": {
                "operationId": "me",
                "summary": "The caller's profile",
                "security": secured,
                "responses": _answers({"200": profile}),
            },
            "patch": {
                "operationId": "updateMe",
                "summary": "Set (or clear, with an empty string) the caller's display name",
                "security": secured,
                "requestBody": _body("ProfileBody"),
                "responses": _answers({"200": profile}, body=True),
            },
        },
        "/v1/users": {
            "get": {
                "operationId": "searchUsers",
                "summary": "Users whose username or display name (or a word of it) starts"
                " with q; case and accents do not matter",
                "security": secured,
                "parameters": [
                    {
                        "name": "q",
                        "in": "query",
                        "required": True,
                        "schema": {"type": "string", "minLength": 1, "maxLength": QUERY_MAX},
                    },
                    {
                        "name": "limit",
                        "in": "query",
                        "required": False,
                        "description": f"A value above {SEARCH_LIMIT_MAX} is served as"
                        f" {SEARCH_LIMIT_MAX}.",
                        "schema": {
                            "type": "integer",
                            "minimum": 1,
                            "default": SEARCH_LIMIT_DEFAULT,
                        },
                    },
                ],
                "responses": _answers(
                    {
                        "200": {
                            "description": "Matching users, best first",
                            **_json(
                                {
                                    "type": "object",
                                    "required": ["users"],
                                    "properties": {
                                        "users": {"type": "array", "items": _ref("Profile")}
                                    },
                                }
                            ),
                        },
                        "400": _error(
                            "`bad_request`: q is missing, longer than"
                            f" {QUERY_MAX} characters or has no letter or digit; or limit is"
                            " not a positive integer."
                        ),
                    }
                ),
            }
        },
    }
