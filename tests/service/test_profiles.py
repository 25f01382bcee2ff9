"""Profiles and people search, on each store: display names, prefix search over usernames
and display names (folded: case and accents do not matter), bounds and the rate limit."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from courier.domain.errors import CourierError
from courier.domain.profiles import fold, query_term, search_terms
from courier.service.profiles import Profiles
from tests.service.conftest import Stack, build_stack, open_store


def profiles(stack: Stack, rate: float = 1e6, burst: int = 1_000_000) -> Profiles:
    return Profiles(stack.store, search_rate=rate, search_burst=burst)


def names(found: list) -> list[str]:  # type: ignore[type-arg]
    return [p.username for p in found]


async def test_me_and_a_display_name_that_changes_and_clears(stack: Stack) -> None:
    alice = await stack.user("alice")
    p = profiles(stack)
    assert (await p.me(alice)).display_name == ""
    set_ = await p.set_display_name(alice, "  Alice   Müller ")
    assert set_.display_name == "Alice Müller"  # spaces tidied
    assert (await p.me(alice)).display_name == "Alice Müller"
    assert (await p.set_display_name(alice, "")).display_name == ""
    assert (await p.me(alice)).display_name == ""


async def test_search_by_username_display_name_and_a_later_word(stack: Stack) -> None:
    alice = await stack.user("alice")
    await stack.user("alfred")
    bob = await stack.user("bob.smith")
    p = profiles(stack)
    await p.set_display_name(bob, "Robert Ålund")
    assert names(await p.search(alice, "al", 10)) == ["alfred", "alice", "bob.smith"]
    assert names(await p.search(alice, "ali", 10)) == ["alice"]
    assert names(await p.search(alice, "ROB", 10)) == ["bob.smith"]
    assert names(await p.search(alice, "alu", 10)) == ["bob.smith"]  # a later word, Å = a
    assert names(await p.search(alice, "robert å", 10)) == ["bob.smith"]
    assert names(await p.search(alice, "bob", 10)) == ["bob.smith"]
    found = await p.search(alice, "bob", 10)
    assert found[0].display_name == "Robert Ålund"
    assert await p.search(alice, "zed", 10) == []


async def test_a_renamed_user_is_no_longer_found_by_the_old_name(stack: Stack) -> None:
    alice = await stack.user("alice")
    p = profiles(stack)
    await p.set_display_name(alice, "Wonderland")
    assert names(await p.search(alice, "wond", 10)) == ["alice"]
    await p.set_display_name(alice, "Looking Glass")
    assert await p.search(alice, "wond", 10) == []
    assert names(await p.search(alice, "glass", 10)) == ["alice"]
    assert names(await p.search(alice, "ali", 10)) == ["alice"]  # the username stays


async def test_one_user_matching_by_several_terms_is_listed_once(stack: Stack) -> None:
    anna = await stack.user("anna")
    p = profiles(stack)
    await p.set_display_name(anna, "Anna Annabel Ann")
    assert names(await p.search(anna, "ann", 10)) == ["anna"]


async def test_limit_is_capped_and_results_are_in_term_order(stack: Stack) -> None:
    me = await stack.user("zzz")
    for i in range(25):
        await stack.user(f"user{i:02d}")
    p = profiles(stack)
    found = names(await p.search(me, "user", 1000))
    assert found == [f"user{i:02d}" for i in range(20)]
    assert names(await p.search(me, "user", 3)) == ["user00", "user01", "user02"]


@pytest.mark.parametrize(
    ("field", "value"),
    [("display_name", "x" * 65), ("display_name", "a\u0000b"), ("display_name", "tab\tbell\a")],
)
async def test_bad_display_names_are_400(stack: Stack, field: str, value: str) -> None:
    alice = await stack.user("alice")
    with pytest.raises(CourierError) as err:
        await profiles(stack).set_display_name(alice, value)
    assert err.value.status == 400


@pytest.mark.parametrize(("q", "limit"), [("", 10), ("x" * 33, 10), ("   ", 10), ("a", 0)])
async def test_bad_queries_are_400(stack: Stack, q: str, limit: int) -> None:
    alice = await stack.user("alice")
    with pytest.raises(CourierError) as err:
        await profiles(stack).search(alice, q, limit)
    assert err.value.code == "bad_request"


async def test_searches_are_rate_limited_per_user(stack: Stack) -> None:
    alice = await stack.user("alice")
    bob = await stack.user("bob")
    p = profiles(stack, rate=0.001, burst=3)
    for _ in range(3):
        await p.search(alice, "bo", 10)
    with pytest.raises(CourierError) as err:
        await p.search(alice, "bo", 10)
    assert err.value.code == "rate_limited"
    assert names(await p.search(bob, "al", 10)) == ["alice"]  # another user's own budget


async def test_profiles_survive_a_restart(tmp_path: Path, store_kind: str) -> None:
    stack = await build_stack(tmp_path / "s", store_kind)
    alice = await stack.user("alice")
    await profiles(stack).set_display_name(alice, "Queen of Hearts")
    await stack.store.close()
    store = await open_store(tmp_path / "s", store_kind, stack.metrics)
    try:
        found = await store.search_users("hearts", 10)
        assert [(u.username, u.display_name) for u in found] == [("alice", "Queen of Hearts")]
    finally:
        await store.close()


# ---- the folding rules -----------------------------------------------------------------------
@given(st.text(max_size=40))
@settings(suppress_health_check=[HealthCheck.too_slow], max_examples=200)
def test_every_prefix_of_a_display_name_finds_it(name: str) -> None:
    """Whatever the text: a query made of a prefix of the name (or of a word of it) folds to
    a prefix of one of the name's terms."""
    terms = search_terms("someone", name)
    folded = fold(name)
    for end in range(1, min(len(name), 32) + 1):
        q = name[:end]
        if not fold(q):
            continue
        term = query_term(q)
        if folded.startswith(term):
            assert any(t.startswith(term) for t in terms)
