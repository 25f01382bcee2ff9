"""The cluster broker: NATS carries each envelope to whichever node holds the user's connections.

A node subscribes to a subject for every user it holds (`courier.u.<user>`), so NATS delivers an
envelope only to the nodes that need it; docs/cluster-routing.md has the measurements behind
that choice and the per-logical-shard alternative (`courier.s.<shard>`, filtered locally), which
stays selectable for comparison.

NATS is never on the critical path of a send: the message is already durable when it is
published, so while NATS is unreachable envelopes are dropped and counted, and clients catch up
by seq. Revocations are the exception (no seq recovers them): they wait in a bounded backlog and
go out once NATS is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Iterator
from typing import Literal

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import (
    NoRespondersError,
    SlowConsumerError,
    StaleConnectionError,
    UnexpectedEOF,
)
from nats.errors import TimeoutError as NatsTimeoutError
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from courier.domain.groups import valid_group_id
from courier.domain.names import valid_username
from courier.domain.shards import shard_of
from courier.metrics import Metrics
from courier.ports import GROUP, PRESENCE_Q, RESYNC, REVOKE, Envelope, Sink

log = logging.getLogger(__name__)

USER_PREFIX = "courier.u."
SHARD_PREFIX = "courier.s."
GROUP_PREFIX = "courier.g."

Scheme = Literal["user", "shard"]

_CONNECTION_LOST = (OSError, TimeoutError, UnexpectedEOF, StaleConnectionError)
PRESENCE_WAIT = 0.25  # seconds a presence question waits for a node to answer


def user_token(user: str) -> str:
    """`user` as one NATS subject token.

    "." separates tokens, so a valid username has its dots replaced by "~" (a character no
    username contains, so the mapping stays one-to-one and readable in NATS monitoring). Anything
    else is hex-encoded behind a "~", so no input can smuggle a wildcard, a separator or
    whitespace into a subject.
    """
    if valid_username(user):
        return user.replace(".", "~")
    return "~" + user.encode().hex()


def user_subject(user: str) -> str:
    return USER_PREFIX + user_token(user)


def shard_subject(user: str) -> str:
    return SHARD_PREFIX + str(shard_of(user))


def group_subject(gid: str) -> str:
    """One subject per group: a node holding any member subscribes, so a group message is one
    NATS message per interested node, whatever the number of members there."""
    return GROUP_PREFIX + (gid if valid_group_id(gid) else "~" + gid.encode().hex())


def _discard(envelope: Envelope) -> None:
    del envelope


class BrokerCounters(Collector):
    """Per-envelope counters as plain ints (no lock on the hot path), read at scrape time."""

    def __init__(self) -> None:
        self.published = 0
        self.received = 0
        self.filtered = 0
        self.dropped_disconnected = 0
        self.dropped_overflow = 0
        self.dropped_slow = 0
        self.dropped_error = 0
        self.revokes_dropped = 0
        self.sink_errors = 0
        self.undecodable = 0
        self.subscriptions = 0
        self.group_published = 0
        self.group_received = 0

    @property
    def dropped(self) -> int:
        return (
            self.dropped_disconnected
            + self.dropped_overflow
            + self.dropped_slow
            + self.dropped_error
        )

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        yield CounterMetricFamily(
            "courier_broker_published",
            "Envelopes handed to NATS by this node.",
            value=self.published,
        )
        yield CounterMetricFamily(
            "courier_broker_group_published",
            "Group envelopes (one per group message, for every member) handed to NATS.",
            value=self.group_published,
        )
        yield CounterMetricFamily(
            "courier_broker_group_received",
            "Group envelopes received from NATS.",
            value=self.group_received,
        )
        yield CounterMetricFamily(
            "courier_broker_received",
            "Envelopes received from NATS, before local filtering.",
            value=self.received,
        )
        yield CounterMetricFamily(
            "courier_broker_filtered",
            "Envelopes received for a user this node does not hold (shard subjects only).",
            value=self.filtered,
        )
        dropped = CounterMetricFamily(
            "courier_broker_dropped",
            "Envelopes lost on the way (clients recover them by seq).",
            labels=["reason"],
        )
        dropped.add_metric(["disconnected"], self.dropped_disconnected)
        dropped.add_metric(["overflow"], self.dropped_overflow)
        dropped.add_metric(["slow_consumer"], self.dropped_slow)
        dropped.add_metric(["error"], self.dropped_error)
        yield dropped
        yield CounterMetricFamily(
            "courier_broker_revokes_dropped",
            "Revocations lost because the backlog kept while NATS was down was full.",
            value=self.revokes_dropped,
        )
        yield CounterMetricFamily(
            "courier_broker_sink_errors",
            "Envelopes whose local delivery raised.",
            value=self.sink_errors,
        )
        yield CounterMetricFamily(
            "courier_broker_undecodable",
            "Messages on a courier subject that were not an envelope.",
            value=self.undecodable,
        )
        yield GaugeMetricFamily(
            "courier_broker_subscriptions",
            "NATS subscriptions this node holds.",
            value=self.subscriptions,
        )


class NatsBroker:
    """Broker port over NATS core (at-most-once, no JetStream: the store is the durable log)."""

    def __init__(
        self,
        url: str,
        *,
        node_id: str,
        metrics: Metrics | None = None,
        scheme: Scheme = "user",
        reconnect_wait: int = 1,
        max_outbox: int = 10_000,
        max_revoke_backlog: int = 10_000,
    ) -> None:
        self.url = url
        self.node_id = node_id
        self.scheme: Scheme = scheme
        self.counters = BrokerCounters()
        self._metrics = metrics
        if metrics is not None:
            metrics.registry.register(self.counters)
            metrics.backend_up.labels("broker").set(0)
        self._reconnect_wait = reconnect_wait
        self._subject = user_subject if scheme == "user" else shard_subject
        self._encode = msgspec.msgpack.Encoder().encode
        self._decode = msgspec.msgpack.Decoder(Envelope).decode
        self._sink: Sink = _discard
        self._nc: Client | None = None
        self._closing = False
        self._tasks: list[asyncio.Task[None]] = []
        # Users this node holds, and per subject how many of them map onto it (1 per user
        # subject; up to all of a shard's users per shard subject).
        self._watched: set[str] = set()
        self._groups: dict[str, int] = {}  # group -> members held here
        self._wanted: dict[str, int] = {}
        self._subs: dict[str, Subscription] = {}
        self._dirty: set[str] = set()
        self._resync = asyncio.Event()
        self._synced = asyncio.Event()  # set each time the subscription loop catches up
        self._up = asyncio.Event()
        self._outbox: deque[tuple[str, bytes, bool]] = deque()
        self._max_outbox = max_outbox
        self._outbox_ready = asyncio.Event()
        self._outbox_empty = asyncio.Event()
        self._outbox_empty.set()
        self._revokes: deque[tuple[str, bytes, bool]] = deque()
        self._max_revokes = max_revoke_backlog
        self._timers: set[asyncio.TimerHandle] = set()
        self._outage_logged = False

    # -- the Broker port ---------------------------------------------------------------------

    async def start(self, sink: Sink) -> None:
        """Returns at once: the connection is made (and remade) in the background, forever."""
        self._sink = sink
        self._closing = False
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._connection_loop(), name=f"nats-broker-{self.node_id}"),
            loop.create_task(self._subscription_loop(), name=f"nats-subs-{self.node_id}"),
            loop.create_task(self._publish_loop(), name=f"nats-pub-{self.node_id}"),
        ]

    async def wait_ready(self) -> None:
        await self._up.wait()

    async def close(self) -> None:
        self._closing = True
        nc = self._nc
        if nc is not None and nc.is_connected:
            # Best effort: give queued envelopes a moment to leave before the socket closes.
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1.0):
                    await self.flush()
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        if nc is not None and not nc.is_closed:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(nc.close(), 5.0)
        self._nc = None
        self._subs.clear()
        self.counters.subscriptions = 0
        self._sink = _discard
        self._set_up(False)

    @property
    def healthy(self) -> bool:
        nc = self._nc
        return nc is not None and nc.is_connected

    def publish(self, envelope: Envelope) -> None:
        """Never blocks and never raises: local holders get it now, other nodes via NATS."""
        group = envelope.kind == GROUP
        if group or envelope.user in self._watched:
            # no_echo keeps NATS from sending our own publishes back to us, so this is the
            # only local delivery, and it still works while NATS is down. (A group envelope
            # always: the registry picks the members held here.)
            self._deliver(envelope)
        if group:
            self.counters.group_published += 1
        try:
            subject = group_subject(envelope.user) if group else self._subject(envelope.user)
            item = (subject, self._encode(envelope), envelope.kind == REVOKE)
        except Exception:
            log.exception("cannot encode an envelope for %r", envelope.user)
            return
        if not self.healthy:
            self._hold_or_drop(item)
            return
        if len(self._outbox) >= self._max_outbox:
            if item[2]:
                self._hold_or_drop(item)
            else:
                self.counters.dropped_overflow += 1
            return
        self._outbox.append(item)
        self._outbox_empty.clear()
        self._outbox_ready.set()

    def watch(self, user: str) -> None:
        if user in self._watched:
            return
        self._watched.add(user)
        subject = self._subject(user)
        count = self._wanted.get(subject, 0) + 1
        self._wanted[subject] = count
        if count == 1:
            self._dirty.add(subject)
            self._resync.set()

    def unwatch(self, user: str) -> None:
        if user not in self._watched:
            return
        self._watched.discard(user)
        self._unwant(self._subject(user))

    def watch_group(self, gid: str) -> None:
        self._groups[gid] = self._groups.get(gid, 0) + 1
        if self._groups[gid] == 1:
            subject = group_subject(gid)
            self._wanted[subject] = self._wanted.get(subject, 0) + 1
            self._dirty.add(subject)
            self._resync.set()

    def unwatch_group(self, gid: str) -> None:
        count = self._groups.get(gid, 0) - 1
        if count > 0:
            self._groups[gid] = count
            return
        if self._groups.pop(gid, None) is not None:
            self._unwant(group_subject(gid))

    def _unwant(self, subject: str) -> None:
        count = self._wanted.get(subject, 0) - 1
        if count > 0:
            self._wanted[subject] = count
            return
        self._wanted.pop(subject, None)
        self._dirty.add(subject)
        self._resync.set()

    async def held_elsewhere(self, user: str) -> bool:
        """A request on the user's own subject: only the nodes holding the user are
        subscribed to it, and those other than this one answer. With no subscriber NATS says
        so at once; a node of the shard scheme that does not hold the user stays silent, so
        silence for PRESENCE_WAIT seconds is "no"."""
        nc = self._nc
        if nc is None or not nc.is_connected:
            return False
        question = self._encode(Envelope(user, PRESENCE_Q, skip=self.node_id))
        try:
            await nc.request(self._subject(user), question, timeout=PRESENCE_WAIT)
        except (NoRespondersError, NatsTimeoutError, TimeoutError, *_CONNECTION_LOST):
            return False
        return True

    async def settled(self) -> None:
        """Waits until every wanted subject is subscribed and NATS has seen it (a round
        trip). Bound it with asyncio.timeout()."""
        while not self.in_sync():
            self._synced.clear()
            await self._synced.wait()
        nc = self._nc
        if nc is not None and nc.is_connected:
            await nc.flush(timeout=5)

    # -- introspection (tests, bench, ops) -----------------------------------------------------

    @property
    def subscription_count(self) -> int:
        return len(self._subs)

    @property
    def queued(self) -> int:
        """Envelopes waiting to be handed to NATS (bounded by max_outbox)."""
        return len(self._outbox)

    async def flush(self) -> None:
        """Waits for a round trip to NATS, so everything sent before has reached the server.

        Bound it with asyncio.timeout(): with NATS down the outbox only empties by dropping.
        """
        await self._outbox_empty.wait()
        nc = self._nc
        if nc is not None and nc.is_connected:
            await nc.flush(timeout=60)

    def in_sync(self) -> bool:
        """True when every wanted subject is subscribed on a live connection, and no other."""
        return self.healthy and not self._dirty and self._subs.keys() == self._wanted.keys()

    # -- connection ----------------------------------------------------------------------------

    async def _connection_loop(self) -> None:
        """One client per connection lifetime; a client NATS closed for good is replaced."""
        while not self._closing:
            nc = Client()
            closed = asyncio.Event()

            async def on_closed(closed: asyncio.Event = closed) -> None:
                closed.set()

            self._nc = nc
            try:
                await nc.connect(
                    self.url,
                    name=f"courier-{self.node_id}",
                    no_echo=True,
                    allow_reconnect=True,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=self._reconnect_wait,
                    connect_timeout=2,
                    ping_interval=10,
                    max_outstanding_pings=3,
                    pending_size=1024 * 1024,
                    flush_timeout=5.0,
                    error_cb=self._on_error,
                    disconnected_cb=self._on_disconnected,
                    reconnected_cb=self._on_reconnected,
                    closed_cb=on_closed,
                )
            except asyncio.CancelledError:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(nc.close(), 1.0)
                raise
            except Exception as e:
                log.warning("NATS client failed to connect to %s: %r", self.url, e)
                with contextlib.suppress(Exception):
                    await nc.close()
                await asyncio.sleep(self._reconnect_wait)
                continue
            # A fresh client holds no subscriptions: make every wanted one.
            self._subs.clear()
            self.counters.subscriptions = 0
            self._dirty.update(self._wanted)
            await self._on_reconnected()
            await closed.wait()
            if not self._closing:
                log.warning("NATS connection closed for good; starting a new one")
            self._set_up(False)

    async def _on_reconnected(self) -> None:
        if self._outage_logged:
            log.warning("NATS reachable again at %s", self.url)
        self._outage_logged = False
        self._set_up(True)
        self._resync.set()
        self._spawn_resync()
        if self._revokes:
            held = list(self._revokes)
            self._revokes.clear()
            self._send_first(held)
            self._send_again_later(held)

    def _spawn_resync(self) -> None:
        """Envelopes published while this node was cut off are lost: once NATS has our
        subscriptions again (a PING/PONG round trip), tell every local connection to catch
        up from the store, so nobody waits for the next event to notice a gap."""

        async def resync() -> None:
            nc = self._nc
            if nc is not None:
                with contextlib.suppress(Exception):
                    await nc.flush(timeout=5)
            self._sink(Envelope("", RESYNC))

        task = asyncio.get_running_loop().create_task(resync())
        self._tasks.append(task)
        task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task[None]) -> None:
        if task in self._tasks:
            self._tasks.remove(task)

    def _send_again_later(self, items: list[tuple[str, bytes, bool]]) -> None:
        """Other nodes may reconnect a moment after this one and miss the first copy of a held
        revocation; revoking twice is harmless, so send once more when they have had time to."""
        handle: asyncio.TimerHandle

        def fire() -> None:
            self._timers.discard(handle)
            self._send_first(items)

        delay = 3 * self._reconnect_wait + 1
        handle = asyncio.get_running_loop().call_later(delay, fire)
        self._timers.add(handle)

    def _send_first(self, items: list[tuple[str, bytes, bool]]) -> None:
        """Puts `items` at the head of the outbox, or back in the backlog if NATS is down."""
        if not self.healthy:
            for item in items:
                self._hold_or_drop(item)
            return
        self._outbox.extendleft(reversed(items))
        self._outbox_empty.clear()
        self._outbox_ready.set()

    async def _on_disconnected(self) -> None:
        self._set_up(False)
        self._note_outage("connection lost")

    async def _on_error(self, e: Exception) -> None:
        if isinstance(e, SlowConsumerError):
            self.counters.dropped_slow += 1
        elif isinstance(e, _CONNECTION_LOST) or not self.healthy:
            self._note_outage(repr(e))
        else:
            log.warning("NATS error at %s: %r", self.url, e)

    def _note_outage(self, reason: str) -> None:
        """One warning per outage, not one per reconnect attempt."""
        if self._closing or self._outage_logged:
            return
        self._outage_logged = True
        log.warning(
            "NATS unreachable at %s (%s); envelopes are dropped until it is back", self.url, reason
        )

    def _set_up(self, up: bool) -> None:
        if up:
            self._up.set()
        else:
            self._up.clear()
        if self._metrics is not None:
            self._metrics.backend_up.labels("broker").set(1 if up else 0)

    # -- subscriptions -------------------------------------------------------------------------

    async def _subscription_loop(self) -> None:
        """Brings the subscriptions in line with the wanted subjects whenever connected.

        watch/unwatch are synchronous, so they only record what is wanted; this loop makes the
        NATS calls, coalescing a watch and unwatch of the same user in between.
        """
        while True:
            await self._resync.wait()
            self._resync.clear()
            while self._dirty:
                nc = self._nc
                if nc is None or not nc.is_connected:
                    break  # _on_reconnected wakes us up again
                subject = self._dirty.pop()
                try:
                    await self._sync_subject(nc, subject)
                except asyncio.CancelledError:
                    raise
                except Exception as e:
                    self._dirty.add(subject)
                    log.warning("NATS subscription change on %s failed: %r", subject, e)
                    await asyncio.sleep(self._reconnect_wait)
            self.counters.subscriptions = len(self._subs)
            self._synced.set()

    async def _sync_subject(self, nc: Client, subject: str) -> None:
        wanted = subject in self._wanted
        sub = self._subs.get(subject)
        if wanted and sub is None:
            self._subs[subject] = await nc.subscribe(
                subject,
                cb=self._on_msg,
                pending_msgs_limit=65_536,
                pending_bytes_limit=16 * 1024 * 1024,
            )
        elif not wanted and sub is not None:
            del self._subs[subject]
            await sub.unsubscribe()

    # -- delivery ------------------------------------------------------------------------------

    async def _on_msg(self, msg: Msg) -> None:
        self.counters.received += 1
        try:
            envelope = self._decode(msg.data)
        except msgspec.DecodeError:
            self.counters.undecodable += 1
            log.debug("undecodable envelope on %s (%d bytes)", msg.subject, len(msg.data))
            return
        if envelope.kind == PRESENCE_Q:
            if msg.reply and envelope.user in self._watched and envelope.skip != self.node_id:
                with contextlib.suppress(*_CONNECTION_LOST):
                    await msg.respond(b"1")
            return
        if envelope.kind == GROUP:
            self.counters.group_received += 1
            if envelope.user not in self._groups:
                self.counters.filtered += 1
                return
        elif envelope.user not in self._watched:
            self.counters.filtered += 1
            return
        self._deliver(envelope)

    def _deliver(self, envelope: Envelope) -> None:
        try:
            self._sink(envelope)
        except Exception:
            self.counters.sink_errors += 1
            log.exception("broker sink failed for an envelope of kind %d", envelope.kind)

    # -- publishing ----------------------------------------------------------------------------

    def _hold_or_drop(self, item: tuple[str, bytes, bool]) -> None:
        if not item[2]:
            self.counters.dropped_disconnected += 1
        elif len(self._revokes) < self._max_revokes:
            self._revokes.append(item)
        else:
            self.counters.revokes_dropped += 1

    async def _publish_loop(self) -> None:
        """Feeds the outbox to nats-py, whose publish is a coroutine while ours must not be."""
        while True:
            await self._outbox_ready.wait()
            self._outbox_ready.clear()
            while self._outbox:
                nc = self._nc
                if nc is None or not nc.is_connected:
                    while self._outbox:
                        self._hold_or_drop(self._outbox.popleft())
                    break
                item = self._outbox.popleft()
                try:
                    await nc.publish(item[0], item[1])
                except asyncio.CancelledError:
                    raise
                except Exception as e:
                    if self.healthy:
                        self.counters.dropped_error += 1
                        log.warning("NATS publish on %s failed: %r", item[0], e)
                    else:
                        self._hold_or_drop(item)
                else:
                    self.counters.published += 1
            self._outbox_empty.set()
