"""WalSync flushes the write-ahead log file that RocksDB is writing, across WAL switches."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from rocksdict import Rdict, WriteBatch, WriteOptions

from courier.adapters.rocks_store import RocksStore, _options
from courier.adapters.rocks_wal import WalSync
from courier.domain.errors import CourierError
from courier.domain.ids import IdGenerator
from courier.domain.ops import AppendMessage, CreateUser


def _newest_log(path: Path) -> Path:
    return max((p for p in path.glob("*.log")), key=lambda p: int(p.stem))


def _held(wal: WalSync) -> Path:
    return Path(os.readlink(f"/proc/self/fd/{wal._fd}"))


def _write(db: Rdict, key: bytes) -> None:
    batch = WriteBatch(raw_mode=True)
    batch.put(key, b"value")
    options = WriteOptions()
    options.sync = False
    db.write(batch, options)


def test_the_flushed_file_follows_the_log_rocksdb_writes(tmp_path: Path) -> None:
    opts = _options(8)
    db = Rdict(str(tmp_path), opts, column_families={"default": opts})
    wal = WalSync(str(tmp_path))
    try:
        _write(db, b"a")
        wal.sync()
        first = _held(wal)
        assert first == _newest_log(tmp_path)
        _write(db, b"b")
        wal.sync()  # the same file grew: flushed in place
        assert _held(wal) == first
        db.flush()  # a memtable switch starts a new log
        _write(db, b"c")
        wal.sync()
        assert _held(wal) == _newest_log(tmp_path) != first
        assert _held(wal).stat().st_size > 0
    finally:
        wal.close()
        db.close()
    reopened = Rdict(str(tmp_path), opts, column_families={"default": opts})
    try:
        assert [reopened.get(k) for k in (b"a", b"b", b"c")] == [b"value"] * 3
    finally:
        reopened.close()


async def test_a_failed_flush_fails_the_batch_and_refuses_later_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The batch was written but maybe not made durable: its senders hear `unavailable`,
    nothing is written twice, and no later write is answered until the store is reopened."""
    store = RocksStore(str(tmp_path / "store"))
    await store.open()
    try:
        await store.submit(CreateUser("alice", "hash", 1))
        await store.submit(CreateUser("bob", "hash", 1))

        def failing(fd: int) -> None:
            raise OSError(errno.EIO, "Input/output error")

        monkeypatch.setattr(os, "fdatasync", failing)
        ids = IdGenerator()
        op = AppendMessage("alice", "bob", "hi", "c1", 2, ids.new(2))
        with pytest.raises(CourierError) as first:
            await store.submit(op)
        assert first.value.code == "store_unavailable"
        monkeypatch.undo()
        with pytest.raises(CourierError):
            await store.submit(AppendMessage("alice", "bob", "again", "c2", 3, ids.new(3)))
        assert not store.healthy
        assert await store.head("bob") == 1  # written once, never doubled
    finally:
        await store.close()
    await store.open()  # a reopened store takes writes again
    try:
        retry = await store.submit(op)
        assert retry.duplicate and retry.seq == 1
    finally:
        await store.close()
