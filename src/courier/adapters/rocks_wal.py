"""Durable commits without holding the GIL through the disk flush.

rocksdict keeps the GIL for the whole of `Rdict.write`, so a write with `sync=True` stops the
event loop for as long as the WAL's fdatasync takes (0.5 ms to tens of ms). The writer thread
therefore writes with `sync=False` (the record reaches the WAL file in the OS page cache, as
RocksDB writes each WAL record through at once) and then makes it durable with
`os.fdatasync`, which releases the GIL, on the WAL file the record went to. `sent` is still
answered only after that flush: the same guarantee as RocksDB's own `sync=True`.

Which file: RocksDB appends to one WAL at a time and starts a new one (a higher number) only
inside a write, when it switches memtables; Courier's writer thread is the only writer. So a
write went to the file held here if that file grew, and otherwise to the newest `*.log` in
the store's folder (whose directory entry is then flushed too, once).
"""

from __future__ import annotations

import os
from pathlib import Path


class WalSync:
    def __init__(self, path: str) -> None:
        self._dir = Path(path)
        self._fd = -1
        self._size = 0

    def sync(self) -> None:
        """Make everything written so far durable; call after each write that wrote
        something, before answering (an empty write may leave the WAL as it was, which
        would send this looking for a newer file)."""
        if self._fd >= 0:
            size = os.fstat(self._fd).st_size
            if size != self._size:
                self._size = size
                os.fdatasync(self._fd)
                return
        self._follow_newest()

    def _follow_newest(self) -> None:
        logs = [(int(p.stem), p) for p in self._dir.glob("*.log") if p.stem.isdigit()]
        if not logs:
            raise FileNotFoundError(f"no write-ahead log in {self._dir}")
        _number, newest = max(logs)
        fd = os.open(newest, os.O_RDONLY)
        os.fdatasync(fd)
        self._sync_dir()  # a new WAL's directory entry must survive a power loss too
        self.close()
        self._fd = fd
        self._size = os.fstat(fd).st_size

    def _sync_dir(self) -> None:
        fd = os.open(self._dir, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
