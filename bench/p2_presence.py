"""P2: what presence costs per connect, in-process (RocksDB store, local broker, the
registry and the presence service; no sockets): one user with 1,000 contacts (quick: 200),
each contact online with one device.

Two phases:
- storm: the user's device reconnects 500 times in a row, within the grace period each time
  (a flapping mobile connection); the coalescing must keep this near zero frames;
- changes: the user comes online and, after the grace period, goes offline, 10 times; each
  change tells every contact once.
Reports presence frames handed to contacts' devices and CPU seconds per connect in each phase.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import Result, Settings, console, rnd
from courier.adapters.local_broker import LocalBroker
from courier.adapters.rocks_store import RocksStore
from courier.domain.ops import AppendMessage, CreateUser
from courier.metrics import Metrics
from courier.ports import TYPING, Envelope
from courier.service.presence import Presence
from courier.service.registry import Registry

GRACE = 0.05
STORM = 500
CHANGES = 10


@dataclass(eq=False)
class Device:
    user: str
    conn_id: str
    token_hash: bytes = b""
    frames: list[int] = field(default_factory=lambda: [0])

    def deliver(self, envelope: Envelope) -> None:
        if envelope.kind == TYPING:
            self.frames[0] += 1

    def revoke(self) -> None:
        pass


async def settle(presence: Presence) -> None:
    await presence.idle()


async def run(settings: Settings) -> Result:
    contacts = 200 if settings.quick else 1000
    with tempfile.TemporaryDirectory(prefix="courier-p2-") as tmp:
        store = RocksStore(str(Path(tmp) / "store"))
        await store.open()
        try:
            return await _measure(store, contacts)
        finally:
            await store.close()


async def _measure(store: RocksStore, contacts: int) -> Result:
    metrics = Metrics()
    broker = LocalBroker()
    registry = Registry(broker, metrics, 32)
    await broker.start(registry.dispatch)
    names = [f"contact{i:05d}" for i in range(contacts)]
    await store.submit(CreateUser("hub", "x", 1))
    await asyncio.gather(*(store.submit(CreateUser(n, "x", 1)) for n in names))
    await asyncio.gather(
        *(store.submit(AppendMessage(n, "hub", "hi", "c", 1, f"id{n}")) for n in names)
    )
    counter = [0]
    for n in names:
        registry.add(Device(n, "d-" + n, frames=counter))
    presence = Presence(store, broker, metrics, local_count=registry.count, grace_s=GRACE)
    registry.presence = presence
    console.log(f"P2: hub with {contacts} contacts online")

    # Storm: reconnect within the grace period, again and again.
    counter[0] = 0
    device = Device("hub", "h0")
    registry.add(device)
    await settle(presence)
    first_online = counter[0]
    counter[0] = 0
    cpu0 = time.process_time()
    for k in range(STORM):
        registry.remove(device)
        await asyncio.sleep(0)
        device = Device("hub", f"h{k + 1}")
        registry.add(device)
        await settle(presence)
    storm_cpu = time.process_time() - cpu0
    storm_frames = counter[0]
    registry.remove(device)
    await asyncio.sleep(GRACE * 3)
    await settle(presence)

    # Real changes: online, then offline after the grace period.
    counter[0] = 0
    cpu = 0.0
    for k in range(CHANGES):
        cpu0 = time.process_time()
        device = Device("hub", f"c{k}")
        registry.add(device)
        await settle(presence)
        registry.remove(device)
        cpu += time.process_time() - cpu0
        await asyncio.sleep(GRACE * 1.5)
        cpu0 = time.process_time()
        await settle(presence)
        cpu += time.process_time() - cpu0
    change_frames = counter[0]
    presence.close()
    return {
        "workload": "P2",
        "contacts": contacts,
        "first_online_frames": first_online,
        "storm_connects": STORM,
        "storm_frames": storm_frames,
        "storm_frames_per_connect": rnd(storm_frames / STORM, 3),
        "storm_cpu_ms_per_connect": rnd(storm_cpu * 1000 / STORM, 3),
        "changes": 2 * CHANGES,
        "frames_per_change": rnd(change_frames / (2 * CHANGES), 1),
        "cpu_ms_per_change": rnd(cpu * 1000 / (2 * CHANGES), 3),
    }
