"""Terminal commands of the client: login, logout, send, tail and chat.

`add_commands` plugs them into the ``courier`` command line; `main` runs them on their own.
The server URL and token come from --url/--token, else COURIER_URL/COURIER_TOKEN, else the
config file written by ``courier login``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import json
import os
import sys
import threading
import time
import tomllib
import unicodedata
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

import aiohttp
import msgspec

from courier.client.client import Client, new_client_id
from courier.client.errors import CourierError
from courier.client.events import Event, GroupChange, Message, Presence, Receipt, Typing, Unknown

DEFAULT_URL = "http://127.0.0.1:8080"
CONFIG_ENV = "COURIER_CLIENT_CONFIG"
TYPING_QUIET = 3.0  # seconds between two "is typing" lines for one peer

Command = Callable[[argparse.Namespace], int]


# -- configuration -----------------------------------------------------------------------------


def config_path() -> Path:
    """Where ``login`` keeps the URL and token: $COURIER_CLIENT_CONFIG or the XDG default."""
    override = os.environ.get(CONFIG_ENV)
    if override:
        return Path(override).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "courier" / "client.toml"


def load_config(path: Path) -> dict[str, str]:
    try:
        with path.open("rb") as file:
            data = tomllib.load(file)
    except FileNotFoundError:
        return {}
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise SystemExit(f"courier: cannot read {path}: {exc}") from exc
    return {key: value for key, value in data.items() if isinstance(value, str)}


def save_config(path: Path, values: dict[str, str]) -> None:
    """Write the config atomically and readable by its owner only: it holds a bearer token."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # A JSON string is also a valid TOML basic string.
    text = "".join(f"{key} = {json.dumps(value)}\n" for key, value in values.items())
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as file:
        file.write(text)
    tmp.replace(path)


def resolve(args: argparse.Namespace, *, need_token: bool = True) -> tuple[str, str | None]:
    """URL and token from flags, then environment, then the config file."""
    config = load_config(config_path())
    url = (
        getattr(args, "url", None)
        or os.environ.get("COURIER_URL")
        or config.get("url")
        or DEFAULT_URL
    )
    url = url.rstrip("/")
    token = getattr(args, "token", None) or os.environ.get("COURIER_TOKEN")
    if not token and config.get("url", "").rstrip("/") == url:
        token = config.get("token")
    if need_token and not token:
        raise SystemExit(f"courier: no token for {url}; run `courier login USERNAME` first")
    return url, token


# -- output ------------------------------------------------------------------------------------


def _clean(text: str) -> str:
    """Escape control characters so one event is always one line."""
    return "".join(
        ch.encode("unicode_escape").decode() if unicodedata.category(ch) == "Cc" else ch
        for ch in text
    )


def _clock(ts: int) -> str:
    return datetime.fromtimestamp(ts / 1000).strftime("%H:%M:%S")


def format_event(event: Event) -> str:
    """One human line per event."""
    if isinstance(event, Message):
        where = f"[{event.group}]" if event.group else f"-> {event.to}"
        return f"{_clock(event.ts)} #{event.seq} {event.from_} {where}: {_clean(event.body)}"
    if isinstance(event, Receipt):
        where = f" in [{event.group}]" if event.group else ""
        line = f"{event.peer} {event.status} up to #{event.up_to}{where}"
        return f"{_clock(event.ts)} #{event.seq} {line}"
    if isinstance(event, GroupChange):
        return f"{_clock(event.ts)} #{event.seq} [{event.group}] {describe_change(event)}"
    if isinstance(event, Unknown):
        return f"#{event.seq} ({event.type})"
    if isinstance(event, Presence):
        return f"{event.user} is {'online' if event.online else 'offline'}"
    where = f" in [{event.group}]" if event.group else ""
    return f"{event.from_} is typing{where}"


def describe_change(event: GroupChange) -> str:
    who = event.member or ""
    texts = {
        "created": f"{event.by} created {_clean(event.name)!r}",
        "added": f"{event.by} added {who}",
        "removed": f"{event.by} removed {who}",
        "left": f"{who} left",
        "renamed": f"{event.by} renamed the group {_clean(event.name)!r}",
        "role": f"{who} is now {event.role}",
    }
    return texts.get(event.action, event.action)


def _say(line: str, stream: TextIO | None = None) -> None:
    print(line, file=stream or sys.stdout, flush=True)


# -- running -----------------------------------------------------------------------------------


def _run(main: Coroutine[Any, Any, int]) -> int:
    """Run one command, turning the usual failures into a message and an exit code."""
    try:
        return asyncio.run(main)
    except KeyboardInterrupt:
        return 130
    except CourierError as exc:
        _say(f"courier: {exc.code}: {exc.message}", sys.stderr)
    except TimeoutError:
        _say("courier: timed out", sys.stderr)
    except (aiohttp.ClientError, OSError) as exc:
        _say(f"courier: cannot reach the server: {exc}", sys.stderr)
    return 1


def _command(
    body: Callable[[argparse.Namespace], Awaitable[int]],
) -> Command:
    def command(args: argparse.Namespace) -> int:
        async def main() -> int:
            return await body(args)

        return _run(main())

    return command


async def _login(args: argparse.Namespace) -> int:
    url, _ = resolve(args, need_token=False)
    password = args.password
    if password is None:
        password = await asyncio.to_thread(_ask_password)
    if args.register:
        async with await Client.register(url, args.username, password) as client:
            token = client.token
    else:
        async with Client(url) as client:
            token = await client.login(args.username, password)
    assert token is not None
    path = config_path()
    save_config(path, {"url": url, "token": token, "username": args.username})
    _say(f"logged in as {args.username} on {url}; token saved in {path}")
    return 0


def _ask_password() -> str:
    if sys.stdin.isatty():
        return getpass.getpass("Password: ")
    return sys.stdin.readline().rstrip("\r\n")


async def _logout(args: argparse.Namespace) -> int:
    url, token = resolve(args)
    async with Client(url, token) as client:
        await client.logout()
    path = config_path()
    config = load_config(path)
    if config.get("token") == token:
        config.pop("token")
        save_config(path, config)
    _say("logged out")
    return 0


async def _send(args: argparse.Namespace) -> int:
    url, token = resolve(args)
    text = " ".join(args.text)
    if text == "-":
        text = sys.stdin.read().rstrip("\n")
    async with Client(url, token) as client, asyncio.timeout(args.timeout):
        sent = await client.send(args.user, text, args.client_id)
    _say(f"sent #{sent.seq} {sent.id}")
    return 0


async def _tail(args: argparse.Namespace) -> int:
    url, token = resolve(args)
    seen = 0
    async with Client(url, token, transport=args.transport) as client:
        stream = client.events(after=args.after, from_now=args.after is None, auto_ack=args.ack)
        async with contextlib.aclosing(stream):
            async for event in stream:
                if isinstance(event, Typing) and not args.typing:
                    continue
                _say(msgspec.json.encode(event).decode() if args.json else format_event(event))
                seen += 1
                if args.count is not None and seen >= args.count:
                    break
    return 0


async def _chat(args: argparse.Namespace) -> int:
    url, token = resolve(args)
    peer = args.user
    if peer.startswith("G"):  # a group id: group ids start with a capital G, names never do
        return await _group_chat(url, token, peer, args.history)
    async with Client(url, token) as client:
        conversations = await client.conversations()
        start = max((c.last.seq for c in conversations if c.last is not None), default=0)
        history = await client.history(peer, limit=args.history) if args.history > 0 else None
        shown = 0
        for event in reversed(history.messages if history else []):
            if isinstance(event, Message):
                _say(f"{_clock(event.ts)} {event.from_}: {_clean(event.body)}")
                shown = max(shown, event.seq)
        if shown:
            await client.read(peer, shown)
        mine: set[str] = set()

        async def receive() -> None:
            typing_shown = 0.0
            async for event in client.events(after=start, auto_ack=True):
                if isinstance(event, Typing):
                    now = time.monotonic()
                    if event.from_ == peer and now - typing_shown > TYPING_QUIET:
                        typing_shown = now
                        _say(f"* {peer} is typing")
                    continue
                if isinstance(event, Presence):
                    if event.user == peer:
                        _say(f"* {peer} is {'online' if event.online else 'offline'}")
                    continue
                if not isinstance(event, Message) or peer not in (event.from_, event.to):
                    continue
                if event.seq <= shown or (event.from_ != peer and event.client_id in mine):
                    continue
                _say(f"{_clock(event.ts)} {event.from_}: {_clean(event.body)}")
                if event.from_ == peer:
                    with contextlib.suppress(
                        CourierError, aiohttp.ClientError, OSError, TimeoutError
                    ):
                        # Best effort: a later read receipt covers this one.
                        await client.read(peer, event.seq)

        async def send_lines() -> None:
            async for line in _stdin_lines():
                text = line.rstrip("\r\n")
                if not text.strip():
                    continue
                client_id = new_client_id()
                mine.add(client_id)
                await client.send(peer, text, client_id)

        receiver = asyncio.create_task(receive())
        sender = asyncio.create_task(send_lines())
        done, _ = await asyncio.wait({receiver, sender}, return_when=asyncio.FIRST_COMPLETED)
        receiver.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await receiver
        if sender not in done:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender
        for task in done:
            task.result()  # surfaces an error that ended the chat
    return 0


async def _group_chat(url: str, token: str | None, gid: str, history_size: int) -> int:
    async with Client(url, token) as client:
        group = await client.group(gid)
        _say(f"[{group.name}] " + ", ".join(f"{m.username} ({m.role})" for m in group.members))
        conversations = await client.conversations()
        start = max((c.last.seq for c in conversations if c.last is not None), default=0)
        page = await client.group_history(gid, limit=history_size) if history_size > 0 else None
        shown = 0
        for event in reversed(page.messages if page else []):
            if isinstance(event, Message):
                _say(f"{_clock(event.ts)} {event.from_}: {_clean(event.body)}")
            elif isinstance(event, GroupChange):
                _say(f"* {describe_change(event)}")
            shown = max(shown, event.seq)
        if shown:
            await client.read_group(gid, shown)
        mine: set[str] = set()

        async def receive() -> None:
            typing_shown: dict[str, float] = {}
            async for event in client.events(after=start, auto_ack=True):
                if isinstance(event, Typing):
                    now = time.monotonic()
                    if event.group == gid and now - typing_shown.get(event.from_, 0) > TYPING_QUIET:
                        typing_shown[event.from_] = now
                        _say(f"* {event.from_} is typing")
                    continue
                if isinstance(event, GroupChange) and event.group == gid and event.seq > shown:
                    _say(f"* {describe_change(event)}")
                    if event.member == client.username and event.action in ("removed", "left"):
                        return  # no longer a member: nothing more will come, nothing can go
                    continue
                if not isinstance(event, Message) or event.group != gid or event.seq <= shown:
                    continue
                if event.client_id in mine and event.from_ == client.username:
                    continue
                _say(f"{_clock(event.ts)} {event.from_}: {_clean(event.body)}")
                with contextlib.suppress(CourierError, aiohttp.ClientError, OSError, TimeoutError):
                    await client.read_group(gid, event.seq)

        async def send_lines() -> None:
            async for line in _stdin_lines():
                text = line.rstrip("\r\n")
                if text.strip():
                    client_id = new_client_id()
                    mine.add(client_id)
                    await client.send_group(gid, text, client_id)

        receiver = asyncio.create_task(receive())
        sender = asyncio.create_task(send_lines())
        done, _ = await asyncio.wait({receiver, sender}, return_when=asyncio.FIRST_COMPLETED)
        for task in (receiver, sender):
            if task not in done:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        for task in done:
            task.result()
    return 0


async def _group(args: argparse.Namespace) -> int:
    """`courier group ACTION ...`: create, list, members, add, remove, leave, rename, send,
    open."""
    url, token = resolve(args)
    if args.action == "open" and len(args.args) == 1:
        return await _group_chat(url, token, args.args[0], args.history)
    async with Client(url, token) as client:
        action, rest = args.action, args.args
        if action == "create" and rest:
            group = await client.create_group(rest[0], rest[1:])
            _say(f"{group.id} {group.name}")
        elif action == "list":
            for group in await client.groups():
                _say(f"{group.id} {_clean(group.name)} ({len(group.members)} members)")
        elif action == "members" and len(rest) == 1:
            for member in (await client.group(rest[0])).members:
                _say(f"{member.username} {member.role}")
        elif action == "add" and len(rest) in (2, 3):
            await client.add_member(rest[0], rest[1], rest[2] if len(rest) == 3 else "member")
            _say(f"added {rest[1]}")
        elif action == "remove" and len(rest) == 2:
            await client.remove_member(rest[0], rest[1])
            _say(f"removed {rest[1]}")
        elif action == "leave" and len(rest) == 1:
            username = args.username or load_config(config_path()).get("username")
            if not username:
                raise SystemExit("courier group leave: name yourself with --username")
            await client.remove_member(rest[0], username)
            _say("left")
        elif action == "rename" and len(rest) == 2:
            await client.rename_group(rest[0], rest[1])
            _say("renamed")
        elif action == "send" and len(rest) >= 2:
            sent = await client.send_group(rest[0], " ".join(rest[1:]))
            _say(f"sent #{sent.seq} {sent.id}")
        else:
            raise SystemExit(f"courier group: cannot {action} with {len(rest)} arguments")
    return 0


async def _me(args: argparse.Namespace) -> int:
    """`courier me [--name NAME]`: show our profile, or set our display name first."""
    url, token = resolve(args)
    async with Client(url, token) as client:
        if args.name is not None:
            profile = await client.set_display_name(args.name)
        else:
            profile = await client.me()
    _say(f"{profile.username}\t{profile.display_name}")
    return 0


async def _users(args: argparse.Namespace) -> int:
    """`courier users QUERY`: people whose username or display name starts with QUERY."""
    url, token = resolve(args)
    async with Client(url, token) as client:
        found = await client.search_users(" ".join(args.query), args.limit)
    for profile in found:
        _say(f"{profile.username}\t{profile.display_name}")
    return 0


async def _block(args: argparse.Namespace) -> int:
    """`courier block [USER]` / `courier unblock USER`: block, unblock, or list the blocked."""
    url, token = resolve(args)
    async with Client(url, token) as client:
        if args.user is None:
            for name in await client.blocks():
                _say(name)
        elif args.command == "unblock":
            await client.unblock(args.user)
            _say(f"unblocked {args.user}")
        else:
            await client.block(args.user)
            _say(f"blocked {args.user}")
    return 0


async def _stdin_lines() -> AsyncIterator[str]:
    """Lines of stdin, read on a daemon thread so a blocked read never holds up exit."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[str | None] = asyncio.Queue()

    def pump() -> None:
        try:
            for line in sys.stdin:
                loop.call_soon_threadsafe(queue.put_nowait, line)
            loop.call_soon_threadsafe(queue.put_nowait, None)
        except RuntimeError:
            pass  # the loop is gone: the chat has ended

    threading.Thread(target=pump, name="courier-stdin", daemon=True).start()
    while (line := await queue.get()) is not None:
        yield line


# -- argparse ----------------------------------------------------------------------------------


def add_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the client commands to the ``courier`` command line."""
    server = argparse.ArgumentParser(add_help=False)
    server.add_argument("--url", help=f"server URL (env COURIER_URL; default {DEFAULT_URL})")
    auth = argparse.ArgumentParser(add_help=False, parents=[server])
    auth.add_argument("--token", help="bearer token (env COURIER_TOKEN; default from login)")

    login = subparsers.add_parser(
        "login", parents=[server], help="log in and save the token for the other commands"
    )
    login.add_argument("username")
    login.add_argument("--password", help="password (prompted for when omitted)")
    login.add_argument("--register", action="store_true", help="create the account first")
    login.set_defaults(func=_command(_login))

    logout = subparsers.add_parser("logout", parents=[auth], help="revoke the saved token")
    logout.set_defaults(func=_command(_logout))

    send = subparsers.add_parser("send", parents=[auth], help="send one message")
    send.add_argument("user", help="recipient")
    send.add_argument("text", nargs="+", help="message text; - reads it from stdin")
    send.add_argument("--client-id", help="idempotency key, to retry a send safely")
    send.add_argument("--timeout", type=float, default=30.0, help="give up after this many seconds")
    send.set_defaults(func=_command(_send))

    tail = subparsers.add_parser("tail", parents=[auth], help="follow your timeline live")
    tail.add_argument("--after", type=int, help="first replay the events after this seq")
    tail.add_argument("--count", type=int, help="exit after this many events")
    tail.add_argument("--json", action="store_true", help="print events as JSON lines")
    tail.add_argument("--typing", action="store_true", help="also print typing notices")
    tail.add_argument("--ack", action="store_true", help="acknowledge events as delivered")
    tail.add_argument(
        "--transport", choices=["ws", "longpoll"], default="ws", help="how to receive"
    )
    tail.set_defaults(func=_command(_tail))

    chat = subparsers.add_parser("chat", parents=[auth], help="chat with one user or a group")
    chat.add_argument("user", help="the other person, or a group id")
    chat.add_argument("--history", type=int, default=20, help="messages of history to show")
    chat.set_defaults(func=_command(_chat))

    me = subparsers.add_parser("me", parents=[auth], help="show (or set) your display name")
    me.add_argument("--name", help='set your display name ("" clears it)')
    me.set_defaults(func=_command(_me))

    users = subparsers.add_parser("users", parents=[auth], help="find people by name")
    users.add_argument("query", nargs="+", help="the start of a username or display name")
    users.add_argument("--limit", type=int, default=10, help="at most this many (max 20)")
    users.set_defaults(func=_command(_users))

    block = subparsers.add_parser("block", parents=[auth], help="block a user, or list blocks")
    block.add_argument("user", nargs="?", help="who (omitted: list the users you blocked)")
    block.set_defaults(func=_command(_block))
    unblock = subparsers.add_parser("unblock", parents=[auth], help="unblock a user")
    unblock.add_argument("user")
    unblock.set_defaults(func=_command(_block))

    group = subparsers.add_parser(
        "group",
        parents=[auth],
        help="groups: create NAME [USER...], list, members GID, add GID USER [ROLE],"
        " remove GID USER, leave GID, rename GID NAME, send GID TEXT..., open GID",
    )
    actions = ["create", "list", "members", "add", "remove", "leave", "rename", "send", "open"]
    group.add_argument("action", choices=actions)
    group.add_argument("args", nargs="*", help="the action's arguments")
    group.add_argument("--username", help="who leaves (default: the logged-in user)")
    group.add_argument("--history", type=int, default=20, help="open: messages of history")
    group.set_defaults(func=_command(_group))


def main(argv: list[str] | None = None) -> int:
    """The client commands on their own, as ``python -m courier.client.terminal``."""
    parser = argparse.ArgumentParser(prog="courier", description="Courier terminal client")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    func: Command = args.func
    return func(args)


if __name__ == "__main__":
    sys.exit(main())
