"""Resources a real `courier serve` holds for idle clients: memory and descriptors per
WebSocket stay within the documented budget, and everything is given back when they go.

This is a bound, not a benchmark (the W3 workload measures the figure): the budget is
10 KiB per idle WebSocket (docs/performance.md), checked here with room for noise.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
from pathlib import Path

import aiohttp

from tests.procs import ServerProcess

CONNECTIONS = 2000
BUDGET_KIB = 16.0  # the 10 KiB budget, with room for allocator noise on a shared box


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def open_ws(port: int, token: str) -> asyncio.StreamWriter:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    head = (
        f"GET /v1/ws?token={token} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    writer.write(head.encode())
    answer = await reader.readuntil(b"\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 101"), answer
    _opcode, n = await reader.readexactly(2)
    hello = json.loads(await reader.readexactly(n & 0x7F))
    assert hello["type"] == "hello", hello
    return writer


async def idle_sockets(port: int, token: str, count: int) -> list[asyncio.StreamWriter]:
    out: list[asyncio.StreamWriter] = []
    for start in range(0, count, 200):
        batch = [open_ws(port, token) for _ in range(min(200, count - start))]
        out += await asyncio.gather(*batch)
    return out


async def test_idle_websockets_cost_little_memory_and_one_descriptor_each(
    tmp_path: Path,
) -> None:
    server = ServerProcess(tmp_path / "data", COURIER_MAX_CONNECTIONS_PER_USER="10000").start()
    try:
        async with aiohttp.ClientSession() as http:
            creds = {"username": "idler", "password": "correct horse"}
            async with http.post(server.url + "/v1/users", json=creds) as r:
                assert r.status == 201
            async with http.post(server.url + "/v1/sessions", json=creds) as r:
                token = (await r.json())["token"]
        pid = server.process.pid if server.process else 0
        warm = await idle_sockets(server.port, token, 200)  # allocator arenas, caches
        await asyncio.sleep(0.5)
        rss0, fds0 = rss_kib(pid), fds(pid)
        held = await idle_sockets(server.port, token, CONNECTIONS)
        await asyncio.sleep(0.5)
        per_conn = (rss_kib(pid) - rss0) / CONNECTIONS
        assert fds(pid) - fds0 == CONNECTIONS
        assert per_conn < BUDGET_KIB, f"{per_conn:.2f} KiB per idle WebSocket"
        for writer in held + warm:
            writer.close()

        async def released() -> bool:
            return fds(pid) <= fds0 - len(warm) + 5

        for _ in range(100):
            if await released():
                break
            await asyncio.sleep(0.1)
        assert await released(), (fds(pid), fds0)
    finally:
        server.stop()
