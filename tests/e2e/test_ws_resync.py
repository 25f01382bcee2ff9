"""Envelopes lost by the broker (a node cut off from NATS) are recovered from the store as soon
as the broker says so, without waiting for the next event to reveal the gap."""

from __future__ import annotations

import time

from courier.domain.ops import AppendMessage
from courier.ports import RESYNC, Envelope
from courier.server import Server
from tests.helpers import Api


async def test_a_resync_signal_makes_live_connections_catch_up(api: Api, server: Server) -> None:
    alice, bob = await api.user(), await api.user()
    ws = await api.ws(bob)
    assert (await ws.recv())["type"] == "hello"
    # Stored but never published: what a node sees when NATS dropped the envelope.
    ts = int(time.time() * 1000)
    await server.store.submit(AppendMessage(alice.name, bob.name, "lost", "c-lost", ts, "id-1"))
    server.registry.dispatch(Envelope("", RESYNC))
    event = await ws.recv()
    assert (event["type"], event["body"], event["seq"]) == ("message", "lost", 1)
    # The stream goes on live and gap-free afterwards.
    r = await api.send(alice, bob.name, "next", "c-next")
    assert r.status == 201
    assert (await ws.recv())["seq"] == 2
    await ws.close()


async def test_a_connection_that_cannot_resync_is_closed_not_stuck(
    api: Api, server: Server
) -> None:
    bob = await api.user()
    ws = await api.ws(bob)
    assert (await ws.recv())["type"] == "hello"
    await server.store.close()  # the store is gone: the replay cannot read it
    server.registry.dispatch(Envelope("", RESYNC))
    code, _ = await ws.closed()
    assert code == 1011  # the client reconnects (elsewhere) and resyncs by seq
    await server.store.open()  # so the fixture can stop the server cleanly
