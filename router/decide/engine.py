"""The decision pipeline: :class:`Router`.

Every entry point runs the same two steps: :func:`router.decide.assess.assess` (vectorised:
rules, scores, economics, partner eligibility) and :class:`router.decide.allocate.Allocator`
(sequential, in arrival order: idempotency, the funder's budgets, partner ranking, atomic
quota reservation with the ledger entry). The core reads no clock and imports no Redis:
the store and, optionally, a clock are passed in.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np

from router.core.columns import AppColumns, from_applications, row_from_application
from router.core.config import Strategy
from router.core.errors import InputError
from router.core.identity import Hasher
from router.core.logs import get_logger
from router.core.messages import (
    Application,
    Decision,
    validate_application,
    validate_applications,
)
from router.decide.allocate import Allocator
from router.decide.assess import assess
from router.decide.assess_one import OneAssessor, assess_one
from router.decide.features import app_features
from router.decide.outcomes import (
    BRANCH_BUCKET,
    KEEP_BUCKET,
    Outcomes,
    decision_from_record,
    to_decisions,
)
from router.decide.partners import PartnerTable
from router.scoring import Scorer, load_scorer
from router.store import MemoryQuotaStore, QuotaStore

__all__ = ["Router", "KEEP_BUCKET", "BRANCH_BUCKET"]


def scorers_app_features(scorers: Iterable[Any]) -> dict[str, str]:
    """The application features some scorer reads (router/decide/features.py)."""
    return app_features(n for sc in scorers for n in getattr(sc, "feature_names_", ()))


class Router:
    """Decides keep / branch / refer / decline for applications.

    ``store`` defaults to a fresh :class:`MemoryQuotaStore`. ``scorers`` maps the
    strategy's scorer names to scorer objects (default: loaded from the strategy's files).
    ``clock`` — a callable returning epoch milliseconds — makes quota windows follow the
    caller's clock instead of each application's ``received_at`` (a live service that
    does not trust client timestamps); replay leaves it unset.
    ``on_cap`` is called as ``on_cap(bucket_id, window, window_key, event_ms)`` the first
    time a cap refuses a reservation in a window (when it ran out);
    :meth:`cap_refusals` counts every refusal.
    ``degrade=False`` makes a store failure raise :class:`~router.core.errors.StoreError`
    instead of answering in degraded mode (replay: results must equal the store's).
    """

    def __init__(
        self,
        strategy: Strategy,
        store: QuotaStore | None = None,
        *,
        clock: Callable[[], int] | None = None,
        scorers: dict[str, Scorer] | None = None,
        hasher: Hasher | None = None,
        on_cap: Callable[[str, str, int, int], None] | None = None,
        degrade: bool = True,
    ):
        self.strategy = strategy
        self.store = (
            store
            if store is not None
            else MemoryQuotaStore(
                idempotency_ttl_ms=strategy.idempotency_ttl_hours * 3600_000, validate=False
            )
        )
        self.clock = clock
        self.hasher = hasher or Hasher.from_config(strategy.identity)
        if scorers is None:
            # Only the scorers a policy uses: a strategy may define alternatives to compare.
            scorers = {
                name: load_scorer(ref.kind, ref.path, strategy.base_dir, ref.features)
                for name, ref in strategy.scorers.items()
                if name in strategy.scorers_used()
            }
        self.scorers = scorers
        #: Application features the scorers read (name -> "number" | "text"): the
        #: columns a replay reads beside the fields.
        self.app_features = scorers_app_features(scorers.values())
        self._employers = [
            frozenset(self.hasher.token(name, "employer") for name in p.employer_names)
            for p in strategy.partners
        ]
        self._allocator = Allocator(strategy, self.store, _logging_on_cap(on_cap))
        self._allocator.degrade = degrade
        self._table = PartnerTable(strategy.partners)
        self._assess_one = OneAssessor(strategy, self.scorers, self._employers)
        self._single_trip = self.store.single_trip
        self.store.warm_up()  # a first decision must not spend its deadline connecting

    def close(self) -> None:
        """Send the posts still owed for decisions already handed back, then release the
        store's connections. Call it (or use the router as a context manager) before the
        process exits: a grant whose post is never sent is voided by the store when its
        pending time runs out, and the referral the caller received is not billed."""
        self.store.close()

    def __enter__(self) -> Router:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def stored_decision(self, application_id: str) -> Decision | None:
        """The decision stored for this application id (audit, or a caller's retry by id),
        as the strategy in force names it; None if there is none (never decided here, or
        past the idempotency TTL). Reads the store only: reserves nothing."""
        record = self.store.lookup(application_id)
        if record is None:
            return None
        return decision_from_record(record, application_id, self.strategy.version)

    def cap_refusals(self) -> dict[tuple[str, str], int]:
        """Refusals so far by (bucket id, window)."""
        return dict(self._allocator.refusals)

    def decide(self, app: Application, *, deadline_ms: float | None = None) -> Decision:
        """Decide one application.

        ``deadline_ms``: this decision's store budget when shorter than the store's own
        ``timeout_ms`` (past it the answer is degraded, as with the store's own).
        On a store that checks, reserves and records in one call (memory, one Redis
        server) this runs on Python scalars end to end — the same decision as a batch of
        one, without numpy's per-call overhead; on others it is a batch of one.
        """
        if deadline_ms is not None:
            with self.store.deadline(_checked_deadline(deadline_ms)):
                return self.decide(app)
        validate_application(app)
        if not self._single_trip:
            return self.decide_batch([app])[0]
        r = row_from_application(app, self.hasher, self.clock() if self.clock else None)
        record, degraded = self._allocator.allocate_row(r, self._assess_one(r, full=False))
        return decision_from_record(record, r.application_id, self.strategy.version, degraded)

    def decide_batch(
        self,
        apps: Sequence[Application],
        *,
        pipelined: bool = False,
        deadline_ms: float | None = None,
    ) -> list[Decision]:
        """Decide several applications: scored together, reserved in the given order.

        ``pipelined=True`` is for a live service coalescing concurrent requests: the
        batch's reservations go to the store in a few pipelined rounds instead of one round
        trip each. Caps and exactly-once hold as always, but the applications are treated
        as concurrent (arrival order inside the batch is not kept), so replay leaves it off.
        ``deadline_ms``: the batch's one store budget, as in :meth:`decide`.
        """
        if not apps:
            return []
        validate_applications(apps)  # every one before anything is decided: nothing half-written
        cols = from_applications(apps, self.hasher)
        with self.store.deadline(_checked_deadline(deadline_ms)):
            outcomes = self.decide_columns(cols, pipelined=pipelined)
        return to_decisions(outcomes, cols.application_id, self.strategy.version)

    async def adecide(self, app: Application, *, deadline_ms: float | None = None) -> Decision:
        """Async variant of :meth:`decide` for event-loop callers. On one Redis server the
        decision's store call is awaited on the running loop (redis-py's asyncio
        connection, one script call as in :meth:`decide`; no worker thread); on other
        network stores the decision runs in a worker thread; the in-memory stores never
        wait, so there it is decided inline. The same decisions, the same grant
        lifecycle, the same degraded answers: a decision cancelled while its call is on
        the wire has whatever it may have reserved voided. One router's async decisions
        run one at a time (use several workers, or :meth:`adecide_batch`, for more)."""
        if self.store.in_process:
            return self.decide(app, deadline_ms=deadline_ms)
        if not getattr(self.store, "async_walks", False) or self.clock is not None:
            return await asyncio.to_thread(self.decide, app, deadline_ms=deadline_ms)
        budget = _checked_deadline(deadline_ms)
        validate_application(app)
        r = row_from_application(app, self.hasher)
        record, degraded = await self._allocator.aallocate_row(
            r, self._assess_one(r, full=False), budget
        )
        return decision_from_record(record, r.application_id, self.strategy.version, degraded)

    async def adecide_batch(
        self, apps: Sequence[Application], *, deadline_ms: float | None = None
    ) -> list[Decision]:
        """Async variant of :meth:`decide_batch` (``pipelined=True``) for event-loop
        callers. On one Redis server the applications are decided in arrival order, their
        walks sent in one pipelined write awaited on the running loop (one round trip for
        the batch, no worker thread; one at a time under a routing method that rotates),
        within one budget, and handed back together: if any application conflicts with a
        stored decision the whole batch raises :class:`IdempotencyConflict` and reserves
        nothing. Elsewhere :meth:`decide_batch` in a worker thread (inline in process)."""
        if not apps:
            return []
        if self.store.in_process:
            return self.decide_batch(apps, pipelined=True, deadline_ms=deadline_ms)
        if not getattr(self.store, "async_walks", False) or self.clock is not None:
            return await asyncio.to_thread(
                self.decide_batch, apps, pipelined=True, deadline_ms=deadline_ms
            )
        budget = _checked_deadline(deadline_ms)
        validate_applications(apps)  # every one before anything is decided: nothing half-written
        rows = [row_from_application(app, self.hasher) for app in apps]
        assessed = [self._assess_one(r, full=False) for r in rows]
        out = await self._allocator.aallocate_rows(rows, assessed, budget)
        version = self.strategy.version
        return [
            decision_from_record(record, r.application_id, version, degraded)
            for r, (record, degraded) in zip(rows, out)
        ]

    def decide_columns(self, cols: AppColumns, *, pipelined: bool = False) -> Outcomes:
        """Decide a column batch (the replay path); outcomes stay columnar."""
        if self.clock is not None:
            # The caller's clock, read once per application, replaces event time everywhere.
            cols.event_ms = np.array([self.clock() for _ in range(len(cols))], dtype=np.int64)
        if len(cols) == 1:  # a live decision: the scalar path, bit-identical to the batch one
            a = assess_one(
                cols, self.strategy, self.scorers, self._employers, assessor=self._assess_one
            )
        else:
            a = assess(cols, self.strategy, self.scorers, self._employers, self._table)
        return self._allocator.allocate(cols, a, pipelined)


_cap_log = get_logger("quota")


def _checked_deadline(deadline_ms: float | None) -> float | None:
    """A caller's deadline: None, or a positive finite number of milliseconds."""
    if deadline_ms is None:
        return None
    if (
        isinstance(deadline_ms, bool)
        or not isinstance(deadline_ms, int | float)
        or not (0 < deadline_ms < float("inf"))
    ):
        raise InputError(
            f"field `deadline_ms`: a positive number of milliseconds (value: {deadline_ms!r})",
            field="deadline_ms",
        )
    return float(deadline_ms)


def _logging_on_cap(
    on_cap: Callable[[str, str, int, int], None] | None,
) -> Callable[[str, str, int, int], None]:
    """``on_cap`` that also logs ``quota.exhausted`` (info) when a cap first refuses in a
    window: bucket, window, window key and the event time that ran it out."""

    def note(bucket: str, window: str, key: int, event_ms: int) -> None:
        _cap_log.info(
            "quota.exhausted",
            bucket=bucket.strip("_"),
            window=window,
            window_key=key,
            at=datetime.fromtimestamp(event_ms / 1000, UTC).isoformat(),
        )
        if on_cap is not None:
            on_cap(bucket, window, key, event_ms)

    return note
