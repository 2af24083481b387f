"""What the allocator's walks share: the batch being walked, its window-key columns, the
partners blocked for a full window, the reason bits a walk sets, and the signal that the
store had decided an application before.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from router.core.columns import AppColumns
from router.core.reasons import BIT
from router.core.windows import WINDOWS
from router.decide.assess import Assessment
from router.decide.assess_one import OneAssessment
from router.store import Bucket

KEEP_FULL, BRANCH_FULL = BIT["KEEP_BUDGET_EXHAUSTED"], BIT["BRANCH_BUDGET_EXHAUSTED"]
DEDUPE, QUOTA = BIT["PARTNER_DEDUPE"], BIT["PARTNER_QUOTA_EXHAUSTED"]
STORE_DOWN, LATE_BIT = BIT["STORE_UNAVAILABLE"], BIT["LATE_EVENT"]
#: The reason a refusal sets for keep (-2) and branch (-1); a partner's is QUOTA/DEDUPE.
REFUSED_BIT = {-2: KEEP_FULL, -1: BRANCH_FULL}


@dataclass(eq=False)
class Batch:
    """One batch on its way through the allocator: what its plan settled (idempotency,
    claims, each row's options), the outcome columns the walk fills, and what the finish
    needs (:class:`~router.decide.allocate.Allocator`)."""

    cols: AppColumns
    a: Assessment
    n: int
    ids: Sequence[str]
    fps: Sequence[int]
    once: bool
    claiming: bool
    shared: bool
    recalled: dict[int, bytes]
    dups: dict[int, int]
    down: bool
    recall_failed: bool
    todo: list[int]
    mask_l: list[int]
    keep_ok: list[bool]
    branch_ok: list[bool]
    kind: list[int]
    chosen: list[int]
    bits: list[int]
    degraded: list[bool]
    event_ms: list[int]
    amounts: list[int]
    ev_flat: list[float]
    decode: dict[int, list[int]]
    kkeys: Any
    bkeys: Any
    pkeys: Any
    order_codes: list[int] | None
    degrade_keep: bool
    rotation: list[int] | None = None
    counted: dict | None = None


class Blocks:
    """Partners whose count cap is full for the window the current rows are in: refused
    without a store call or floor lookup until the first row of the next window (rows
    are in time order)."""

    def __init__(self, n: int, partners: int):
        self.mask = 0  # bit j: partner j is blocked
        self.until = [n] * partners  # first row partner j's block no longer covers
        self.cap = [0] * partners  # the cap index that is full
        self.n = n
        self.next_release = n

    def release(self, i: int) -> None:
        """Unblock the partners whose window ended before row ``i``."""
        if self.mask and i >= self.next_release:
            for j in range(len(self.until)):
                if self.mask >> j & 1 and self.until[j] <= i:
                    self.mask &= ~(1 << j)
            self.next_release = min(
                [self.until[j] for j in range(len(self.until)) if self.mask >> j & 1],
                default=self.n,
            )

    def add(self, j: int, k: int, end: int, i: int) -> None:
        """Partner ``j``'s cap ``k`` is full until row ``end`` (a block only pays past
        the next row)."""
        if end > i + 1:
            self.mask |= 1 << j
            self.until[j] = end
            self.cap[j] = k
            self.next_release = min(self.next_release, end)


class Decided(Exception):
    """The store already holds a decision for this application (single-trip mode)."""

    def __init__(self, record: bytes):
        self.record = record


class LazyKeys:
    """``pkeys[j]``: the window-key columns of partner j's bucket, built on first use."""

    def __init__(self, rows: KeyRows, buckets: list[Bucket]):
        self._rows, self._buckets = rows, buckets
        self._got: dict[int, list[list[int]]] = {}

    def __getitem__(self, j: int) -> list[list[int]]:
        got = self._got.get(j)
        if got is None:
            got = self._got[j] = self._rows.get(self._buckets[j])
        return got


class KeyRows:
    """Window-key columns (one list per cap) of each bucket for one batch, built on first use."""

    def __init__(self, a: Assessment):
        self._zones = a.keys
        self._cols: dict[str, list[list[int]]] = {}

    def get(self, bucket: Bucket) -> list[list[int]]:
        cols = self._cols.get(bucket.id)
        if cols is None:
            zk = self._zones[bucket.timezone]
            cols = self._cols[bucket.id] = [zk[c.window].tolist() for c in bucket.caps]
        return cols


def with_bits(record: bytes, bits: int) -> bytes:
    """A decision record with more reason bits ORed in (as lua/decide.lua stores it)."""
    if not bits:
        return record
    low = int.from_bytes(record[1:5], "little") | bits
    return record[:1] + low.to_bytes(4, "little") + record[5:]


def row_keys(bucket: Bucket, a: OneAssessment) -> tuple[int, ...]:
    """One row's window key for each of ``bucket``'s caps."""
    zk = a.keys[bucket.timezone]
    return tuple([zk[_WINDOW_INDEX[c.window]] for c in bucket.caps])


_WINDOW_INDEX = {w: i for i, w in enumerate(WINDOWS)}
