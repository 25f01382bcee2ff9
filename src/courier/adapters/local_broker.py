"""The embedded default broker: one process, so "the node holding the user" is this one."""

from __future__ import annotations

from courier.ports import Envelope, Sink


def _drop(envelope: Envelope) -> None:
    del envelope


class LocalBroker:
    def __init__(self) -> None:
        self._sink: Sink = _drop

    async def start(self, sink: Sink) -> None:
        self._sink = sink

    async def wait_ready(self) -> None:
        """Always ready."""

    async def close(self) -> None:
        self._sink = _drop

    @property
    def healthy(self) -> bool:
        return True

    def publish(self, envelope: Envelope) -> None:
        self._sink(envelope)

    def watch(self, user: str) -> None:
        """Nothing to subscribe to: every envelope is already local."""

    def unwatch(self, user: str) -> None:
        """Nothing to unsubscribe from."""

    def watch_group(self, gid: str) -> None:
        """Every group envelope is already local."""

    def unwatch_group(self, gid: str) -> None:
        """Nothing to unsubscribe from."""

    async def settled(self) -> None:
        """Always settled."""

    async def held_elsewhere(self, user: str) -> bool:
        """There is no other node."""
        return False
