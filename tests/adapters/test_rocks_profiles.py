"""The RocksDB store's people-search index on stores written by older layouts."""

from __future__ import annotations

from pathlib import Path

import pytest
from rocksdict import Options, Rdict

from courier.adapters import rocks_keys as K
from courier.adapters.rocks_store import RocksStore
from courier.domain.ops import CreateUser


async def _store_with_users(path: Path, *names: str) -> None:
    store = RocksStore(str(path))
    await store.open()
    for name in names:
        assert await store.submit(CreateUser(name, "hash", 1))
    await store.close()


def _rewind_to_sessions_format(path: Path) -> None:
    """As a store written before people search: format 1 and no term keys."""
    db = Rdict(str(path), Options(raw_mode=True))
    try:
        terms = [k for k, _ in db.items(from_key=b"x") if k.startswith(b"x")]
        for key in terms:
            del db[key]
        db[K.FORMAT_KEY] = K.pack_u64(K.FORMAT_SESSIONS)
    finally:
        db.close()


async def test_an_older_store_indexes_its_users_at_open(tmp_path: Path) -> None:
    path = tmp_path / "store"
    await _store_with_users(path, "alice", "alfred", "bob")
    _rewind_to_sessions_format(path)
    store = RocksStore(str(path))
    await store.open()
    try:
        assert [u.username for u in await store.search_users("al", 10)] == ["alfred", "alice"]
        assert store.db.get(K.FORMAT_KEY) == K.pack_u64(K.FORMAT_PROFILES)
    finally:
        await store.close()


async def test_a_store_of_a_newer_format_is_refused_with_a_clear_message(
    tmp_path: Path,
) -> None:
    path = tmp_path / "store"
    await _store_with_users(path, "alice")
    db = Rdict(str(path), Options(raw_mode=True))
    db[K.FORMAT_KEY] = K.pack_u64(K.FORMAT_PROFILES + 1)
    db.close()
    store = RocksStore(str(path))
    with pytest.raises(RuntimeError, match="newer than this Courier reads"):
        await store.open()
    await store.close()
