"""The shard function is a contract with the data already stored: it must never change."""

from __future__ import annotations

import os
import subprocess
import sys

from courier.domain.shards import LOGICAL_SHARDS, shard_of


def test_known_values_are_pinned() -> None:
    assert LOGICAL_SHARDS == 1000
    assert [shard_of(u) for u in ("alice", "bob", "carol", "dave")] == [729, 842, 305, 655]
    assert shard_of(bytes(32)) == 201
    assert shard_of("alice") == shard_of(b"alice"), "a username is placed by its UTF-8 bytes"


def test_every_shard_is_reachable_and_spread_is_even() -> None:
    counts = [0] * LOGICAL_SHARDS
    for i in range(100_000):
        counts[shard_of(f"user{i}")] += 1
    assert min(counts) > 50 and max(counts) < 160  # ~100 each


def test_the_same_in_another_process_with_another_hash_seed() -> None:
    code = "from courier.domain.shards import shard_of; print(shard_of('alice'), shard_of('bob'))"
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["729", "842"]
