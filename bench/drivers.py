"""Driver processes: each runs its own event loop; the parent starts them together.

Protocol between parent and workers: every worker prepares (connects), reports `ready`
and waits for `go`; the parent takes its baseline readings, stamps a common start time
(perf_counter_ns is the system-wide monotonic clock) and sets `go`. A worker may report
`held` and wait for `release` (to hold connections while the parent measures), and ends
with `done` and its result dict.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import queue
import time
import traceback
from collections.abc import Awaitable, Callable, Coroutine
from multiprocessing.sharedctypes import Synchronized, SynchronizedArray
from typing import Any, TypeVar

import uvloop

from bench.common import Result, progress

T = TypeVar("T")


class WorkerLink:
    """The worker's side of the parent protocol."""

    def __init__(
        self,
        index: int,
        messages: Any,
        go: Any,
        release: Any,
        start_ns: Synchronized[int],
        counters: SynchronizedArray[int],
    ) -> None:
        self.index = index
        self._messages = messages
        self._go = go
        self._release = release
        self._start_ns = start_ns
        self._counters = counters

    async def ready(self, wait_s: float = 600) -> int:
        """Report ready, wait for go; returns the common start time (perf_counter_ns)."""
        self._messages.put(("ready", self.index, None))
        if not await asyncio.to_thread(self._go.wait, wait_s):
            raise TimeoutError("no go from the parent")
        return int(self._start_ns.value)

    async def held(self, data: Result, wait_s: float = 600) -> None:
        self._messages.put(("held", self.index, data))
        if not await asyncio.to_thread(self._release.wait, wait_s):
            raise TimeoutError("no release from the parent")

    def count(self, n: int) -> None:
        self._counters[self.index] = n


def run_loop(coro: Coroutine[Any, Any, T]) -> T:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


WorkerFn = Callable[[Any, WorkerLink], Result]


def _entry(fn: WorkerFn, payload: Any, link: WorkerLink) -> None:
    try:
        started = time.process_time()
        result = fn(payload, link)
        result.setdefault("process_cpu_s", time.process_time() - started)
        link._messages.put(("done", link.index, result))
    except BaseException:
        link._messages.put(("error", link.index, traceback.format_exc()))


async def run_workers(
    fn: WorkerFn,
    payloads: list[Any],
    *,
    label: str,
    total: int,
    budget_s: float,
    on_go: Callable[[], None] | None = None,
    on_held: Callable[[list[Result]], Awaitable[None]] | None = None,
) -> tuple[list[Result], list[Result]]:
    """Run `fn(payload, link)` in one spawned process per payload; returns (held, done)."""
    ctx = mp.get_context("spawn")
    messages = ctx.Queue()
    go = ctx.Event()
    release = ctx.Event()
    start_ns = ctx.Value("q", 0, lock=False)
    counters = ctx.Array("q", len(payloads), lock=False)
    procs = [
        ctx.Process(
            target=_entry,
            args=(fn, p, WorkerLink(i, messages, go, release, start_ns, counters)),
            daemon=True,
        )
        for i, p in enumerate(payloads)
    ]
    for proc in procs:
        proc.start()
    n = len(procs)
    deadline = time.monotonic() + budget_s
    states: dict[str, dict[int, Any]] = {"ready": {}, "held": {}, "done": {}}

    async def next_message() -> tuple[str, int, Any] | None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{label}: driver processes did not finish in {budget_s:.0f} s")
        try:
            msg: tuple[str, int, Any] = await asyncio.to_thread(messages.get, True, 0.25)
        except queue.Empty:
            return None
        kind, index, data = msg
        if kind == "error":
            raise RuntimeError(f"{label}: driver process {index} failed:\n{data}")
        states[kind][index] = data
        return msg

    try:
        while len(states["ready"]) < n:
            await next_message()
        if on_go is not None:
            on_go()
        start_ns.value = time.perf_counter_ns()
        go.set()
        with progress() as bar:
            task = bar.add_task(label, total=total)
            released = on_held is None
            while len(states["done"]) < n:
                await next_message()
                bar.update(task, completed=sum(counters[:]))
                if not released and len(states["held"]) == n:
                    assert on_held is not None
                    await on_held([states["held"][i] for i in range(n)])
                    release.set()
                    released = True
            bar.update(task, completed=sum(counters[:]))
    finally:
        go.set()
        release.set()
        for proc in procs:
            proc.join(timeout=20)
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=5)
        with contextlib.suppress(Exception):
            messages.close()
    held = [states["held"][i] for i in sorted(states["held"])]
    done = [states["done"][i] for i in range(n)]
    return held, done
