"""The web app's live link: the token goes in the first WebSocket frame and never in a URL
(proxies log URLs), and reconnects wait a fully jittered exponential delay."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from web_harness import (
    log_in,
    new_username,
    open_chat,
    send,
    wait_connected,
    wait_for_message,
    wait_for_status,
)

if TYPE_CHECKING:
    from playwright.sync_api import WebSocket
    from web_harness import CourierServer, NewContext

RECONNECT_MS = 30000

# mulberry32: a tiny seeded generator, so the page draws the same delays on every run.
SCHEDULE = """async ([seed, perAttempt]) => {
  const { backoffDelay, backoffCeiling } = await import("/static/backoff.js");
  let a = seed >>> 0;
  const random = () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const out = [];
  for (let attempt = 0; attempt < 9; attempt++) {
    const delays = [];
    for (let i = 0; i < perAttempt; i++) delays.push(backoffDelay(attempt, 500, 10000, random));
    out.push({ ceiling: backoffCeiling(attempt, 500, 10000), delays });
  }
  return out;
}"""


def test_the_token_goes_in_the_first_frame_never_in_a_url(
    courier_server: CourierServer, new_context: NewContext
) -> None:
    alice, bob = new_username("alice"), new_username("bob")
    courier_server.register(alice)
    bob_token = courier_server.register(bob)
    page = new_context().new_page()
    urls: list[str] = []
    sockets: list[tuple[str, list[str]]] = []

    def on_socket(ws: WebSocket) -> None:
        sent: list[str] = []
        sockets.append((ws.url, sent))
        ws.on("framesent", lambda payload: sent.append(str(payload)))

    page.on("request", lambda request: urls.append(request.url))
    page.on("websocket", on_socket)
    log_in(page, courier_server.url, alice)
    token = page.evaluate("JSON.parse(localStorage.getItem('courier.session')).token")
    open_chat(page, bob)
    courier_server.send(bob_token, alice, "before the restart", "b-1")
    wait_for_message(page, "before the restart")

    # A restart: the app reconnects by itself, resuming after the seq it processed.
    courier_server.kill()
    page.wait_for_selector('#conn-status:not([data-state="connected"])')
    courier_server.start()
    wait_connected(page)
    send(page, "after the restart")
    wait_for_status(page, "after the restart", "sent", timeout_ms=RECONNECT_MS)

    opened = [url for url, _ in sockets]
    assert len(opened) >= 2, opened
    assert opened[0].endswith(f"/v1/ws?after=0&u={alice}")
    assert opened[-1].endswith(f"/v1/ws?after=1&u={alice}")
    for url in urls + opened:
        assert "token" not in url.lower(), url
        assert token not in url, url
    # Every socket that got to say anything said `auth` first, with the session's token.
    spoken = [sent for _, sent in sockets if sent]
    assert len(spoken) >= 2
    for sent in spoken:
        assert json.loads(sent[0]) == {"type": "auth", "token": token}
        assert all(json.loads(frame)["type"] != "auth" for frame in sent[1:])


def test_reconnect_delays_are_fully_jittered(
    courier_server: CourierServer, new_context: NewContext
) -> None:
    """The schedule the app uses, drawn in the page with a seeded generator: each delay lies
    in [0, ceiling], the ceiling doubles from 0.5 s to a 10 s cap, and the delays of many
    pages fill the whole window rather than bunching up."""
    page = new_context().new_page()
    page.goto(courier_server.url + "/")
    drawn = page.evaluate(SCHEDULE, [1234, 2000])
    assert drawn == page.evaluate(SCHEDULE, [1234, 2000])  # seeded: the same every time
    assert drawn != page.evaluate(SCHEDULE, [4321, 2000])
    assert [a["ceiling"] for a in drawn] == [500, 1000, 2000, 4000, 8000] + [10000] * 4
    for attempt in drawn:
        top, delays = attempt["ceiling"], attempt["delays"]
        assert all(0 <= d <= top for d in delays)
        assert min(delays) < 0.01 * top and max(delays) > 0.99 * top
        assert abs(sum(delays) / len(delays) - top / 2) < 0.04 * top
        quarters = [0, 0, 0, 0]
        for d in delays:
            quarters[min(3, int(d / top * 4))] += 1
        assert all(400 < n < 600 for n in quarters), quarters
