"""The delivery engine, driven directly: no HTTP, no WebSocket."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from courier.domain.errors import CourierError
from courier.ports import TYPING
from tests.service.conftest import Stack, build_stack


def body(data: bytes) -> dict[str, object]:
    parsed: dict[str, object] = json.loads(data)
    return parsed


async def test_send_appends_to_both_timelines_recipient_first(stack: Stack) -> None:
    alice, _ = await stack.user("alice"), await stack.user("bob")
    result = await stack.delivery.send(alice, "bob", "hello", "c1")
    assert result.seq == 1 and not result.duplicate
    ((bob_seq, bob_event),) = await stack.store.events_after("bob", 0, 10)
    ((alice_seq, alice_event),) = await stack.store.events_after("alice", 0, 10)
    assert body(bob_event) == body(alice_event) | {"seq": bob_seq}
    assert body(bob_event)["from"] == "alice" and body(bob_event)["to"] == "bob"
    assert body(alice_event)["id"] == result.id and alice_seq == result.seq


async def test_push_reaches_recipient_and_senders_other_devices_only(stack: Stack) -> None:
    alice, bob = await stack.user("alice"), await stack.user("bob")
    phone, laptop = stack.device(alice, "phone"), stack.device(alice, "laptop")
    bob_dev = stack.device(bob, "b")
    await stack.delivery.send(alice, "bob", "hi", "c1", skip="phone")
    assert [e.seq for e in bob_dev.received] == [1]
    # Both of alice's devices are handed the outgoing copy; the envelope names the sending
    # connection so that one answers with `sent` instead of the event.
    assert [e.skip for e in phone.received] == ["phone"]
    assert [e.skip for e in laptop.received] == ["phone"]


async def test_retry_with_same_client_id_returns_original_and_stores_nothing(stack: Stack) -> None:
    alice, _ = await stack.user("alice"), await stack.user("bob")
    first = await stack.delivery.send(alice, "bob", "hi", "same")
    again = await stack.delivery.send(alice, "bob", "hi (edited)", "same")
    assert again.duplicate and (again.id, again.seq, again.ts) == (first.id, first.seq, first.ts)
    assert len(await stack.store.events_after("bob", 0, 10)) == 1
    assert len(await stack.store.events_after("alice", 0, 10)) == 1


async def test_pipelined_duplicates_in_one_batch_are_stored_once(stack: Stack) -> None:
    alice, _ = await stack.user("alice"), await stack.user("bob")
    futures = [stack.delivery.send(alice, "bob", f"m{i % 3}", f"c{i % 3}") for i in range(9)]
    results = await asyncio.gather(*futures)
    assert sorted({r.seq for r in results}) == [1, 2, 3]
    assert sum(not r.duplicate for r in results) == 3
    assert len(await stack.store.events_after("bob", 0, 100)) == 3


async def test_pipelined_sends_keep_submission_order(stack: Stack) -> None:
    alice, _ = await stack.user("alice"), await stack.user("bob")
    futures = [stack.delivery.send(alice, "bob", str(i), f"c{i}") for i in range(200)]
    await asyncio.gather(*futures)
    rows = await stack.store.events_after("bob", 0, 1000)
    assert [body(data)["body"] for _, data in rows] == [str(i) for i in range(200)]
    assert [seq for seq, _ in rows] == list(range(1, 201))


async def test_unknown_recipient_and_self_send_are_refused(stack: Stack) -> None:
    alice = await stack.user("alice")
    with pytest.raises(CourierError) as info:
        await stack.delivery.send(alice, "nobody", "hi", "c1")
    assert info.value.code == "unknown_user" and info.value.status == 404
    with pytest.raises(CourierError) as info:
        await stack.delivery.send(alice, "alice", "hi", "c2")
    assert info.value.status == 400
    assert await stack.store.head("alice") == 0


async def test_body_and_client_id_bounds_count_code_points(tmp_path: Path, store_kind: str) -> None:
    s = await build_stack(tmp_path / "s", store_kind, body_max_chars=5)
    try:
        alice, _ = await s.user("alice"), await s.user("bob")
        assert (await s.delivery.send(alice, "bob", "ééééé", "c1")).seq == 1
        with pytest.raises(CourierError) as info:
            s.delivery.send(alice, "bob", "éééééé", "c2")
        assert info.value.status == 413
        with pytest.raises(CourierError):
            s.delivery.send(alice, "bob", "", "c3")
        with pytest.raises(CourierError):
            s.delivery.send(alice, "bob", "x", "c" * 65)
    finally:
        await s.store.close()


async def test_send_rate_limit_is_a_token_bucket_per_user(tmp_path: Path, store_kind: str) -> None:
    s = await build_stack(tmp_path / "s", store_kind, send_rate=0.001, send_burst=3)
    try:
        alice, _ = await s.user("alice"), await s.user("bob")
        for i in range(3):
            await s.delivery.send(alice, "bob", "x", f"c{i}")
        with pytest.raises(CourierError) as info:
            s.delivery.send(alice, "bob", "x", "c9")
        assert info.value.code == "rate_limited" and info.value.status == 429
    finally:
        await s.store.close()


async def test_ack_emits_one_cumulative_delivered_receipt_per_sender(stack: Stack) -> None:
    alice, bob, carol = (
        await stack.user("alice"),
        await stack.user("bob"),
        await stack.user("carol"),
    )
    a1 = await stack.delivery.send(alice, "bob", "1", "a1")
    await stack.delivery.send(carol, "bob", "2", "c1")
    a2 = await stack.delivery.send(alice, "bob", "3", "a2")
    await stack.delivery.ack(bob, 3)
    receipts = [body(d) for _, d in await stack.store.events_after("alice", a2.seq, 10)]
    assert receipts == [
        {
            "seq": a2.seq + 1,
            "type": "receipt",
            "status": "delivered",
            "peer": "bob",
            "up_to": a2.seq,
            "ts": receipts[0]["ts"],
        }
    ]
    assert a1.seq < a2.seq
    carol_events = [body(d) for _, d in await stack.store.events_after("carol", 0, 10)]
    assert [e["type"] for e in carol_events] == ["message", "receipt"]
    # Acking again, or less, adds nothing.
    await stack.delivery.ack(bob, 3)
    await stack.delivery.ack(bob, 1)
    assert await stack.store.head("alice") == a2.seq + 1


async def test_acks_from_two_devices_do_not_duplicate_receipts(stack: Stack) -> None:
    alice, bob = await stack.user("alice"), await stack.user("bob")
    bob_tablet = await stack.accounts.authenticate(await stack.accounts.login("bob", "password1"))
    await stack.delivery.send(alice, "bob", "1", "a1")
    await asyncio.gather(stack.delivery.ack(bob, 1), stack.delivery.ack(bob_tablet, 1))
    events = [body(d) for _, d in await stack.store.events_after("alice", 0, 10)]
    assert [e["type"] for e in events] == ["message", "receipt"]


async def test_read_marker_emits_read_receipt_and_clears_unread(stack: Stack) -> None:
    alice, bob = await stack.user("alice"), await stack.user("bob")
    for i in range(3):
        await stack.delivery.send(alice, "bob", str(i), f"a{i}")
    (conv,) = await stack.delivery.conversations(bob, 10)
    assert conv.peer == "alice" and conv.unread == 3
    await stack.delivery.read(bob, "alice", 2)
    (conv,) = await stack.delivery.conversations(bob, 10)
    assert conv.unread == 1
    last = body((await stack.store.events_after("alice", 3, 10))[-1][1])
    assert last["status"] == "read" and last["up_to"] == 2 and last["peer"] == "bob"
    # Read implies delivered: a later ack of the same range adds no delivered receipt.
    head = await stack.store.head("alice")
    await stack.delivery.ack(bob, 2)
    assert await stack.store.head("alice") == head


async def test_conversations_are_most_recent_first(stack: Stack) -> None:
    alice = await stack.user("alice")
    for name in ("bob", "carol", "dave"):
        await stack.user(name)
    for peer in ("bob", "carol", "dave", "bob"):
        await stack.delivery.send(alice, peer, "x", f"to-{peer}-{await stack.store.head('alice')}")
    assert [c.peer for c in await stack.delivery.conversations(alice, 10)] == [
        "bob",
        "dave",
        "carol",
    ]
    assert [c.peer for c in await stack.delivery.conversations(alice, 2)] == ["bob", "dave"]


async def test_history_pages_back_with_a_seq_cursor(stack: Stack) -> None:
    alice, bob = await stack.user("alice"), await stack.user("bob")
    await stack.user("carol")
    for i in range(25):
        await stack.delivery.send(alice, "bob", str(i), f"a{i}")
        await stack.delivery.send(alice, "carol", "noise", f"n{i}")
    seen: list[str] = []
    before = None
    while True:
        page, before = await stack.delivery.history(bob, "alice", before, 10)
        seen.extend(str(body(d)["body"]) for _, d in page)
        if before is None:
            break
    assert seen == [str(i) for i in reversed(range(25))]


async def test_typing_is_forwarded_and_never_stored(stack: Stack) -> None:
    alice, bob = await stack.user("alice"), await stack.user("bob")
    dev = stack.device(bob, "b")
    await stack.delivery.typing(alice, "bob")
    assert [(e.kind, body(e.data)) for e in dev.received] == [
        (TYPING, {"type": "typing", "from": "alice"})
    ]
    assert await stack.store.head("bob") == 0
    with pytest.raises(CourierError):
        await stack.delivery.typing(alice, "nobody")


async def test_logout_revokes_token_and_live_connections(stack: Stack) -> None:
    alice = await stack.user("alice")
    dev = stack.device(alice, "a")
    await stack.accounts.logout(alice)
    assert dev.revoked
    with pytest.raises(CourierError) as info:
        await stack.accounts.authenticate("not-the-token")
    assert info.value.status == 401


async def test_connection_cap_per_user(tmp_path: Path, store_kind: str) -> None:
    s = await build_stack(tmp_path / "s", store_kind, max_connections=2)
    try:
        alice = await s.user("alice")
        s.device(alice, "1")
        s.device(alice, "2")
        with pytest.raises(CourierError) as info:
            s.device(alice, "3")
        assert info.value.code == "too_many_connections"
    finally:
        await s.store.close()


async def test_sent_survives_a_restart(tmp_path: Path, store_kind: str) -> None:
    s = await build_stack(tmp_path / "s", store_kind)
    alice, _ = await s.user("alice"), await s.user("bob")
    results = await asyncio.gather(
        *(s.delivery.send(alice, "bob", "x", f"c{i}") for i in range(50))
    )
    await s.store.close()
    s = await build_stack(tmp_path / "s", store_kind)
    try:
        assert [seq for seq, _ in await s.store.events_after("alice", 0, 100)] == [
            r.seq for r in results
        ]
        retry = await s.delivery.send(alice, "bob", "x", "c7")
        assert retry.duplicate and retry.seq == results[7].seq
        assert await s.store.head("bob") == 50
    finally:
        await s.store.close()


async def test_events_pull_reports_more(stack: Stack) -> None:
    alice, bob = await stack.user("alice"), await stack.user("bob")
    for i in range(5):
        await stack.delivery.send(alice, "bob", "x", f"c{i}")
    rows, more = await stack.delivery.events(bob, 0, 3)
    assert [s for s, _ in rows] == [1, 2, 3] and more
    rows, more = await stack.delivery.events(bob, 3, 3)
    assert [s for s, _ in rows] == [4, 5] and not more
