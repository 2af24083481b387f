"""In-memory quota store: the replay store, with the same semantics as Redis.

Thread-safe through one lock (an embedded router may be called from several threads).
Expiry follows event time: idempotency records live ``idempotency_ttl_ms`` after their
event, dedupe records ``bucket.dedupe_ms``; both are swept as event time advances, so
memory follows the traffic inside those windows, not the length of the file.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from router.core.messages import ReferralEntry
from router.core.windows import window_end_ms
from router.store.base import (
    CAP_HIT,
    COUNTER_GRACE_MS,
    DEDUPED,
    GRANTED,
    LATE,
    LATE_MS,
    Bucket,
    QuotaStore,
    validate_reservation,
)
from router.store.records import InProcessRecords

_SWEEP_EVERY_MS = 3600_000


class MemoryQuotaStore(InProcessRecords, QuotaStore):
    """Dictionaries behind a (re-entrant) lock. ``on_append`` sees every ledger entry as it
    is appended;
    ``retain_ledger=False`` then keeps none in memory (replay aggregates as it goes).
    ``validate=False`` skips argument checks for callers that pass validated values only."""

    def __init__(
        self,
        *,
        idempotency_ttl_ms: int = 48 * 3600_000,
        retain_ledger: bool = True,
        on_append: Callable[[ReferralEntry], None] | None = None,
        validate: bool = True,
    ):
        self._setup(idempotency_ttl_ms, retain_ledger, on_append, validate)
        self._cells: dict[str, list[list[int]]] = {}
        self._archive: dict[tuple[str, int, int], list[int]] = {}
        self._archive_expiry: deque[tuple[int, tuple[str, int, int]]] = deque()
        # bucket -> applicant hash -> last grant (no tuple key per applicant: smaller).
        self._last_grant: dict[str, dict[str, int]] = {}
        # Expiry queues, one per bucket (a bucket's entries expire in the order they were
        # set): (expires at, key, time it was set). A later grant to the same key leaves a
        # stale entry behind; the sweep skips it.
        self._dedupe_expiry: dict[str, deque[tuple[int, str, int]]] = {}
        self._horizon = -(2**62)  # latest event time seen
        self._next_sweep = -(2**62)

    def _cell(self, bucket: Bucket, i: int, key: int) -> list[int]:
        """The [key, count, amount] counter of cap ``i`` for window ``key``.

        Each cap keeps its current window in a list (event time mostly moves forward, so
        that is nearly always a hit); older windows move to ``_archive`` for late events.
        """
        bid = bucket.id
        cells = self._cells.get(bid)
        if cells is None:
            cells = self._cells[bid] = [[-1, 0, 0] for _ in bucket.caps]
        cur = cells[i]
        if cur[0] == key:
            return cur
        if key > cur[0]:
            if cur[0] >= 0:
                # Kept until its window ends plus a grace period, as Redis expires counters.
                end = window_end_ms(bucket.caps[i].window, cur[0], bucket.timezone)
                self._archive[(bid, i, cur[0])] = cur
                self._archive_expiry.append((end + COUNTER_GRACE_MS, (bid, i, cur[0])))
            cur = cells[i] = self._archive.pop((bid, i, key), [key, 0, 0])
            return cur
        return self._archive.setdefault((bid, i, key), [key, 0, 0])

    def _current_cells(self, bucket: Bucket, keys: tuple[int, ...]) -> list[list[int]]:
        """The bucket's counter cells for these window keys (the current ones, unless a
        window rolled or the event is late)."""
        n = len(bucket.caps)
        cells = self._cells.get(bucket.id)
        if cells is None or len(cells) != n:
            return [self._cell(bucket, i, keys[i]) for i in range(n)]
        for i in range(n):
            if cells[i][0] != keys[i]:  # rare: a window rolled or a late event
                return [self._cell(bucket, k, keys[k]) for k in range(n)]
        return cells

    def try_reserve(
        self,
        bucket: Bucket,
        keys: tuple[int, ...],
        amount: int,
        applicant: str | None,
        event_ms: int,
        entry: ReferralEntry | None = None,
        *,
        application_id: str | None = None,
    ) -> int:
        if self._validate:
            validate_reservation(bucket, keys, amount, applicant, event_ms, application_id)
        with self._lock:
            if event_ms < self._horizon - LATE_MS:
                return LATE
            if event_ms > self._horizon:
                self._horizon = event_ms
                if event_ms >= self._next_sweep:
                    self._sweep(event_ms)
            bid = bucket.id
            granted = None
            if application_id is not None:
                granted = self._grants.get(bid)
                if granted is None:
                    granted = self._grants[bid] = {}
                if application_id in granted:
                    return GRANTED  # a retry of a grant already made: nothing applied twice
            caps = bucket.caps
            cells = self._current_cells(bucket, keys)
            # Caps are checked before dedupe so that a cap refusal is the answer whenever a
            # cap refuses: the router's "known full" shortcut then never changes a result.
            for i, cap in enumerate(caps):
                c = cells[i]
                if cap.count is not None and c[1] >= cap.count:
                    return CAP_HIT + 2 * i + 1
                if cap.amount is not None and c[2] + amount > cap.amount:
                    return CAP_HIT + 2 * i
            seen = None
            if applicant is not None and bucket.dedupe_ms > 0:
                seen = self._last_grant.get(bid)
                if seen is None:
                    seen = self._last_grant[bid] = {}
                last = seen.get(applicant)
                if last is not None and event_ms - last < bucket.dedupe_ms:
                    return DEDUPED
            for c in cells:
                c[1] += 1
                c[2] += amount
            if seen is not None and applicant is not None:  # (seen implies an applicant)
                seen[applicant] = event_ms
                # Kept LATE_MS past its window: events inside the horizon may still see it.
                _expire_later(
                    self._dedupe_expiry,
                    bid,
                    event_ms + bucket.dedupe_ms + LATE_MS,
                    applicant,
                    event_ms,
                )
            if granted is not None and application_id is not None:  # (granted implies an id)
                granted[application_id] = event_ms
                _expire_later(
                    self._grant_expiry, bid, event_ms + self._ttl, application_id, event_ms
                )
            if entry is not None:
                self.append_entry(entry)
            return GRANTED

    def usage(self, bucket: Bucket, keys: tuple[int, ...]) -> list[tuple[int, int]]:
        with self._lock:
            out = []
            for i, k in enumerate(keys):
                cells = self._cells.get(bucket.id)
                cur = cells[i] if cells else None
                c = cur if cur is not None and cur[0] == k else self._archive.get((bucket.id, i, k))
                out.append((c[1], c[2]) if c else (0, 0))
            return out

    def _advance(self, event_ms: int) -> None:
        """Move the event-time horizon; sweep expired records about once an hour of it."""
        if event_ms <= self._horizon:
            return
        self._horizon = event_ms
        if event_ms >= self._next_sweep:
            self._sweep(event_ms)

    def _sweep(self, event_ms: int) -> None:
        """Drop records that expired by event time (idempotency, archived counters, dedupe)."""
        self._next_sweep = event_ms + _SWEEP_EVERY_MS
        self._decisions.sweep(event_ms)
        expiry, archive = self._archive_expiry, self._archive
        while expiry and expiry[0][0] < event_ms:
            archive.pop(expiry.popleft()[1], None)
        # Dedupe and grant records leave in expiry order; entries overwritten by a later
        # grant are stale and skipped (no full scans, however long the history).
        for queues, store in (
            (self._dedupe_expiry, self._last_grant),
            (self._grant_expiry, self._grants),
        ):
            for bid, queue in queues.items():
                d = store.get(bid)
                while queue and queue[0][0] <= event_ms:
                    _, key, t = queue.popleft()
                    if d is not None and d.get(key) == t:
                        del d[key]


def _expire_later(queues: dict[str, deque], bucket_id: str, at: int, key: str, set_at: int) -> None:
    """Queue ``key`` (set at ``set_at``) of a bucket to be dropped at event time ``at``."""
    q = queues.get(bucket_id)
    if q is None:
        q = queues[bucket_id] = deque()
    q.append((at, key, set_at))
