"""In-memory quota store: the replay store, with the same semantics as Redis.

Thread-safe through one lock (an embedded router may be called from several threads).
Expiry follows event time: idempotency records live ``idempotency_ttl_ms`` after their
event, dedupe records ``bucket.dedupe_ms``; both are swept as event time advances, so
memory follows the traffic inside those windows, not the length of the file.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Callable, Iterable, Sequence

from router.errors import IdempotencyConflict
from router.messages import ReferralEntry
from router.store.base import CAP_HIT, DEDUPED, GRANTED, Bucket, QuotaStore

_SWEEP_EVERY_MS = 3600_000


class MemoryQuotaStore(QuotaStore):
    """Dictionaries behind a lock. ``on_append`` sees every ledger entry as it is appended;
    ``retain_ledger=False`` then keeps none in memory (replay aggregates as it goes)."""

    def __init__(self, *, idempotency_ttl_ms: int = 48 * 3600_000, retain_ledger: bool = True,
                 on_append: Callable[[ReferralEntry], None] | None = None):
        self._lock = threading.Lock()
        self._counters: dict[tuple[str, int, int], list[int]] = {}
        self._last_grant: dict[tuple[str, str], int] = {}
        self._dedupe_ms: dict[str, int] = {}
        self._decisions: dict[str, tuple[bytes, tuple]] = {}
        self._decided_order: deque[tuple[int, str]] = deque()
        self._ledger: list[ReferralEntry] = []
        self._retain = retain_ledger
        self._on_append = on_append
        self._ttl = idempotency_ttl_ms
        self._horizon = -(2**62)  # latest event time seen
        self._next_sweep = -(2**62)

    def try_reserve(self, bucket: Bucket, keys: tuple[int, ...], amount: int,
                    applicant: str | None, event_ms: int,
                    entry: ReferralEntry | None = None) -> int:
        with self._lock:
            self._advance(event_ms)
            bid = bucket.id
            dk = None
            if applicant is not None and bucket.dedupe_ms > 0:
                dk = (bid, applicant)
                last = self._last_grant.get(dk)
                if last is not None and event_ms - last < bucket.dedupe_ms:
                    return DEDUPED
            counters = self._counters
            slots = []
            for i, cap in enumerate(bucket.caps):
                ck = (bid, i, keys[i])
                c = counters.get(ck)
                if c is None:
                    c = [0, 0]
                if cap.count is not None and c[0] + 1 > cap.count:
                    return CAP_HIT + 2 * i + 1
                if cap.amount is not None and c[1] + amount > cap.amount:
                    return CAP_HIT + 2 * i
                slots.append((ck, c))
            for ck, c in slots:
                c[0] += 1
                c[1] += amount
                counters[ck] = c
            if dk is not None:
                self._last_grant[dk] = event_ms
                self._dedupe_ms[bid] = bucket.dedupe_ms
            if entry is not None:
                if self._retain:
                    self._ledger.append(entry)
                if self._on_append is not None:
                    self._on_append(entry)
            return GRANTED

    def recall(self, application_id: str, fingerprint: bytes) -> tuple | None:
        with self._lock:
            rec = self._decisions.get(application_id)
        if rec is None:
            return None
        if rec[0] != fingerprint:
            raise IdempotencyConflict(application_id)
        return rec[1]

    def recall_many(self, application_ids: Sequence[str],
                    fingerprints: Sequence[bytes]) -> dict[int, tuple]:
        get = self._decisions.get
        found: dict[int, tuple] = {}
        with self._lock:
            for i, a in enumerate(application_ids):
                rec = get(a)
                if rec is not None:
                    if rec[0] != fingerprints[i]:
                        raise IdempotencyConflict(a)
                    found[i] = rec[1]
        return found

    def remember(self, application_id: str, fingerprint: bytes, record: tuple,
                 event_ms: int) -> None:
        self.remember_many([(application_id, fingerprint, record, event_ms)])

    def remember_many(self, items: Iterable[tuple[str, bytes, tuple, int]]) -> None:
        decisions, order = self._decisions, self._decided_order
        with self._lock:
            for a, fp, rec, t in items:
                self._advance(t)
                if a not in decisions:
                    decisions[a] = (fp, rec)
                    order.append((t, a))

    def usage(self, bucket: Bucket, keys: tuple[int, ...]) -> list[tuple[int, int]]:
        with self._lock:
            return [tuple(self._counters.get((bucket.id, i, k), (0, 0)))  # type: ignore[misc]
                    for i, k in enumerate(keys)]

    def ledger(self) -> Iterable[ReferralEntry]:
        with self._lock:
            return list(self._ledger)

    def _advance(self, event_ms: int) -> None:
        """Move the event-time horizon; sweep expired records about once an hour of it."""
        if event_ms <= self._horizon:
            return
        self._horizon = event_ms
        if event_ms < self._next_sweep:
            return
        self._next_sweep = event_ms + _SWEEP_EVERY_MS
        order, decisions = self._decided_order, self._decisions
        while order and order[0][0] < event_ms - self._ttl:
            _, app_id = order.popleft()
            decisions.pop(app_id, None)
        stale = [k for k, t in self._last_grant.items()
                 if event_ms - t >= self._dedupe_ms.get(k[0], 0)]
        for k in stale:
            del self._last_grant[k]
