"""Calendar windows (hour, day, month) in a time zone, by event time.

Window keys are integers that read as local time: hour ``YYYYMMDDHHF``, day ``YYYYMMDD``,
month ``YYYYMM``. ``F`` is the fold (0, or 1 for the repeated hour when clocks go back),
so the two real hours that share a wall-clock hour in a DST zone are two windows. Keys for
a batch are computed once per distinct 15-minute UTC bucket — every zone offset in use is
a multiple of 15 minutes, so all instants of a bucket share their local hour, day and
month.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

import numpy as np

WINDOWS = ("hour", "day", "month")
QUARTER_MS = 15 * 60 * 1000


@lru_cache(maxsize=64)
def zone(name: str) -> ZoneInfo:
    """A cached ZoneInfo."""
    return ZoneInfo(name)


def _keys_of(ms: int, tz: ZoneInfo) -> tuple[int, int, int]:
    d = datetime.fromtimestamp(ms / 1000.0, tz)
    day = d.year * 10000 + d.month * 100 + d.day
    return (day * 100 + d.hour) * 10 + d.fold, day, d.year * 100 + d.month


def window_keys(event_ms: np.ndarray, tz_name: str) -> dict[str, np.ndarray]:
    """Local hour/day/month keys (int64 arrays) for every event time (epoch ms)."""
    q = np.floor_divide(event_ms, QUARTER_MS)
    if len(q) == 1:  # one live decision: skip np.unique
        k = quarter_keys(int(q[0]), tz_name)
        return {w: np.array([k[i]], dtype=np.int64) for i, w in enumerate(WINDOWS)}
    uq, inv = np.unique(q, return_inverse=True)
    table = np.array([quarter_keys(int(b), tz_name) for b in uq], dtype=np.int64).reshape(-1, 3)
    return {w: table[inv, i] for i, w in enumerate(WINDOWS)}


@lru_cache(maxsize=4096)
def quarter_keys(bucket: int, tz_name: str) -> tuple[int, int, int]:
    """Keys of a 15-minute UTC bucket (cached: live traffic revisits the same buckets)."""
    return _keys_of(bucket * QUARTER_MS, zone(tz_name))


def key_of(event_ms: int, window: str, tz_name: str) -> int:
    """The key of one event time in one window."""
    return _keys_of(event_ms, zone(tz_name))[WINDOWS.index(window)]


@lru_cache(maxsize=8192)
def window_end_ms(window: str, key: int, tz_name: str) -> int:
    """Epoch ms at which the window with this key ends (the next window's local start)."""
    tz = zone(tz_name)
    if window == "hour":
        fold, key = key % 10, key // 10
        y, mo, d, h = key // 1000000, key // 10000 % 100, key // 100 % 100, key % 100
        start = datetime(y, mo, d, h, fold=fold, tzinfo=tz)
        # Adding in UTC steps over DST gaps correctly.
        end = start.astimezone(ZoneInfo("UTC")) + timedelta(hours=1)
        return int(end.timestamp() * 1000)
    if window == "day":
        y, mo, d = key // 10000, key // 100 % 100, key % 100
        nxt = datetime(y, mo, d) + timedelta(days=1)
    else:
        y, mo = key // 100, key % 100
        nxt = datetime(y + (mo == 12), mo % 12 + 1, 1)
    return int(nxt.replace(tzinfo=tz).timestamp() * 1000)
