"""Independent WebSocket clients against a live server: the `websockets` library, aiohttp's
client, picows (a Cython client with its own frame code) and Chromium through Playwright.

Each one authenticates with a first `auth` frame, sends messages (fragmented where the client
can fragment, and as large as the frame limit allows), pings, and closes; another user sees
what it sent arrive. A message one byte over the limit closes the connection with 1009.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable
from typing import Any, ClassVar

import aiohttp
import picows
import pytest
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as websockets_connect
from websockets.exceptions import ConnectionClosed

from courier.config import Settings
from tests.e2e.support import hello, recv_events
from tests.helpers import Api

MAX = Settings().frame_max_bytes  # the default frame limit: 64 KiB
TIMEOUT = 10.0


def send_frame(to: str, body: str, client_id: str, size: int | None = None) -> str:
    """A send frame; with `size`, padded (an unknown field, ignored) to exactly that many bytes."""
    frame = {"type": "send", "to": to, "body": body, "client_id": client_id}
    text = json.dumps(frame, ensure_ascii=False, separators=(",", ":"))
    if size is None:
        return text
    pad = size - len(text.encode()) - len(',"pad":""')
    assert pad >= 0
    text = text[:-1] + ',"pad":"' + "x" * pad + '"}'
    assert len(text.encode()) == size
    return text


def thirds(text: str) -> list[str]:
    n = len(text)
    return [text[: n // 3], text[n // 3 : 2 * n // 3], text[2 * n // 3 :]]


# ---- the clients, behind one small interface ----------------------------------------------
class Client(ABC):
    name: ClassVar[str]
    fragments: ClassVar[bool] = False  # can send one message as several frames
    pings: ClassVar[bool] = True  # can send a ping frame and see its pong

    @abstractmethod
    async def open(self, url: str) -> None: ...

    @abstractmethod
    async def send(self, parts: list[str]) -> None:
        """One text message; more than one part: one frame per part (fragments)."""

    @abstractmethod
    async def recv(self) -> str:
        """The next text message."""

    async def ping(self, payload: bytes) -> None:
        """Returns once the pong with this payload is back."""
        raise NotImplementedError

    @abstractmethod
    async def close(self, code: int) -> int | None:
        """Close with `code`; the code of the server's answering close frame."""

    @abstractmethod
    async def closed(self) -> int | None:
        """Wait for the server to close; the code of its close frame."""

    async def idle(self, seconds: float) -> None:
        """Stay connected without sending anything (the library answers pings)."""
        await asyncio.sleep(seconds)

    @abstractmethod
    async def aclose(self) -> None:
        """Release whatever is left."""

    async def send_json(self, frame: dict[str, Any]) -> None:
        await self.send([json.dumps(frame)])

    async def recv_json(self) -> dict[str, Any]:
        frame: dict[str, Any] = json.loads(await self.recv())
        return frame


class WebsocketsClient(Client):
    name = "websockets"
    fragments = True

    async def open(self, url: str) -> None:
        self.ws: ClientConnection = await websockets_connect(
            url,
            compression=None,
            proxy=None,
            max_size=None,
            ping_interval=None,
            open_timeout=TIMEOUT,
            close_timeout=TIMEOUT,
        )

    async def send(self, parts: list[str]) -> None:
        await self.ws.send(parts[0] if len(parts) == 1 else parts)  # an iterable: fragments

    async def recv(self) -> str:
        data = await asyncio.wait_for(self.ws.recv(), TIMEOUT)
        assert isinstance(data, str)
        return data

    async def ping(self, payload: bytes) -> None:
        pong = await self.ws.ping(payload)
        await asyncio.wait_for(pong, TIMEOUT)

    async def close(self, code: int) -> int | None:
        await self.ws.close(code)
        return self.ws.close_code

    async def closed(self) -> int | None:
        try:
            while True:
                await asyncio.wait_for(self.ws.recv(), TIMEOUT)
        except ConnectionClosed as exc:
            return exc.rcvd.code if exc.rcvd is not None else None

    async def aclose(self) -> None:
        await self.ws.close()


class AiohttpClient(Client):
    """aiohttp's client, on a connection of its own (so it reaches the lean front). It has no
    way to send a fragmented message. One task reads, answers pings (as autoping would) and
    keeps the pongs, which autoping would swallow; aiohttp counts a receive that times out or
    is cancelled as an abnormal closure, so nothing else waits on `receive`."""

    name = "aiohttp"

    async def open(self, url: str) -> None:
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))
        self.ws = await self.session.ws_connect(url, autoping=False, max_msg_size=0)
        self.texts: asyncio.Queue[str] = asyncio.Queue()
        self.pongs: list[bytes] = []
        self.pong = asyncio.Event()
        self.end: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        while True:
            msg = await self.ws.receive()
            if msg.type == aiohttp.WSMsgType.PING:
                await self.ws.pong(msg.data)
            elif msg.type == aiohttp.WSMsgType.PONG:
                self.pongs.append(msg.data)
                self.pong.set()
            elif msg.type == aiohttp.WSMsgType.TEXT:
                self.texts.put_nowait(msg.data)
            elif msg.type == aiohttp.WSMsgType.CLOSE:
                self.end.set_result(int(msg.data))
                return
            elif msg.type in (aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED):
                return
            else:
                raise AssertionError(msg)

    async def send(self, parts: list[str]) -> None:
        assert len(parts) == 1
        await self.ws.send_str(parts[0])

    async def recv(self) -> str:
        return await asyncio.wait_for(self.texts.get(), TIMEOUT)

    async def ping(self, payload: bytes) -> None:
        await self.ws.ping(payload)
        async with asyncio.timeout(TIMEOUT):
            while payload not in self.pongs:
                self.pong.clear()
                await self.pong.wait()

    async def close(self, code: int) -> int | None:
        await self.ws.close(code=code)
        return self.ws.close_code

    async def closed(self) -> int | None:
        return await asyncio.wait_for(self.end, TIMEOUT)

    async def aclose(self) -> None:
        await self.ws.close()
        self.reader.cancel()
        await self.session.close()


class _PicowsListener(picows.WSListener):
    def __init__(self, inbox: asyncio.Queue[tuple[picows.WSMsgType, bytes, int | None]]) -> None:
        self.inbox = inbox

    def on_ws_frame(self, transport: picows.WSTransport, frame: picows.WSFrame) -> None:
        code = None
        if frame.msg_type == picows.WSMsgType.CLOSE:
            code = frame.get_close_code().value
        else:
            assert frame.fin  # Courier sends whole messages
        self.inbox.put_nowait((frame.msg_type, frame.get_payload_as_bytes(), code))

    def on_ws_disconnected(self, transport: picows.WSTransport) -> None:
        self.inbox.put_nowait((picows.WSMsgType.CLOSE, b"", None))


class PicowsClient(Client):
    """picows hands over raw frames both ways, so it can also send bytes that are not UTF-8
    in a text frame, and split a character across fragments."""

    name = "picows"
    fragments = True

    async def open(self, url: str) -> None:
        self.inbox: asyncio.Queue[tuple[picows.WSMsgType, bytes, int | None]] = asyncio.Queue()
        self.texts: list[bytes] = []
        self.pongs: list[bytes] = []
        self.transport, _ = await picows.ws_connect(
            lambda: _PicowsListener(self.inbox), url, enable_auto_pong=True
        )

    async def send(self, parts: list[str]) -> None:
        await self.send_raw([p.encode() for p in parts])

    async def send_raw(self, parts: list[bytes]) -> None:
        for i, part in enumerate(parts):
            kind = picows.WSMsgType.TEXT if i == 0 else picows.WSMsgType.CONTINUATION
            self.transport.send(kind, part, fin=i == len(parts) - 1)

    async def _next(self) -> tuple[picows.WSMsgType, bytes, int | None]:
        item = await asyncio.wait_for(self.inbox.get(), TIMEOUT)
        kind, payload, _ = item
        if kind == picows.WSMsgType.TEXT:
            self.texts.append(payload)
        elif kind == picows.WSMsgType.PONG:
            self.pongs.append(payload)
        return item

    async def recv(self) -> str:
        while not self.texts:
            kind, _, _ = await self._next()
            assert kind != picows.WSMsgType.CLOSE
        return self.texts.pop(0).decode()

    async def ping(self, payload: bytes) -> None:
        self.transport.send_ping(payload)
        while payload not in self.pongs:
            await self._next()

    async def close(self, code: int) -> int | None:
        self.transport.send_close(picows.WSCloseCode(code))
        return await self.closed()

    async def closed(self) -> int | None:
        while True:
            kind, _, code = await self._next()
            if kind == picows.WSMsgType.CLOSE:
                return code

    async def aclose(self) -> None:
        self.transport.disconnect()
        await asyncio.wait_for(self.transport.wait_disconnected(), TIMEOUT)


_PAGE_OPEN = """url => new Promise((resolve, reject) => {
    const ws = new WebSocket(url);
    window.ws = ws;
    window.inbox = [];
    window.closeCode = null;
    ws.onmessage = event => window.inbox.push(event.data);
    ws.onclose = event => { window.closeCode = event.code; };
    ws.onopen = () => resolve(true);
    ws.onerror = () => reject(new Error("the WebSocket failed"));
})"""


class ChromiumClient(Client):
    """Debian's Chromium, driven by Playwright: the browser's own WebSocket. A page cannot
    fragment a message or send a ping; the browser answers the server's pings itself."""

    name = "chromium"
    pings = False

    async def open(self, url: str) -> None:
        try:
            from playwright.async_api import async_playwright
        except ImportError as exc:
            pytest.skip(f"playwright is not installed: {exc}")
        from tests.browser.web_harness import CHROMIUM, CHROMIUM_ARGS, chromium_problem

        problem = await asyncio.to_thread(chromium_problem)
        if problem:
            pytest.skip(problem)
        self.playwright = await async_playwright().start()
        self.browser = await self.playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        self.page = await self.browser.new_page()
        self.page.set_default_timeout(TIMEOUT * 1000)
        await self.page.evaluate(_PAGE_OPEN, url)

    async def send(self, parts: list[str]) -> None:
        assert len(parts) == 1
        await self.page.evaluate("text => window.ws.send(text)", parts[0])

    async def recv(self) -> str:
        await self.page.wait_for_function("() => window.inbox.length > 0")
        text: str = await self.page.evaluate("() => window.inbox.shift()")
        return text

    async def close(self, code: int) -> int | None:
        await self.page.evaluate("code => window.ws.close(code)", code)
        return await self.closed()

    async def closed(self) -> int | None:
        await self.page.wait_for_function("() => window.closeCode !== null")
        code: int = await self.page.evaluate("() => window.closeCode")
        return code

    async def aclose(self) -> None:
        if hasattr(self, "browser"):
            await self.browser.close()
        if hasattr(self, "playwright"):
            await self.playwright.stop()


CLIENTS: dict[str, Callable[[], Client]] = {
    c.name: c for c in (WebsocketsClient, AiohttpClient, PicowsClient, ChromiumClient)
}


@pytest.fixture(params=list(CLIENTS))
def client_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def make(client_name: str) -> AsyncIterator[Callable[[], Client]]:
    """Makes clients of the kind under test; every one is released at the end."""
    made: list[Client] = []

    def new() -> Client:
        client = CLIENTS[client_name]()
        made.append(client)
        return client

    yield new
    for client in made:
        with contextlib.suppress(Exception):  # already gone, as a closed connection is
            await client.aclose()


def ws_url(api: Api) -> str:
    return api.base.replace("http", "ws", 1) + "/v1/ws"


async def authenticated(make: Callable[[], Client], api: Api, token: str) -> Client:
    client = make()
    await client.open(ws_url(api))
    await client.send_json({"type": "auth", "token": token})
    first = await client.recv_json()
    assert first["type"] == "hello", first
    return client


# ---- the scenario, for every client ---------------------------------------------------------
async def test_a_client_sends_pings_and_closes(api: Api, make: Callable[[], Client]) -> None:
    alice, bob = await api.user(), await api.user()
    watcher = await api.ws(bob)
    await hello(watcher)
    client = await authenticated(make, api, alice.token)

    # A small message with characters of every UTF-8 length; fragmented where possible.
    body = "grüße, ε, 世界, 😀 " * 4
    frame = send_frame(bob.name, body, "small")
    await client.send(thirds(frame) if client.fragments else [frame])
    assert (await client.recv_json())["client_id"] == "small"

    # A message of exactly the frame limit, then one of nearly twice the body limit's bytes.
    at_limit = send_frame(bob.name, "at the limit", "at-limit", size=MAX)
    await client.send(thirds(at_limit) if client.fragments else [at_limit])
    sent = await client.recv_json()
    assert (sent["type"], sent["client_id"]) == ("sent", "at-limit"), sent

    if client.pings:
        await client.ping(b"are you there")
    await client.send_json({"type": "ping"})
    assert await client.recv_json() == {"type": "pong"}

    events = await recv_events(watcher, 2)
    assert [(e["from"], e["body"]) for e in events] == [
        (alice.name, body),
        (alice.name, "at the limit"),
    ]

    assert await client.close(1000) == 1000


async def test_one_byte_over_the_limit_closes_1009(api: Api, make: Callable[[], Client]) -> None:
    alice, bob = await api.user(), await api.user()
    client = await authenticated(make, api, alice.token)
    over = send_frame(bob.name, "too big", "over", size=MAX + 1)
    await client.send(thirds(over) if client.fragments else [over])
    assert await client.closed() == 1009
    assert (await api.events(bob)).body["events"] == []


@pytest.mark.parametrize("settings_overrides", [{"ws_heartbeat": 0.4}], ids=["heartbeat"])
async def test_the_client_answers_the_server_pings(api: Api, make: Callable[[], Client]) -> None:
    """A silent client is pinged after 0.4 s and dropped 0.2 s later unless it answers."""
    client = await authenticated(make, api, (await api.user()).token)
    await client.idle(1.5)
    await client.send_json({"type": "ping"})
    assert await client.recv_json() == {"type": "pong"}
    assert await client.close(1000) == 1000


# ---- what only a raw client can send --------------------------------------------------------
@pytest.mark.parametrize("client_name", ["picows"])
async def test_text_that_is_not_utf8_closes_1007(api: Api, make: Callable[[], Client]) -> None:
    client = await authenticated(make, api, (await api.user()).token)
    assert isinstance(client, PicowsClient)
    await client.send_raw([b'{"type":"ping","note":"\xc0\xaf"}'])
    assert await client.closed() == 1007


@pytest.mark.parametrize("client_name", ["picows"])
async def test_a_character_split_across_fragments_arrives_whole(
    api: Api, make: Callable[[], Client]
) -> None:
    alice, bob = await api.user(), await api.user()
    client = await authenticated(make, api, alice.token)
    assert isinstance(client, PicowsClient)
    data = send_frame(bob.name, "😀é", "split").encode()
    cut = data.index("😀".encode()) + 2  # inside the emoji, then inside the é
    await client.send_raw([data[:cut], data[cut : cut + 3], data[cut + 3 :]])
    assert (await client.recv_json())["client_id"] == "split"
    events = (await api.events(bob)).body["events"]
    assert [e["body"] for e in events] == ["😀é"]
