"""The terminal commands, run as real subprocesses against a real server."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import sys
import tomllib
from pathlib import Path

from courier.client import Message
from tests.client.support import PASSWORD, Server, Users, new_username


def cli_env(config: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("COURIER_URL", "COURIER_TOKEN")}
    env["COURIER_CLIENT_CONFIG"] = str(config)
    env.update(extra)
    return env


async def courier(
    env: dict[str, str], *args: str, stdin: bytes | None = None
) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "courier",
        *args,
        env=env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(stdin), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def read_line_with(stream: asyncio.StreamReader, text: str) -> str:
    """Skip output lines until one contains ``text``."""
    async with asyncio.timeout(20):
        while line := (await stream.readline()).decode():
            if text in line:
                return line
    raise AssertionError(f"output ended without {text!r}")


async def test_login_send_and_tail(server: Server, users: Users, tmp_path: Path) -> None:
    bob = await users(server.url)
    assert bob.username and bob.token
    alice_name = new_username()
    config = tmp_path / "alice" / "client.toml"
    env = cli_env(config)

    code, out, err = await courier(
        env, "login", alice_name, "--register", "--url", server.url, stdin=PASSWORD.encode()
    )
    assert code == 0, err
    saved = tomllib.loads(config.read_text())
    assert saved["url"] == server.url and saved["username"] == alice_name and saved["token"]
    assert stat.S_IMODE(config.stat().st_mode) == 0o600

    code, out, err = await courier(env, "send", bob.username, "hello", "there")
    assert code == 0 and not err, err
    assert out.startswith("sent #1 ")

    # tail with the token from the environment, and no config file.
    bob_env = cli_env(tmp_path / "none.toml", COURIER_URL=server.url, COURIER_TOKEN=bob.token)
    tail = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "courier", "tail", "--after", "0", "--count", "2"),
        env=bob_env,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert tail.stdout is not None
        first = await read_line_with(tail.stdout, "hello there")
        assert f"#1 {alice_name} -> {bob.username}: hello there" in first
        await bob.send(alice_name, "line one\nline two")
        second = await read_line_with(tail.stdout, "line one")
        assert f"{bob.username} -> {alice_name}: line one\\nline two" in second
        assert await asyncio.wait_for(tail.wait(), 20) == 0
    finally:
        if tail.returncode is None:
            tail.kill()
            await tail.wait()

    code, out, err = await courier(env, "tail", "--after", "0", "--count", "2", "--json")
    assert code == 0 and not err, err
    events = [json.loads(line) for line in out.splitlines()]
    assert [e["body"] for e in events] == ["hello there", "line one\nline two"]
    assert events[0]["type"] == "message" and events[0]["from"] == alice_name


async def test_tail_by_long_poll(server: Server, users: Users, tmp_path: Path) -> None:
    alice, bob = await users(server.url), await users(server.url)
    assert bob.username and bob.token
    await alice.send(bob.username, "polled")
    env = cli_env(tmp_path / "none.toml", COURIER_URL=server.url, COURIER_TOKEN=bob.token)
    code, out, err = await courier(
        env, "tail", "--after", "0", "--count", "1", "--transport", "longpoll"
    )
    assert code == 0 and not err, err
    assert out.strip().endswith(f"{alice.username} -> {bob.username}: polled")


async def test_chat(server: Server, users: Users, tmp_path: Path) -> None:
    alice, bob = await users(server.url), await users(server.url)
    assert alice.username and bob.username and bob.token
    await alice.send(bob.username, "earlier")
    env = cli_env(tmp_path / "none.toml", COURIER_URL=server.url, COURIER_TOKEN=bob.token)
    chat = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "courier", "chat", alice.username),
        env=env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert chat.stdin is not None and chat.stdout is not None
        assert f"{alice.username}: earlier" in await read_line_with(chat.stdout, "earlier")
        chat.stdin.write(b"hi from the terminal\n")
        await chat.stdin.drain()

        async with asyncio.timeout(20):
            async for event in alice.events(after=1):
                if isinstance(event, Message):
                    assert (event.from_, event.body) == (bob.username, "hi from the terminal")
                    break
        await alice.send(bob.username, "welcome")
        assert f"{alice.username}: welcome" in await read_line_with(chat.stdout, "welcome")

        chat.stdin.close()  # EOF ends the chat
        assert await asyncio.wait_for(chat.wait(), 20) == 0
    finally:
        if chat.returncode is None:
            chat.kill()
            await chat.wait()


async def test_errors_are_reported(server: Server, users: Users, tmp_path: Path) -> None:
    alice = await users(server.url)
    assert alice.token
    env = cli_env(tmp_path / "none.toml", COURIER_URL=server.url, COURIER_TOKEN=alice.token)
    code, _, err = await courier(env, "send", "nobody-here", "hi")
    assert code == 1 and "unknown_user" in err

    code, _, err = await courier(cli_env(tmp_path / "none.toml"), "send", "someone", "hi")
    assert code != 0 and "courier login" in err

    code, _, err = await courier(
        cli_env(tmp_path / "x.toml"),
        "login",
        alice.username or "",
        "--url",
        server.url,
        "--password",
        "wrong password",
    )
    assert code == 1 and "invalid_credentials" in err


async def test_me_and_users(server: Server, users: Users, tmp_path: Path) -> None:
    alice = await users(server.url)
    assert alice.username and alice.token
    env = cli_env(tmp_path / "none.toml", COURIER_URL=server.url, COURIER_TOKEN=alice.token)
    code, out, err = await courier(env, "me", "--name", "Queen Of Hearts")
    assert code == 0 and not err, err
    assert out.strip() == f"{alice.username}\tQueen Of Hearts"
    code, out, err = await courier(env, "users", "queen", "of")
    assert code == 0 and not err, err
    assert out.strip() == f"{alice.username}\tQueen Of Hearts"


async def test_block_list_and_unblock(server: Server, users: Users, tmp_path: Path) -> None:
    alice, bob = await users(server.url), await users(server.url)
    assert alice.token and bob.username
    env = cli_env(tmp_path / "none.toml", COURIER_URL=server.url, COURIER_TOKEN=alice.token)
    assert (await courier(env, "block", bob.username))[1].strip() == f"blocked {bob.username}"
    assert (await courier(env, "block"))[1].strip() == bob.username
    assert (await courier(env, "unblock", bob.username))[1].strip() == f"unblocked {bob.username}"
    code, out, err = await courier(env, "block")
    assert code == 0 and out == "" and not err
