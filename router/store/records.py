"""Decision records of the in-process stores: idempotency by application id, by event time.

Each application id maps to the first decision recorded for it (record bytes, see
:data:`router.decide.outcomes.RECORD_DTYPE`) and the content fingerprint it was decided with.
Records live at least ``ttl_ms`` of event time after the newest event of the call that
stored them, then leave in one sweep.

Replay stores a whole batch's records at once with :meth:`DecisionRecords.remember_block`:
the ids then point at one shared :class:`Block` (the batch's record array), so storing and
expiring a batch costs two C-level dictionary passes instead of an object per row.
"""

from __future__ import annotations

import itertools
import threading
from collections import deque
from collections.abc import Callable, Iterable, Sequence

import numpy as np

from router.core.errors import IdempotencyConflict
from router.core.messages import ReferralEntry
from router.store.base import check_fingerprints


class Block:
    """One batch of remembered decisions: ids, fingerprints and records, by row."""

    __slots__ = ("ids", "fingerprints", "records", "_rows")

    def __init__(self, ids: list[str], fingerprints: np.ndarray, records: np.ndarray):
        self.ids, self.fingerprints, self.records = ids, fingerprints, records
        self._rows: dict[str, int] | None = None

    def row(self, application_id: str) -> int:
        """The row of ``application_id`` (an index built on first use: recalls are rare)."""
        if self._rows is None:
            self._rows = {a: i for i, a in enumerate(self.ids)}
        return self._rows[application_id]


class DecisionRecords:
    """Application id -> (record, fingerprint), swept by event time."""

    def __init__(self, ttl_ms: int, recall_only: frozenset[str] | None = None):
        self.ttl_ms = ttl_ms
        #: When set, the only ids that can ever be asked for again (a replay of traffic
        #: known in full: the ids it holds more than once); no other id's record is kept,
        #: since no later call could recall it.
        self.recall_only = recall_only
        # Flat dicts, no per-entry tuples; a block-stored id maps to its Block in
        # _records and has no _fingerprints entry.
        self._records: dict[str, bytes | Block] = {}
        self._fingerprints: dict[str, int] = {}
        self._order: deque[tuple[int, list[str]]] = deque()

    def __len__(self) -> int:
        return len(self._records)

    def get(self, application_id: str) -> tuple[bytes, int] | None:
        """(record, fingerprint) stored for this id, or None."""
        rec = self._records.get(application_id)
        if rec is None:
            return None
        if isinstance(rec, Block):
            i = rec.row(application_id)
            return rec.records[i].tobytes(), int(rec.fingerprints[i])
        return rec, self._fingerprints[application_id]

    def recall_many(
        self, application_ids: Sequence[str], fingerprints: Sequence[int]
    ) -> dict[int, bytes]:
        """Records of the ids already decided, by position; raises
        :class:`IdempotencyConflict` for an id recorded with a different fingerprint."""
        found: dict[int, bytes] = {}
        recs = self._records
        if not recs or recs.keys().isdisjoint(application_ids):  # the usual case, at C speed
            return found
        for i, a in enumerate(application_ids):
            got = self.get(a) if a in recs else None
            if got is not None:
                rec, fp = got
                if fp != fingerprints[i]:
                    raise IdempotencyConflict(a)
                found[i] = rec
        return found

    def remember_many(
        self,
        application_ids: Sequence[str],
        fingerprints: Sequence[int],
        records: Sequence[bytes],
        newest: int,
    ) -> bool:
        """Store each id's record unless it has one (the first record wins); True when
        any was stored."""
        if self.recall_only is not None:
            keep = self.recallable(application_ids)
            application_ids = [application_ids[i] for i in keep]
            fingerprints = [fingerprints[i] for i in keep]
            records = [records[i] for i in keep]
        recs, fps = self._records, self._fingerprints
        if recs.keys().isdisjoint(application_ids):
            # The usual case (none decided before): bulk updates at C speed. An id that
            # repeats inside the call carries the same record and fingerprint (the
            # allocator copies the first decision to its repeats), so the order of the
            # updates does not matter.
            recs.update(zip(application_ids, records))
            fps.update(zip(application_ids, fingerprints))
            added = list(application_ids)
        else:
            added = []
            for i, a in enumerate(application_ids):
                if a not in recs:
                    recs[a] = records[i]
                    fps[a] = fingerprints[i]
                    added.append(a)
        if added:
            # One expiry entry per call: the ids expire together once the newest event of
            # the call is older than the TTL (each is kept at least the TTL).
            self._order.append((newest, added))
        return bool(added)

    def remember_block(
        self, application_ids: list[str], fingerprints: np.ndarray, records: np.ndarray, newest: int
    ) -> None:
        """:meth:`remember_many` for a batch's distinct ids, none of them recorded
        yet (the caller recalled them first) and each one :meth:`recallable`;
        ``records`` has :data:`RECORD_DTYPE`."""
        if not application_ids:
            return
        block = Block(application_ids, fingerprints, records)
        self._records.update(zip(application_ids, itertools.repeat(block)))
        self._order.append((newest, application_ids))

    def recallable(self, application_ids: Sequence[str]) -> list[int]:
        """Positions of the ids whose records are kept: all, or those in
        :attr:`recall_only`."""
        only = self.recall_only
        if only is None:
            return list(range(len(application_ids)))
        if only.isdisjoint(application_ids):  # the usual case, at C speed
            return []
        return [i for i, a in enumerate(application_ids) if a in only]

    def sweep(self, event_ms: int) -> None:
        """Drop the records of calls whose newest event is older than the TTL."""
        order, pop = self._order, self._records.pop
        fps = self._fingerprints
        while order and order[0][0] < event_ms - self.ttl_ms:
            ids = order.popleft()[1]
            deque(map(pop, ids, itertools.repeat(None)), 0)
            if fps:
                deque(map(fps.pop, ids, itertools.repeat(None)), 0)


class InProcessRecords:
    """What the in-process stores share: decision records, application grants and the
    referral ledger behind one re-entrant lock, and the record-keeping
    :class:`~router.store.base.QuotaStore` methods. A store calls :meth:`_setup` first and
    moves its event-time horizon in ``_advance`` when records are stored."""

    _lock: threading.RLock
    _decisions: DecisionRecords
    #: Each call is atomic under the lock; the store dies with its process, never waits.
    single_trip = True
    in_process = True

    def _setup(
        self,
        idempotency_ttl_ms: int,
        retain_ledger: bool,
        on_append: Callable[[ReferralEntry], None] | None,
        validate: bool,
    ) -> None:
        self._lock = threading.RLock()
        self._decisions = DecisionRecords(idempotency_ttl_ms)
        # bucket -> application id -> grant time (retries of a grant are not re-applied),
        # and those grants' expiry queues (expires at, id, time it was set).
        self._grants: dict[str, dict[str, int]] = {}
        self._grant_expiry: dict[str, deque[tuple[int, str, int]]] = {}
        self._ledger: list[ReferralEntry] = []
        self._retain = retain_ledger
        self._on_append = on_append
        self._ttl = idempotency_ttl_ms
        # The router passes only values from validated messages; a store it makes for
        # itself skips re-checking them (~1 µs a reservation, on the replay hot path).
        self._validate = validate
        self.needs_entries = retain_ledger or on_append is not None

    def append_entry(self, entry: ReferralEntry) -> None:
        """Add a ledger entry (the caller holds the lock and made the grant)."""
        if self._retain:
            self._ledger.append(entry)
        if self._on_append is not None:
            self._on_append(entry)

    def ledger(self, *, branch: bool = False) -> Iterable[ReferralEntry]:
        with self._lock:
            if branch:
                return list(self._ledger)
            return [e for e in self._ledger if e.outcome == "refer"]

    def _advance(self, event_ms: int) -> None:
        raise NotImplementedError

    def try_reserve_once(self, *args, **kwargs) -> tuple[int, bytes | None]:
        with self._lock:  # re-entrant: the base class's steps run as one
            # (a mixin: the store class it is mixed into has the method)
            return super().try_reserve_once(*args, **kwargs)  # type: ignore[misc]

    def record_once(self, *args, **kwargs) -> bytes | None:
        with self._lock:
            # (a mixin: the store class it is mixed into has the method)
            return super().record_once(*args, **kwargs)  # type: ignore[misc]

    def recall(self, application_id: str, fingerprint: int) -> bytes | None:
        return self.recall_many([application_id], [fingerprint]).get(0)

    def lookup(self, application_id: str) -> bytes | None:
        with self._lock:
            got = self._decisions.get(application_id)
        return None if got is None else got[0]

    def recall_many(
        self, application_ids: Sequence[str], fingerprints: Sequence[int]
    ) -> dict[int, bytes]:
        if self._validate:
            check_fingerprints(fingerprints)
        with self._lock:
            return self._decisions.recall_many(application_ids, fingerprints)

    def remember(self, application_id: str, fingerprint: int, record: bytes, event_ms: int) -> None:
        self.remember_many([application_id], [fingerprint], [record], [event_ms])

    def remember_many(
        self,
        application_ids: Sequence[str],
        fingerprints: Sequence[int],
        records: Sequence[bytes],
        event_ms: Sequence[int],
    ) -> None:
        if not application_ids:
            return
        if self._validate:
            check_fingerprints(fingerprints)
        with self._lock:
            newest = max(event_ms)
            if self._decisions.remember_many(application_ids, fingerprints, records, newest):
                self._advance(newest)
