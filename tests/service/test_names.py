"""The username rule is a full match of the contract's pattern, wherever a name is checked."""

from __future__ import annotations

import re

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from courier.domain.names import USERNAME_PATTERN, valid_username
from courier.transport import wire

RULE = re.compile(r"[a-z0-9][a-z0-9_.-]{2,31}")  # the contract's pattern, anchored by fullmatch

names = st.one_of(
    st.from_regex(USERNAME_PATTERN),  # re.search semantics: includes names with a trailing \n
    st.from_regex(RULE, fullmatch=True).map(lambda s: s + "\n"),
    st.text(alphabet="abc019_.-\n\r \t", max_size=34),
    st.text(max_size=34),
)


def registration_accepts(name: str) -> bool:
    """Both checks a registration passes: the body's schema, then the service's rule."""
    body = msgspec.json.encode({"username": name, "password": "p" * 8})
    try:
        msgspec.json.decode(body, type=wire.Credentials)
    except msgspec.ValidationError:
        return False
    return valid_username(name)


@settings(max_examples=500, deadline=None, derandomize=True, database=None)
@given(names)
def test_a_name_is_accepted_exactly_when_it_fully_matches_the_rule(name: str) -> None:
    assert registration_accepts(name) == (RULE.fullmatch(name) is not None)


def test_a_trailing_newline_is_not_a_name() -> None:
    assert not registration_accepts("alice\n")
    assert registration_accepts("alice")
