"""Events are encoded once and their seq spliced in; the bytes must equal a full encode."""

from __future__ import annotations

import msgspec
from hypothesis import given
from hypothesis import strategies as st

from courier.domain.events import MessageEvent, encode_event, message_tail, with_seq


@given(
    seq=st.integers(1, 2**62),
    body=st.text(min_size=1, max_size=50),
    client_id=st.text(min_size=1, max_size=64),
)
def test_spliced_seq_encodes_exactly_like_the_whole_event(
    seq: int, body: str, client_id: str
) -> None:
    event = MessageEvent(
        seq=0, id="0123", from_="alice", to="bob", body=body, ts=1, client_id=client_id
    )
    whole = encode_event(msgspec.structs.replace(event, seq=seq))
    assert with_seq(seq, message_tail(event)) == whole
    assert msgspec.json.decode(whole)["seq"] == seq
