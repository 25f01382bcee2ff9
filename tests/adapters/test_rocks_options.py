"""The RocksDB store's tuning (block cache, bloom filters) holds on every open, not only the
first: a reopened store silently on RocksDB's defaults reads ten to a hundred times slower."""

from __future__ import annotations

from pathlib import Path

from courier.adapters.rocks_store import RocksStore


async def test_the_block_cache_and_filters_apply_after_a_reopen(tmp_path: Path) -> None:
    for _ in range(3):  # created, then reopened twice
        store = RocksStore(str(tmp_path / "store"), cache_mb=64)
        await store.open()
        try:
            capacity = store.db.property_value("rocksdb.block-cache-capacity")
            assert capacity == str(64 * 1024 * 1024)
        finally:
            await store.close()
    log = (tmp_path / "store" / "LOG").read_text()
    assert "filter_policy: bloomfilter" in log
    assert f"capacity : {64 * 1024 * 1024}" in log
