"""Value checks every request body field passes, whatever its model: the one place for them.

JSON lets a client send what Python parses but the engine cannot carry: NaN and infinities
(`json.loads` accepts `NaN`, `Infinity` and turns `1e999` into inf), integers beyond 64 bits
(msgpack, the core's message encoding, holds [-2^63, 2^64 - 1]; sampling adds a sequence index to
a seed, so int64 is the safe range), and strings with lone UTF-16 surrogates (`"\\ud800"`), which
no tokenizer can encode. `check_field` rejects them with a pydantic error, so FastAPI answers 400
naming the field (`param`), before any handler or tokenizer runs.
"""
from __future__ import annotations

import math
import re
from typing import Any

from pydantic_core import PydanticCustomError

INT_MIN = -(2 ** 63)
INT_MAX = 2 ** 63 - 1

_SURROGATE = re.compile("[\ud800-\udfff]")


def _problem(value: Any, path: str) -> tuple[str, str] | None:
    """(where inside the value, what is wrong) for the first bad leaf, or None."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else (path, f"must be a finite number, got {value}")
    if isinstance(value, int):
        if INT_MIN <= value <= INT_MAX:
            return None
        return path, f"must be an integer in [{INT_MIN}, {INT_MAX}], got {value}"
    if isinstance(value, str):
        if _SURROGATE.search(value) is None:
            return None
        return path, "must be valid Unicode text (it holds a lone UTF-16 surrogate)"
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            found = _problem(item, f"{path}[{i}]")
            if found:
                return found
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            found = _problem(key, f"{path}[key]") or _problem(item, f"{path}[{key!r}]")
            if found:
                return found
        return None
    return None  # nested models validate their own fields


def check_field(value: Any) -> Any:
    """Pydantic after-validator for every request field: raise for a value the engine cannot
    take; the error's location is the field, the message says where inside it."""
    found = _problem(value, "")
    if found is not None:
        where, msg = found
        raise PydanticCustomError("invalid_value", "{where}{msg}",
                                  {"where": f"{where}: " if where else "", "msg": msg})
    return value
