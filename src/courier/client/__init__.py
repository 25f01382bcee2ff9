"""Courier client SDK: typed events, exactly-once sends, an event stream that survives faults.

Use it as ``async with Client(url, token) as client:``, then ``await client.send(...)`` and
``async for event in client.events(): ...``.
"""

from courier.client.client import Client, Transport, new_client_id
from courier.client.errors import AuthError, ConnectionLost, CourierError, RateLimited
from courier.client.events import (
    Conversation,
    Event,
    Group,
    GroupChange,
    GroupMember,
    HistoryPage,
    Message,
    Presence,
    Profile,
    Receipt,
    Sent,
    TimelineEvent,
    Typing,
    Unknown,
)

__all__ = [
    "AuthError",
    "Client",
    "ConnectionLost",
    "Conversation",
    "CourierError",
    "Event",
    "Group",
    "GroupChange",
    "GroupMember",
    "HistoryPage",
    "Message",
    "Presence",
    "Profile",
    "RateLimited",
    "Receipt",
    "Sent",
    "TimelineEvent",
    "Transport",
    "Typing",
    "Unknown",
    "new_client_id",
]
