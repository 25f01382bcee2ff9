"""The groups part of the OpenAPI description (PROTOCOL.md, "Groups")."""

from __future__ import annotations

from typing import Any

import msgspec

from courier.domain.groups import GROUP_ID_MAX, NAME_MAX
from courier.transport import wire

_REF = "#/components/schemas/{name}"
JSON = "application/json"
_SEQ_MAX = 1 << 62


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": _REF.format(name=name)}


def _use(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/responses/{name}"}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {JSON: {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, **_json(_ref("Error"))}


_GROUP = {
    "type": "object",
    "required": ["id", "name", "members", "created_ts"],
    "properties": {
        "id": {"type": "string", "maxLength": GROUP_ID_MAX},
        "name": {"type": "string", "minLength": 1, "maxLength": NAME_MAX},
        "members": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["username", "role"],
                "properties": {
                    "username": {"type": "string"},
                    "role": {"type": "string", "enum": ["owner", "admin", "member"]},
                },
            },
        },
        "created_ts": {"type": "integer"},
    },
}
_UNKNOWN_GROUP = _error("`unknown_group`: the caller is not a member of such a group.")
_FORBIDDEN = _error("`forbidden`: the caller's role does not allow this change.")
_BODY_400 = _error(
    "`bad_request`: the body is not JSON, or a field is missing, of the wrong type or out of"
    " its bounds (a name of 1..64 characters, a role of owner, admin or member)."
)


def group_components() -> dict[str, Any]:
    _, components = msgspec.json.schema_components(
        [wire.CreateGroupBody, wire.RenameGroupBody, wire.AddMemberBody], ref_template=_REF
    )
    for name in ("CreateGroupBody", "RenameGroupBody"):
        components[name]["properties"]["name"] = {
            "type": "string",
            "minLength": 1,
            "maxLength": NAME_MAX,
        }
    components["AddMemberBody"]["properties"]["role"] = {
        "type": "string",
        "enum": ["owner", "admin", "member"],
        "default": "member",
    }
    components["Group"] = _GROUP
    return components


def _answers(own: dict[str, Any], *, body: bool = False) -> dict[str, Any]:
    shared = {
        "401": _use("Unauthorized"),
        "429": _use("RateLimited"),
        "431": _use("HeadersTooLarge"),
        "503": _use("Unavailable"),
    }
    if body:
        shared.update(
            {
                "400": _BODY_400,
                "408": _use("RequestTimeout"),
                "413": _use("PayloadTooLarge"),
                "415": _use("UnsupportedMediaType"),
            }
        )
    return {**shared, **own}


def _path_id() -> dict[str, Any]:
    return {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}


def _body(name: str) -> dict[str, Any]:
    return {"required": True, **_json(_ref(name))}


def group_paths(secured: list[dict[str, list[str]]], limit: dict[str, Any]) -> dict[str, Any]:
    group = {"description": "The group", **_json(_GROUP)}
    return {
        "/v1/groups": {
            "post": {
                "operationId": "createGroup",
                "summary": "Create a group; the caller is its owner",
                "security": secured,
                "requestBody": _body("CreateGroupBody"),
                "responses": _answers(
                    {
                        "201": {"description": "Created", **_json(_GROUP)},
                        "404": _error("`unknown_user`: a member named does not exist."),
                        "409": _error(
                            "`group_full`: more members than a group may have; or"
                            " `too_many_groups`: a member named is in as many groups as allowed."
                        ),
                    },
                    body=True,
                ),
            },
            "get": {
                "operationId": "groups",
                "summary": "The caller's groups",
                "security": secured,
                "responses": _answers(
                    {
                        "200": {
                            "description": "Groups",
                            **_json(
                                {
                                    "type": "object",
                                    "required": ["groups"],
                                    "properties": {"groups": {"type": "array", "items": _GROUP}},
                                }
                            ),
                        }
                    }
                ),
            },
        },
        "/v1/groups/{id}": {
            "get": {
                "operationId": "group",
                "summary": "One of the caller's groups",
                "security": secured,
                "parameters": [_path_id()],
                "responses": _answers({"200": group, "404": _UNKNOWN_GROUP}),
            },
            "patch": {
                "operationId": "renameGroup",
                "summary": "Rename a group (owner or admin)",
                "security": secured,
                "parameters": [_path_id()],
                "requestBody": _body("RenameGroupBody"),
                "responses": _answers(
                    {"200": group, "403": _FORBIDDEN, "404": _UNKNOWN_GROUP}, body=True
                ),
            },
        },
        "/v1/groups/{id}/members": {
            "post": {
                "operationId": "addMember",
                "summary": "Add a member, or change a member's role (owner or admin)",
                "security": secured,
                "parameters": [_path_id()],
                "requestBody": _body("AddMemberBody"),
                "responses": _answers(
                    {
                        "200": group,
                        "403": _FORBIDDEN,
                        "404": _error(
                            "`unknown_group`: not a member of such a group; or"
                            " `unknown_user`: no such user."
                        ),
                        "409": _error(
                            "`group_full`: the group has all the members it may; or"
                            " `too_many_groups`: the user is in as many groups as allowed."
                        ),
                    },
                    body=True,
                ),
            }
        },
        "/v1/groups/{id}/members/{username}": {
            "delete": {
                "operationId": "removeMember",
                "summary": "Remove a member, or leave (the caller's own name)",
                "security": secured,
                "parameters": [
                    _path_id(),
                    {
                        "name": "username",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string"},
                    },
                ],
                "responses": _answers(
                    {
                        "204": {"description": "Removed"},
                        "403": _FORBIDDEN,
                        "404": _error(
                            "`unknown_group`: not a member of such a group; or"
                            " `unknown_member`: no such member."
                        ),
                    }
                ),
            }
        },
        "/v1/groups/{id}/messages": {
            "get": {
                "operationId": "groupHistory",
                "summary": "A page of a group's conversation as the caller's timeline holds it",
                "security": secured,
                "parameters": [
                    _path_id(),
                    {
                        "name": "before",
                        "in": "query",
                        "required": False,
                        "description": "Entries with seq < before (the previous `next_before`).",
                        "schema": {"type": "integer", "minimum": 1, "maximum": _SEQ_MAX},
                    },
                    limit,
                ],
                "responses": _answers(
                    {
                        "200": {
                            "description": "Messages and membership events",
                            **_json(
                                {
                                    "type": "object",
                                    "required": ["messages", "next_before"],
                                    "properties": {
                                        "messages": {"type": "array", "items": _ref("Event")},
                                        "next_before": {
                                            "type": ["integer", "null"],
                                            "minimum": 1,
                                        },
                                    },
                                }
                            ),
                        },
                        "400": _use("BadQuery"),
                        "404": _UNKNOWN_GROUP,
                    }
                ),
            }
        },
    }
