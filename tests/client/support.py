"""Helpers of the client tests: a real `courier serve` subprocess and throwaway accounts."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable

from courier.client import Client
from tests.procs import ServerProcess

PASSWORD = "correct horse battery"


Server = ServerProcess


def new_username() -> str:
    return "u" + uuid.uuid4().hex[:12]


Users = Callable[..., Awaitable[Client]]
