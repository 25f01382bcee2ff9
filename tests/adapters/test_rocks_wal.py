"""WalSync flushes the write-ahead log file that RocksDB is writing, across WAL switches."""

from __future__ import annotations

import os
from pathlib import Path

from rocksdict import Rdict, WriteBatch, WriteOptions

from courier.adapters.rocks_store import _options
from courier.adapters.rocks_wal import WalSync


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
