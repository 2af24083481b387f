"""What of an input value may be shown in an error or a reject: personal identifiers
never, and no run of 11 or more digits in any field (a national id or a phone number
that landed in the wrong column of a feed is still one)."""

from __future__ import annotations

import re
from typing import Any

#: Fields that hold personal identifiers: their values are never shown.
SECRET_FIELDS = frozenset({"national_id", "employer", "applicant_token"})
WITHHELD = "<withheld: personal identifier>"
_LONG_DIGITS = re.compile(r"\d{11,}")


def shown(field: str | None, value: Any) -> Any:
    """``value`` as it may be shown for ``field``: withheld for an identifier field, long
    digit runs masked in text and integers, anything else unchanged."""
    if field in SECRET_FIELDS:
        return WITHHELD
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return value
    text = str(value)
    return value if not _LONG_DIGITS.search(text) else mask(text)


def shown_repr(field: str | None, value: Any, limit: int = 80) -> str:
    """``repr`` of :func:`shown`, cut to ``limit`` characters."""
    v = shown(field, value)
    text = v if v == WITHHELD else repr(v)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def mask(text: str) -> str:
    """``text`` with every run of 11 or more digits masked (a parser's message may quote
    the value it refused)."""
    return _LONG_DIGITS.sub("<digits withheld>", text)


def plain(text: str) -> str:
    """A library's error text fit for a message: one line, a CSV parser's echo of the raw
    row cut off (pyarrow appends it, identifiers and all), long digit runs masked."""
    text = " ".join(text.split())
    m = re.search(r"CSV parse error: [^:]*", text)
    if m:
        text = text[: m.end()].rstrip()
    return mask(text)
