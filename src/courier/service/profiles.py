"""Profiles and finding people: display names and prefix search (domain.profiles)."""

from __future__ import annotations

import msgspec

from courier.domain.errors import bad_request, store_unavailable
from courier.domain.ops import SetProfile, UserRecord
from courier.domain.profiles import (
    SEARCH_LIMIT_MAX,
    clean_display_name,
    query_term,
)
from courier.ports import Store
from courier.service.accounts import Session
from courier.service.ratelimit import KeyedLimiter


class Profile(msgspec.Struct, frozen=True):
    """A user as others see them (`GET /v1/me`, search results)."""

    username: str
    display_name: str


def profile_of(record: UserRecord) -> Profile:
    return Profile(record.username, record.display_name)


class Profiles:
    def __init__(self, store: Store, *, search_rate: float, search_burst: int) -> None:
        self._store = store
        self._search_limit = KeyedLimiter(search_rate, search_burst)

    async def me(self, session: Session) -> Profile:
        record = await self._store.get_user(session.username)
        if record is None:  # the token outlived its user: nothing to show
            raise store_unavailable()
        return profile_of(record)

    async def set_display_name(self, session: Session, display_name: str) -> Profile:
        name = clean_display_name(display_name)
        record: UserRecord | None = await self._store.submit(SetProfile(session.username, name))
        if record is None:
            raise store_unavailable()
        return profile_of(record)

    async def search(self, session: Session, q: str, limit: int) -> list[Profile]:
        """Users whose username or display name (or a word of it) starts with `q`."""
        term = query_term(q)
        if limit < 1:
            raise bad_request("limit must be a positive integer.")
        self._search_limit.check(session.username)
        found = await self._store.search_users(term, min(limit, SEARCH_LIMIT_MAX))
        return [profile_of(r) for r in found]
