"""Identity rules from PROTOCOL.md."""

from __future__ import annotations

import re

USERNAME_PATTERN = r"^[a-z0-9][a-z0-9_.-]{2,31}$"
_USERNAME = re.compile(USERNAME_PATTERN)


def valid_username(name: str) -> bool:
    return _USERNAME.fullmatch(name) is not None
