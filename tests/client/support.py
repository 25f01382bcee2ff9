"""Helpers of the client tests: a real `courier serve` subprocess, throwaway accounts, and a
loopback relay that sees the request lines a proxy in front of the server would log."""

from __future__ import annotations

import asyncio
import contextlib
import re
import uuid
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Self

from courier.client import Client
from tests.procs import ServerProcess

PASSWORD = "correct horse battery"


Server = ServerProcess


def new_username() -> str:
    return "u" + uuid.uuid4().hex[:12]


Users = Callable[..., Awaitable[Client]]

# A request line ends a line; on a keep-alive connection it may follow a body with no newline.
_REQUEST_LINE = re.compile(rb"(?:GET|HEAD|POST|PUT|PATCH|DELETE|OPTIONS) (\S+) HTTP/1\.[01]\r\Z")


class RecordingRelay:
    """A TCP relay on a loopback port that forwards every byte to the server unchanged and
    keeps the request targets (`/v1/ws?after=0`) it saw, as an access log would show them."""

    def __init__(self, server_port: int) -> None:
        self.server_port = server_port
        self.port = 0
        self._targets: list[str] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._open: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def targets(self) -> list[str]:
        """Every request target sent through the relay so far, in the order they arrived."""
        return list(self._targets)

    def drop_all(self) -> None:
        """Cut every open connection, as a proxy that restarts would."""
        for writer in list(self._open):
            writer.transport.abort()

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._server is not None:
            self._server.close()
        self.drop_all()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.server_port)
        except OSError:
            writer.close()
            self._tasks.discard(task)
            return
        self._open.update((writer, up_writer))
        try:
            await asyncio.gather(
                self._pipe(reader, up_writer, self._targets), self._pipe(up_reader, writer, None)
            )
        finally:
            for w in (writer, up_writer):
                w.close()
                self._open.discard(w)
            self._tasks.discard(task)

    @staticmethod
    async def _pipe(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, targets: list[str] | None
    ) -> None:
        pending = b""  # the unfinished last line of what came so far
        with contextlib.suppress(OSError, RuntimeError):
            while data := await reader.read(65536):
                if targets is not None:
                    *lines, pending = (pending + data).split(b"\n")
                    for line in lines:
                        if m := _REQUEST_LINE.search(line):
                            targets.append(m.group(1).decode())
                    pending = pending[-8192:]
                writer.write(data)
                await writer.drain()
        with contextlib.suppress(OSError, RuntimeError):
            writer.write_eof()
