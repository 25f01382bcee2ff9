"""The web app on bad networks: WebSockets blocked (long-poll takes over), an answer lost on
the way back (the retry with the same client_id stores nothing twice), and a server killed
mid-chat (the outbox delivers what was pending exactly once, even from a reopened page)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest
from web_harness import (
    log_in,
    message_texts,
    new_username,
    open_chat,
    screenshot,
    send,
    wait_connected,
    wait_for_message,
    wait_for_status,
    wait_until,
)

if TYPE_CHECKING:
    from playwright.sync_api import BrowserContext, Route, WebSocketRoute
    from web_harness import CourierServer, NewContext

RECONNECT_MS = 30000

# Replaces the browser's WebSocket with one that cannot be constructed, as some proxies and
# corporate networks make it.
NO_WEBSOCKET = """
window.WebSocket = class {
  constructor() { throw new DOMException("WebSockets are blocked here", "SecurityError"); }
};
"""


def block_websockets(context: BrowserContext, how: str) -> None:
    if how == "refused":
        # page.route() does not see WebSocket upgrades; route_web_socket() does. A handler that
        # never connects to the server and closes at once: the socket dies before `hello`.
        def refuse(ws: WebSocketRoute) -> None:
            ws.close()

        context.route_web_socket("**/v1/ws*", refuse)
    else:
        context.add_init_script(NO_WEBSOCKET)


@pytest.mark.parametrize("how", ["refused", "missing"])
def test_long_poll_takes_over_when_websockets_are_blocked(
    courier_server: CourierServer, new_context: NewContext, how: str
) -> None:
    alice, bob = new_username("alice"), new_username("bob")
    courier_server.register(alice)
    courier_server.register(bob)
    alice_context = new_context()
    block_websockets(alice_context, how)
    alice_page = alice_context.new_page()
    opened: list[str] = []
    alice_page.on("websocket", lambda ws: opened.append(ws.url))
    bob_page = new_context().new_page()
    log_in(bob_page, courier_server.url, bob)

    log_in(alice_page, courier_server.url, alice)
    wait_connected(alice_page, transport="poll")
    assert "long-poll" in (alice_page.text_content("#conn-text") or "")

    # Sends (POST /v1/messages), live delivery (GET /v1/events), acks and reads (POST) all
    # work without a WebSocket.
    open_chat(alice_page, bob)
    send(alice_page, "Sent over plain HTTP")
    bob_page.click(f'#conversations li[data-peer="{alice}"] a')
    wait_for_message(bob_page, "Sent over plain HTTP")
    wait_for_status(alice_page, "Sent over plain HTTP", "read")
    send(bob_page, "Received over long-poll")
    wait_for_message(alice_page, "Received over long-poll")
    wait_for_status(bob_page, "Received over long-poll", "read")
    assert message_texts(alice_page) == ["Sent over plain HTTP", "Received over long-poll"]
    if how == "missing":
        assert opened == []
    screenshot(alice_page, f"long-poll-ws-{how}")


def lose_first_answer_over_http(context: BrowserContext, tries: list[str]) -> None:
    """The first POST /v1/messages reaches the server, but its answer never comes back."""

    def handle(route: Route) -> None:
        tries.append(json.loads(route.request.post_data or "{}").get("client_id", ""))
        if len(tries) == 1:
            route.fetch()
            route.abort("connectionreset")
        else:
            route.continue_()

    block_websockets(context, "missing")
    context.route("**/v1/messages", handle)


def lose_first_answer_over_ws(context: BrowserContext, tries: list[str]) -> None:
    """The link drops right after the first `send` frame went out, before its `sent`."""

    def relay(ws: WebSocketRoute) -> None:
        upstream = ws.connect_to_server()

        def from_page(message: str | bytes) -> None:
            frame = json.loads(message) if isinstance(message, str) else {}
            upstream.send(message)
            if frame.get("type") == "send":
                tries.append(frame.get("client_id", ""))
                if len(tries) == 1:
                    ws.close()

        ws.on_message(from_page)

    context.route_web_socket("**/v1/ws*", relay)


@pytest.mark.parametrize("transport", ["ws", "http"])
def test_lost_answer_never_duplicates(
    courier_server: CourierServer, new_context: NewContext, transport: str
) -> None:
    alice, bob = new_username("alice"), new_username("bob")
    courier_server.register(alice)
    bob_token = courier_server.register(bob)
    alice_context = new_context()
    tries: list[str] = []
    if transport == "ws":
        lose_first_answer_over_ws(alice_context, tries)
    else:
        lose_first_answer_over_http(alice_context, tries)
    alice_page = alice_context.new_page()
    bob_page = new_context().new_page()
    log_in(bob_page, courier_server.url, bob)
    log_in(alice_page, courier_server.url, alice)

    open_chat(alice_page, bob)
    send(alice_page, "Only once, please")
    wait_for_status(alice_page, "Only once, please", "delivered", timeout_ms=RECONNECT_MS)
    send(alice_page, "And this one after it")
    bob_page.click(f'#conversations li[data-peer="{alice}"] a')
    wait_for_message(bob_page, "And this one after it")

    # Over the WebSocket the app re-sends on reconnect; over HTTP it re-sends after the
    # failure unless the long-poll already brought the stored copy back. Either way every
    # try carried the same client_id and the server stored the message once.
    if transport == "ws":
        assert tries.count(tries[0]) >= 2, "re-sent after the reconnect"
    assert len(set(tries)) == 2, "each message keeps its client_id across tries"
    expected = ["Only once, please", "And this one after it"]
    assert courier_server.bodies(bob_token, alice) == expected
    assert message_texts(bob_page) == expected
    assert message_texts(alice_page) == expected
    screenshot(alice_page, f"lost-answer-{transport}")


def test_outbox_survives_server_restart_exactly_once(
    courier_server: CourierServer, new_context: NewContext
) -> None:
    alice, bob = new_username("alice"), new_username("bob")
    courier_server.register(alice)
    bob_token = courier_server.register(bob)
    alice_context = new_context()
    alice_page = alice_context.new_page()
    bob_page = new_context().new_page()
    log_in(alice_page, courier_server.url, alice)
    log_in(bob_page, courier_server.url, bob)
    open_chat(alice_page, bob)
    open_chat(bob_page, alice)
    send(alice_page, "before the crash")
    wait_for_message(bob_page, "before the crash")

    # Crash 1: the page stays open. What is typed meanwhile waits in the outbox, then goes
    # out once the app has reconnected by itself.
    courier_server.kill()
    alice_page.wait_for_selector('#conn-status:not([data-state="connected"])')
    send(alice_page, "typed while down 1")
    send(alice_page, "typed while down 2")
    wait_for_status(alice_page, "typed while down 2", "pending")
    assert alice_page.evaluate("Object.keys(localStorage).some(k => k.endsWith('.outbox'))")
    screenshot(alice_page, "server-down-pending")
    courier_server.start()
    wait_connected(alice_page)
    wait_for_message(bob_page, "typed while down 2")
    wait_for_status(alice_page, "typed while down 2", "read", timeout_ms=RECONNECT_MS)

    # Crash 2: this time the page is closed before the server is back; a page opened later
    # finds the message in the persisted outbox and sends it.
    courier_server.kill()
    alice_page.wait_for_selector('#conn-status:not([data-state="connected"])')
    send(alice_page, "typed before closing the tab")
    wait_for_status(alice_page, "typed before closing the tab", "pending")
    alice_page.close()
    courier_server.start()
    wait_connected(bob_page)
    alice_page = alice_context.new_page()
    alice_page.goto(courier_server.url + "/")
    wait_connected(alice_page)
    alice_page.click(f'#conversations li[data-peer="{bob}"] a')
    wait_for_message(bob_page, "typed before closing the tab")
    wait_for_status(alice_page, "typed before closing the tab", "read", timeout_ms=RECONNECT_MS)

    # The chat goes on, and nothing was stored or shown twice.
    send(bob_page, "all good here")
    wait_for_message(alice_page, "all good here")
    expected = [
        "before the crash",
        "typed while down 1",
        "typed while down 2",
        "typed before closing the tab",
        "all good here",
    ]
    assert courier_server.bodies(bob_token, alice) == expected
    assert message_texts(bob_page) == expected
    wait_until(alice_page, "document.querySelectorAll('#message-items .msg').length >= 5")
    assert message_texts(alice_page) == expected
    screenshot(alice_page, "server-restart")


def test_browser_offline_shows_offline_and_sends_when_back(
    courier_server: CourierServer, new_context: NewContext
) -> None:
    alice, bob = new_username("alice"), new_username("bob")
    courier_server.register(alice)
    bob_token = courier_server.register(bob)
    alice_context = new_context()
    alice_page = alice_context.new_page()
    log_in(alice_page, courier_server.url, alice)
    open_chat(alice_page, bob)

    alice_context.set_offline(True)
    alice_page.wait_for_selector('#conn-status[data-state="offline"]')
    assert alice_page.text_content("#conn-text") == "Offline"
    send(alice_page, "written on the train")
    alice_page.wait_for_timeout(500)
    assert courier_server.bodies(bob_token, alice) == []
    wait_for_status(alice_page, "written on the train", "pending")
    screenshot(alice_page, "browser-offline")

    alice_context.set_offline(False)
    wait_connected(alice_page)
    wait_for_status(alice_page, "written on the train", "sent")
    assert courier_server.bodies(bob_token, alice) == ["written on the train"]
