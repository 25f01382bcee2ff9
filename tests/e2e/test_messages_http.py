"""POST /v1/messages: the answer, idempotent retries, limits and ordering."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from tests.e2e.support import assert_error
from tests.helpers import Api, unique

MAX = 4096  # the default body_max_chars

JSON_TYPE = {"Content-Type": "application/json"}


async def test_send_answers_201_with_id_seq_ts_and_client_id(api: Api) -> None:
    alice, bob = await api.user(), await api.user()
    r = await api.send(alice, bob.name, "hello bob", "c-1")
    assert r.status == 201
    assert set(r.body) == {"id", "seq", "ts", "client_id"}
    assert r.body["client_id"] == "c-1"
    assert r.body["seq"] == 1
    assert isinstance(r.body["id"], str) and r.body["id"]
    assert isinstance(r.body["ts"], int) and r.body["ts"] > 1_700_000_000_000


async def test_the_message_lands_in_both_timelines(api: Api) -> None:
    alice, bob = await api.user(), await api.user()
    r = await api.send(alice, bob.name, "hello bob", "c-1")
    [incoming] = await api.timeline(bob)
    [outgoing] = await api.timeline(alice)
    expected = {
        "type": "message",
        "id": r.body["id"],
        "from": alice.name,
        "to": bob.name,
        "body": "hello bob",
        "ts": r.body["ts"],
        "client_id": "c-1",
    }
    assert incoming == {**expected, "seq": 1}
    assert outgoing == {**expected, "seq": r.body["seq"]}


async def test_the_answer_seq_is_the_senders_outgoing_copy(api: Api) -> None:
    alice, bob, carol = await api.user(), await api.user(), await api.user()
    # Give bob's and alice's timelines different heads first.
    for i in range(3):
        await api.send(carol, bob.name, f"from carol {i}", f"k-{i}")
    r = await api.send(alice, bob.name, "to bob", "a-1")
    assert r.body["seq"] == 1
    await api.send(bob, alice.name, "back", "b-1")
    r = await api.send(alice, bob.name, "again", "a-2")
    assert r.body["seq"] == 3
    by_seq = {e["seq"]: e for e in await api.timeline(alice)}
    assert by_seq[3]["client_id"] == "a-2" and by_seq[3]["from"] == alice.name
    bob_line = await api.timeline(bob)
    assert [e["seq"] for e in bob_line] == [1, 2, 3, 4, 5, 6]
    assert bob_line[-1]["body"] == "again"


async def test_a_retry_with_the_same_client_id_is_200_and_stores_nothing(api: Api) -> None:
    alice, bob = await api.user(), await api.user()
    first = await api.send(alice, bob.name, "once", "same")
    assert first.status == 201
    for body in ("once", "a different body"):
        retry = await api.send(alice, bob.name, body, "same")
        assert retry.status == 200
        assert retry.body == first.body
    assert [e["body"] for e in await api.timeline(bob)] == ["once"]
    assert [e["seq"] for e in await api.timeline(alice)] == [first.body["seq"]]


async def test_client_ids_are_per_sender(api: Api) -> None:
    alice, bob = await api.user(), await api.user()
    a = await api.send(alice, bob.name, "from alice", "shared-id")
    b = await api.send(bob, alice.name, "from bob", "shared-id")
    assert a.status == b.status == 201
    assert a.body["id"] != b.body["id"]


@pytest.mark.parametrize("client_id", ["", "x" * 65])
async def test_client_id_of_0_or_65_characters_is_400(api: Api, client_id: str) -> None:
    alice, bob = await api.user(), await api.user()
    assert_error(await api.send(alice, bob.name, "hi", client_id), 400, "bad_request")
    assert await api.timeline(bob) == []


async def test_client_id_of_64_characters_is_accepted(api: Api) -> None:
    alice, bob = await api.user(), await api.user()
    r = await api.send(alice, bob.name, "hi", "é" * 64)
    assert r.status == 201 and r.body["client_id"] == "é" * 64


async def test_an_empty_body_is_400(api: Api) -> None:
    alice, bob = await api.user(), await api.user()
    assert_error(await api.send(alice, bob.name, "", "c-1"), 400, "bad_request")
    assert await api.timeline(bob) == []


@pytest.mark.parametrize("char", ["a", "é", "😀", "中"])
async def test_body_length_is_counted_in_code_points(api: Api, char: str) -> None:
    alice, bob = await api.user(), await api.user()
    r = await api.send(alice, bob.name, char * MAX, "at-max")
    assert r.status == 201, r
    over = await api.send(alice, bob.name, char * (MAX + 1), "over-max")
    assert_error(over, 413, "body_too_long")
    [event] = await api.timeline(bob)
    assert event["body"] == char * MAX


async def test_body_sent_as_raw_utf8_counts_code_points(api: Api) -> None:
    alice, bob = await api.user(), await api.user()
    raw = '{"to": "%s", "body": "%s", "client_id": "%s"}'
    ok = await api.call(
        "POST",
        "/v1/messages",
        user=alice,
        data=(raw % (bob.name, "😀" * MAX, "u-1")).encode(),
        headers=JSON_TYPE,
    )
    assert ok.status == 201, ok
    over = raw % (bob.name, "😀" * (MAX + 1), "u-2")
    r = await api.call("POST", "/v1/messages", user=alice, data=over.encode(), headers=JSON_TYPE)
    assert_error(r, 413, "body_too_long")


async def test_unknown_recipient_is_404(api: Api) -> None:
    alice = await api.user()
    for name in (unique("ghost"), "Not-A-Valid-Name"):
        assert_error(await api.send(alice, name, "hi", "c-" + name), 404, "unknown_user")
    assert await api.timeline(alice) == []


async def test_sending_to_yourself_is_400(api: Api) -> None:
    alice = await api.user()
    assert_error(await api.send(alice, alice.name, "note to self", "c-1"), 400, "bad_request")
    assert await api.timeline(alice) == []


@pytest.mark.parametrize(
    "body",
    [
        {"body": "hi", "client_id": "c"},
        {"to": "bob0", "client_id": "c"},
        {"to": "bob0", "body": "hi"},
        {},
        {"to": 1, "body": "hi", "client_id": "c"},
        {"to": "bob0", "body": 5, "client_id": "c"},
        {"to": "bob0", "body": "hi", "client_id": 7},
        {"to": "bob0", "body": None, "client_id": "c"},
        [],
        "text",
        None,
    ],
    ids=repr,
)
async def test_missing_fields_and_wrong_types_are_400(api: Api, body: Any) -> None:
    alice = await api.user()
    data = json.dumps(body)
    r = await api.call("POST", "/v1/messages", user=alice, data=data, headers=JSON_TYPE)
    assert_error(r, 400, "bad_request")


@pytest.mark.parametrize(
    ("data", "content_type"),
    [
        (b'{"to": "x", "body": "hi", ', "application/json"),
        (b"\xff\xfe\x00", "application/json"),
        (b"", "application/json"),
        (b"[]", "application/json; charset=utf-8"),
    ],
)
async def test_wrong_json_is_400(api: Api, data: bytes, content_type: str) -> None:
    alice = await api.user()
    r = await api.call(
        "POST", "/v1/messages", user=alice, data=data, headers={"Content-Type": content_type}
    )
    assert_error(r, 400, "bad_request")


@pytest.mark.parametrize(
    ("data", "content_type"),
    [
        (b"to=bob&body=hi&client_id=c", "application/x-www-form-urlencoded"),
        (b'{"to": "bob", "body": "hi", "client_id": "c"}', "text/plain"),
        (b"\xff\xfe\x00", "application/octet-stream"),
        (b'{"to": "bob", "body": "hi", "client_id": "c"}', None),
    ],
)
async def test_a_body_not_declared_as_json_is_415(
    api: Api, data: bytes, content_type: str | None
) -> None:
    """A cross-site form (urlencoded, text/plain) can never post a JSON request."""
    alice, bob = await api.user(), await api.user()
    headers = {} if content_type is None else {"Content-Type": content_type}
    r = await api.call("POST", "/v1/messages", user=alice, data=data, headers=headers)
    assert_error(r, 415, "unsupported_media_type")
    assert (await api.events(bob, 0)).body["events"] == []


async def test_a_70_kib_request_is_413_payload_too_large(api: Api) -> None:
    alice, bob = await api.user(), await api.user()
    r = await api.send(alice, bob.name, "x" * (70 * 1024), "big")
    assert_error(r, 413, "payload_too_large")
    assert await api.timeline(bob) == []


async def test_http_sends_awaited_in_order_keep_their_order_in_both_timelines(api: Api) -> None:
    alice, bob = await api.user(), await api.user()
    seqs = []
    for i in range(30):
        r = await api.send(alice, bob.name, f"m{i:02d}", f"o-{i}")
        assert r.status == 201
        seqs.append(r.body["seq"])
    assert seqs == sorted(seqs) == list(range(1, 31))
    expected = [f"m{i:02d}" for i in range(30)]
    for user in (alice, bob):
        line = await api.timeline(user)
        assert [e["body"] for e in line] == expected
        assert [e["seq"] for e in line] == list(range(1, 31))
    ids = [e["id"] for e in await api.timeline(bob)]
    assert ids == sorted(ids), "message ids are time-ordered"


async def test_concurrent_retries_of_one_client_id_store_one_message(api: Api) -> None:
    alice, bob = await api.user(), await api.user()
    replies = await asyncio.gather(
        *[api.send(alice, bob.name, "only once", "racy") for _ in range(8)]
    )
    assert sorted(r.status for r in replies) == [200] * 7 + [201]
    assert len({(r.body["id"], r.body["seq"], r.body["ts"]) for r in replies}) == 1
    assert [e["body"] for e in await api.timeline(bob)] == ["only once"]
    assert len(await api.timeline(alice)) == 1


def request_of_size(to: str, size: int, client_id: str) -> bytes:
    """A send request body of exactly `size` bytes."""
    empty = json.dumps({"to": to, "body": "", "client_id": client_id})
    text = json.dumps({"to": to, "body": "x" * (size - len(empty)), "client_id": client_id})
    assert len(text.encode()) == size
    return text.encode()


@pytest.mark.parametrize("settings_overrides", [{"body_max_chars": 100_000}], ids=["settings"])
async def test_a_request_of_exactly_64_kib_is_accepted_and_one_byte_more_is_413(api: Api) -> None:
    alice, bob = await api.user(), await api.user()
    exact = request_of_size(bob.name, 64 * 1024, "exact")
    ok = await api.call("POST", "/v1/messages", user=alice, data=exact, headers=JSON_TYPE)
    assert ok.status == 201, ok
    over = request_of_size(bob.name, 64 * 1024 + 1, "over")
    r = await api.call("POST", "/v1/messages", user=alice, data=over, headers=JSON_TYPE)
    assert_error(r, 413, "payload_too_large")
    assert [e["client_id"] for e in await api.timeline(bob)] == ["exact"]
