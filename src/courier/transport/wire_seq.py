"""A seq in a JSON body or frame: a whole number 0..2**62, as JSON Schema reads `integer`.

JSON Schema, and so the OpenAPI description and every client generated from it, counts `5.0`
as the integer 5; msgspec's `int` refuses it. A seq is therefore decoded as an int or a float
within the bounds, and a float is taken when it has no fractional part (`whole`, called by
the Structs' `__post_init__`). The rest of the server only ever sees an int.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import msgspec

SEQ_MAX = 2**62

if TYPE_CHECKING:
    Seq = int
else:
    Seq = Annotated[
        Annotated[int, msgspec.Meta(ge=0, le=SEQ_MAX)]
        | Annotated[float, msgspec.Meta(ge=0, le=SEQ_MAX)],
        msgspec.Meta(extra_json_schema={"type": "integer"}),
    ]


def whole(value: float, name: str) -> int:
    """The int of a decoded seq; a fraction is invalid (msgspec reports it as such)."""
    if isinstance(value, int):
        return value
    if not value.is_integer():
        raise ValueError(f"{name} must be a whole number.")
    return int(value)
