"""Delivered and read receipts: acks, read markers and their events in the sender's timeline."""

from __future__ import annotations

from typing import Any

from tests.e2e.support import assert_error, connect, recv_events
from tests.helpers import Api, User, unique


async def ack(api: Api, user: User, seq: Any) -> int:
    r = await api.call("POST", "/v1/ack", user=user, json_body={"seq": seq})
    return r.status


async def read(api: Api, user: User, peer: str, seq: Any) -> int:
    r = await api.call("POST", "/v1/read", user=user, json_body={"peer": peer, "seq": seq})
    return r.status


async def receipts(api: Api, user: User) -> list[dict[str, Any]]:
    return [e for e in await api.timeline(user) if e["type"] == "receipt"]


async def setup_offset(api: Api) -> tuple[User, User, list[int]]:
    """alice sends bob 3 messages after carol sent him 2: bob's seqs 3..5 are alice's 1..3."""
    alice, bob, carol = await api.user(), await api.user(), await api.user()
    for i in range(2):
        await api.send(carol, bob.name, f"carol {i}", f"k{i}")
    sent = [(await api.send(alice, bob.name, f"alice {i}", f"a{i}")).body["seq"] for i in range(3)]
    assert sent == [1, 2, 3]
    return alice, bob, sent


async def test_an_ack_gives_the_sender_one_delivered_receipt_with_its_own_seq(api: Api) -> None:
    alice, bob, _ = await setup_offset(api)
    assert await ack(api, bob, 4) == 204  # bob's seq 4 is alice's message at her seq 2
    [receipt] = await receipts(api, alice)
    assert receipt["status"] == "delivered"
    assert receipt["peer"] == bob.name
    assert receipt["up_to"] == 2
    assert receipt["seq"] == 4  # after alice's three outgoing copies
    assert set(receipt) == {"seq", "type", "status", "peer", "up_to", "ts"}
    assert await receipts(api, bob) == []


async def test_acks_are_cumulative(api: Api) -> None:
    alice, bob, _ = await setup_offset(api)
    assert await ack(api, bob, 4) == 204
    assert await ack(api, bob, 3) == 204  # behind the watermark: nothing new
    assert await ack(api, bob, 4) == 204  # the same again: nothing new
    assert [r["up_to"] for r in await receipts(api, alice)] == [2]
    assert await ack(api, bob, 5) == 204  # covers more
    assert [r["up_to"] for r in await receipts(api, alice)] == [2, 3]


async def test_an_ack_covering_only_other_senders_gives_alice_nothing(api: Api) -> None:
    alice, bob, _ = await setup_offset(api)
    assert await ack(api, bob, 2) == 204  # carol's messages only
    assert await receipts(api, alice) == []
    assert await ack(api, bob, 0) == 204


async def test_one_ack_gives_each_sender_a_receipt_in_their_own_seqs(api: Api) -> None:
    alice, bob, _ = await setup_offset(api)
    carol_line = [e for e in await api.timeline(bob) if e["from"] != alice.name]
    carol = carol_line[0]["from"]
    assert await ack(api, bob, 5) == 204
    [to_alice] = await receipts(api, alice)
    assert (to_alice["peer"], to_alice["up_to"]) == (bob.name, 3)
    carol_user = await api.login(carol)
    [to_carol] = await receipts(api, carol_user)
    assert (to_carol["peer"], to_carol["up_to"], to_carol["seq"]) == (bob.name, 2, 3)


async def test_acks_from_two_devices_do_not_duplicate_receipts(api: Api) -> None:
    alice, bob, _ = await setup_offset(api)
    phone = await api.login(bob.name)
    assert await ack(api, bob, 5) == 204
    assert await ack(api, phone, 5) == 204
    assert await ack(api, phone, 4) == 204
    assert [r["up_to"] for r in await receipts(api, alice)] == [3]


async def test_read_gives_the_sender_a_read_receipt(api: Api) -> None:
    alice, bob, _ = await setup_offset(api)
    assert await read(api, bob, alice.name, 4) == 204
    [receipt] = await receipts(api, alice)
    assert receipt["status"] == "read" and receipt["peer"] == bob.name
    assert receipt["up_to"] == 2
    assert await read(api, bob, alice.name, 3) == 204  # cumulative: nothing new
    assert await read(api, bob, alice.name, 5) == 204
    assert [(r["status"], r["up_to"]) for r in await receipts(api, alice)] == [
        ("read", 2),
        ("read", 3),
    ]


async def test_read_implies_delivered(api: Api) -> None:
    alice, bob, _ = await setup_offset(api)
    assert await read(api, bob, alice.name, 5) == 204
    assert await ack(api, bob, 4) == 204  # would be delivered up to 2, already covered
    assert [(r["status"], r["up_to"]) for r in await receipts(api, alice)] == [("read", 3)]


async def test_reading_a_peer_never_heard_from_is_accepted_without_receipt(api: Api) -> None:
    alice, bob, _ = await setup_offset(api)
    dave = await api.user()
    assert await read(api, bob, dave.name, 5) == 204
    assert await receipts(api, dave) == []
    assert await receipts(api, alice) == []


async def test_read_of_an_unknown_peer_is_404(api: Api) -> None:
    bob = await api.user()
    for peer in (unique("ghost"), "NOT VALID"):
        r = await api.call("POST", "/v1/read", user=bob, json_body={"peer": peer, "seq": 0})
        assert_error(r, 404, "unknown_user")


async def test_ack_and_read_beyond_the_head_are_400(api: Api) -> None:
    alice, bob, _ = await setup_offset(api)
    r = await api.call("POST", "/v1/ack", user=bob, json_body={"seq": 6})
    assert_error(r, 400, "bad_request")
    r = await api.call("POST", "/v1/read", user=bob, json_body={"peer": alice.name, "seq": 6})
    assert_error(r, 400, "bad_request")
    assert await receipts(api, alice) == []


async def test_a_seq_written_as_a_whole_float_is_that_integer(api: Api) -> None:
    """JSON Schema (and so the OpenAPI description) counts 4.0 as the integer 4."""
    alice, bob, _ = await setup_offset(api)
    assert await ack(api, bob, 4.0) == 204
    assert await read(api, bob, alice.name, 5.0) == 204
    assert [(r["status"], r["up_to"]) for r in await receipts(api, alice)] == [
        ("delivered", 2),
        ("read", 3),
    ]
    r = await api.call("POST", "/v1/ack", user=bob, json_body={"seq": 4.5})
    assert_error(r, 400, "bad_request")


async def test_bad_ack_and_read_bodies_are_400(api: Api) -> None:
    alice, bob, _ = await setup_offset(api)
    acks: list[Any] = [{"seq": -1}, {"seq": "3"}, {"seq": 1.5}, {}, {"seq": None}, [3]]
    for body in acks:
        r = await api.call("POST", "/v1/ack", user=bob, json_body=body)
        assert_error(r, 400, "bad_request")
    reads: list[Any] = [{"peer": alice.name}, {"seq": 1}, {"peer": alice.name, "seq": -2}]
    for body in reads:
        r = await api.call("POST", "/v1/read", user=bob, json_body=body)
        assert_error(r, 400, "bad_request")


async def test_receipts_are_pushed_live_to_the_sender(api: Api) -> None:
    alice, bob, _ = await setup_offset(api)
    ws, hello = await connect(api, alice)
    assert hello["last_seq"] == 3
    assert await ack(api, bob, 5) == 204
    [delivered] = await recv_events(ws, 1)
    assert delivered["type"] == "receipt" and delivered["status"] == "delivered"
    assert delivered["seq"] == 4 and delivered["up_to"] == 3 and delivered["peer"] == bob.name
    assert await read(api, bob, alice.name, 4) == 204
    [seen] = await recv_events(ws, 1)
    assert (seen["status"], seen["seq"], seen["up_to"]) == ("read", 5, 2)
    await ws.close()


async def test_ws_ack_and_read_frames_produce_receipts(api: Api) -> None:
    alice, bob, _ = await setup_offset(api)
    sender, _ = await connect(api, alice)
    reader, _ = await connect(api, bob)
    await reader.send({"type": "ack", "seq": 5})
    [delivered] = await recv_events(sender, 1)
    assert (delivered["status"], delivered["up_to"]) == ("delivered", 3)
    await reader.send({"type": "read", "peer": alice.name, "seq": 3})
    [seen] = await recv_events(sender, 1)
    assert (seen["status"], seen["up_to"]) == ("read", 1)
    await sender.close()
    await reader.close()
