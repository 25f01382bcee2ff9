"""Real nginx in front of three nodes, with deploy/nginx.conf: users are hashed onto nodes for
WebSocket, long-poll and REST, and everything works through it.

nginx comes from Debian's package, installed here when missing (as root). Where it cannot be
installed the test is skipped with the reason, except under CI, where that is a failure."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import aiohttp
import pytest

from courier.cluster.engines import free_port
from tests.cluster.local.conftest import Cluster
from tests.helpers import Api

CONF = Path(__file__).resolve().parents[3] / "deploy" / "nginx.conf"


def nginx_binary() -> str | None:
    found = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )
    if found or os.geteuid() != 0 or shutil.which("apt-get") is None:
        return found
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "nginx"]):
        if subprocess.run(cmd, env=env, capture_output=True, timeout=900, check=False).returncode:
            return None
    return shutil.which("nginx") or "/usr/sbin/nginx"


def render(conf: str, nodes: list[str], port: int, access_log: Path) -> str:
    """deploy/nginx.conf with this cluster's nodes and a free port; logs to the test folder."""
    servers = "".join(
        f"        server {n.removeprefix('http://')} max_fails=1 fail_timeout=5s;\n" for n in nodes
    )
    conf = re.sub(r"(?m)^\s*server 127\.0\.0\.1:808\d.*\n", "", conf)
    hash_line = "        hash $courier_hash_key consistent;\n"
    assert conf.count(hash_line) == 2  # the HTTP upstream and the WebSocket one
    conf = conf.replace(hash_line, hash_line + servers)
    conf = conf.replace("listen 8080;", f"listen 127.0.0.1:{port};")
    log_line = "    access_log /var/log/nginx/courier-access.log courier;\n"
    assert conf.count(log_line) == 1
    return conf.replace(log_line, f"    access_log {access_log} courier;\n")


@pytest.fixture
def proxy(cluster: Cluster, tmp_path: Path) -> Iterator[str]:
    """nginx in front of the cluster; its access log is `access.log` in the test folder."""
    binary = nginx_binary()
    if binary is None:
        reason = "nginx is not installed and could not be installed (apt-get install nginx)"
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the nginx test: {reason}")
        pytest.skip(reason)
    port = free_port()
    conf = tmp_path / "nginx.conf"
    conf.write_text(render(CONF.read_text(), cluster.nodes, port, tmp_path / "access.log"))
    cmd = [
        binary,
        "-p",
        str(tmp_path),
        "-c",
        str(conf),
        "-e",
        str(tmp_path / "error.log"),
        "-g",
        f"daemon off; pid {tmp_path / 'nginx.pid'};",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "error.log").read_text(errors="replace")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.send_signal(signal.SIGQUIT)  # graceful: the master stops its workers
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


async def test_chat_through_nginx(proxy: str) -> None:
    async with aiohttp.ClientSession() as http:
        api = Api(proxy, http)
        alice, bob = await api.user(), await api.user()
        bob_ws = await api.ws(bob, f"u={bob.name}")
        assert (await bob_ws.recv())["type"] == "hello"
        r = await api.call(
            "POST",
            f"/v1/messages?u={alice.name}",
            user=alice,
            json_body={"to": bob.name, "body": "via nginx", "client_id": "n1"},
        )
        assert r.status == 201
        event = await bob_ws.recv()
        assert (event["body"], event["seq"]) == ("via nginx", 1)

        poll = asyncio.create_task(
            api.call("GET", f"/v1/events?after=1&wait=20&u={bob.name}", user=bob)
        )
        await asyncio.sleep(0.3)
        await api.call(
            "POST",
            f"/v1/messages?u={alice.name}",
            user=alice,
            json_body={"to": bob.name, "body": "long-poll", "client_id": "n2"},
        )
        answer = await poll
        assert [e["body"] for e in answer.body["events"]] == ["long-poll"]
        assert (await bob_ws.recv())["body"] == "long-poll"
        await bob_ws.close()


async def test_one_user_lands_on_one_node(proxy: str, cluster: Cluster) -> None:
    """The consistent hash sends every request of a user to the same node: its WebSocket
    shows up in that node's connection gauge only."""
    async with aiohttp.ClientSession() as http:
        api = Api(proxy, http)
        carol = await api.user()
        sockets = [await api.ws(carol, f"u={carol.name}") for _ in range(3)]
        for ws in sockets:
            await ws.recv()
        counts = []
        for node in cluster.metrics:
            async with http.get(node + "/metrics") as resp:
                text = await resp.text()
            found = re.search(r"^courier_connections (\S+)$", text, re.M)
            counts.append(float(found.group(1)) if found else 0.0)
        assert sorted(counts)[-1] >= 3 and sum(c >= 3 for c in counts) == 1
        for ws in sockets:
            await ws.close()


async def test_websockets_through_nginx_take_the_lean_front(proxy: str, cluster: Cluster) -> None:
    """Upgrades through nginx, with HTTP requests in between, reach the nodes' lean
    WebSocket front: none rides a keep-alive connection that carried HTTP before."""
    async with aiohttp.ClientSession() as http:
        api = Api(proxy, http)
        dave = await api.user()
        for _ in range(4):  # HTTP through nginx between the upgrades fills its keep-alive pool
            ws = await api.ws(dave, f"u={dave.name}")
            assert (await ws.recv())["type"] == "hello"
            await ws.close()
            assert (await api.call("GET", f"/v1/conversations?u={dave.name}", user=dave)).status
        fronts = {"lean": 0.0, "aiohttp": 0.0}
        for node in cluster.metrics:
            async with http.get(node + "/metrics") as resp:
                text = await resp.text()
            for front in fronts:
                found = re.search(
                    rf'^courier_ws_upgrades_total{{front="{front}"}} (\S+)$', text, re.M
                )
                fronts[front] += float(found.group(1)) if found else 0.0
        assert fronts["lean"] >= 4 and fronts["aiohttp"] == 0, fronts


async def test_the_access_log_keeps_no_query_string(proxy: str, tmp_path: Path) -> None:
    """An old client that still puts its token in the WebSocket URL: the request works, and
    the access log names the path alone, so the token is not in it."""
    async with aiohttp.ClientSession() as http:
        api = Api(proxy, http)
        erin = await api.user()
        async with http.ws_connect(f"{proxy}/v1/ws?token={quote(erin.token)}&after=0") as ws:
            hello = await ws.receive_json(timeout=10)
            assert hello["type"] == "hello"
        r = await api.call("GET", f"/v1/conversations?u={erin.name}", user=erin)
        assert r.status == 200
    log = tmp_path / "access.log"
    lines: list[str] = []
    for _ in range(200):  # nginx writes each line once it has finished that request
        lines = log.read_text().splitlines() if log.exists() else []
        if any("/v1/ws" in line for line in lines) and any(
            "/v1/conversations" in line for line in lines
        ):
            break
        await asyncio.sleep(0.05)
    assert any('"GET /v1/ws HTTP/1.1" 101' in line for line in lines), lines
    assert any('"GET /v1/conversations HTTP/1.1" 200' in line for line in lines), lines
    text = "\n".join(lines)
    assert erin.token not in text
    assert "token=" not in text and "?" not in text
