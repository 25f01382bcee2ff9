"""The RocksDB store's tuning (block cache, partitioned bloom filters and index) holds on every
open, not only the first: a reopened store silently on RocksDB's defaults, or with whole-file
indexes, reads a hundred times slower once it is large."""

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
    assert "index_type: 2" in log  # two-level (partitioned) index
    assert "partition_filters: 1" in log
    assert "pin_top_level_index_and_filter: 1" in log
