"""The quota store interface shared by the in-memory and Redis stores.

A store keeps, per *bucket* (a partner id, or the funder's own ``__keep__`` /
``__branch__`` budgets):

* counters per capped calendar window (count and amount), checked all-then-reserved
  atomically by :meth:`QuotaStore.try_reserve`;
* an applicant-per-bucket dedupe window (keyed hashes only);
* the append-only referral ledger (an entry is appended in the same atomic step as the
  reservation it bills for);

and, per application id, the first decision (idempotency) as opaque record bytes (see
:data:`router.decide.outcomes.RECORD_DTYPE`) with a 64-bit content fingerprint: :meth:`recall`
returns the record for a repeated id with the same fingerprint and raises
:class:`~router.core.errors.IdempotencyConflict` for different content.

Time is the event time passed in, never the wall clock, so replay is exact.

The contract at the edges (every store; tests/store/test_fault_lifecycle.py,
tests/store/test_store_differential.py and tests/core/test_boundary.py hold them to it):

* **No phantom referral.** A grant counts for billing only if its decision was handed back
  to the caller. In-process stores post every grant at once (the caller and the store share
  a fate). A store where a reply can be lost (``two_phase``) keeps a decision's grants
  *pending* between :meth:`QuotaStore.begin_decision` and :meth:`QuotaStore.end_decision`:
  handed back → *posted* (the ledger's billable entry); a failed decision, a reply that
  never came or a degraded answer → *voided* (quota and dedupe released, a void entry on
  the ledger); a caller that died → voided by the server at the grant's deadline. A
  pending grant counts against every cap, so no cap is overrun while it is undecided.
  :meth:`QuotaStore.ledger` lists posted entries only.
* **Deadline.** A live decision has one budget for all its store calls; past it the router
  answers degraded (never ``refer``), nothing is resent behind the caller's back, and a
  breaker fails calls at once for one deadline after a failure, then probes.
* **Replay never degrades** (:meth:`QuotaStore.for_replay`: long deadlines, retries with
  backoff; the router raises :class:`~router.core.errors.StoreError` rather than degrade).
* **Ledger order** is the order decisions were handed back in, on every store.
* **The boundary validates**: every argument is checked before anything is written, and a
  bad one is an :class:`~router.core.errors.InputError` naming the field and value.
* **One late-event rule.** A reservation more than ``LATE_MS`` older than the store's
  horizon (the newest event time it has seen) is refused ``LATE`` on every store; inside
  the horizon every store answers from the same state (event time; Redis TTLs are only
  garbage collection, set longer than anything inside the horizon can need).
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Generator, Iterable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import NamedTuple
from zoneinfo import ZoneInfoNotFoundError

from router.core.errors import InputError, StoreError
from router.core.messages import ReferralEntry
from router.core.windows import WINDOWS, zone

#: :meth:`QuotaStore.try_reserve` results. Values ≥ ``CAP_HIT`` name the cap that refused:
#: ``CAP_HIT + 2·i + full`` for ``bucket.caps[i]``, where ``full`` is 1 when that cap's
#: *count* is used up. A full count cap stays full for the rest of its window (counters
#: only grow within a window key), so callers may skip the store until the window rolls.
GRANTED = 0
DEDUPED = 1
CAP_HIT = 2
#: The event is late: more than ``LATE_MS`` older than the newest event time the store has
#: seen (its horizon). Refused on every store alike, nothing written.
LATE = -3
#: Counters live until their window ends plus this grace, then expire (late events beyond
#: it start a fresh counter, in memory as in Redis).
COUNTER_GRACE_MS = 6 * 3600_000
#: The late-event horizon. Everything a store keeps (archived counters, dedupe marks,
#: grants) lives at least this long past the point where it stops mattering to events
#: inside the horizon, so within it every store answers from the same state — and beyond
#: it every store answers ``LATE``. Redis TTLs are set longer still: garbage collection only.
LATE_MS = COUNTER_GRACE_MS
#: In-process stores sweep expired counters, dedupe marks and grants once per this much
#: event time (memory and array alike).
SWEEP_EVERY_MS = 3600_000


def cap_index(result: int) -> int:
    """Which cap refused (index into ``bucket.caps``) for a result ≥ ``CAP_HIT``."""
    return (result - CAP_HIT) >> 1


def cap_full(result: int) -> bool:
    """True when the refusing cap's count is used up for its whole window."""
    return bool((result - CAP_HIT) & 1)


MAX_AMOUNT = 2**53 - 1
_ID = re.compile(r"[A-Za-z0-9_.:-]{1,128}")


def _check_id(name: str, value: object) -> None:
    if type(value) is not str or _ID.fullmatch(value) is None:
        raise InputError(
            f"{name} must be 1-128 characters of [A-Za-z0-9_.:-] (value: {value!r})", field=name
        )


def validate_reservation(
    bucket: Bucket,
    keys: tuple[int, ...],
    amount: object,
    applicant: object,
    event_ms: object,
    application_id: object,
) -> None:
    """Reject a malformed reservation before any store writes anything."""
    if type(amount) is not int or not 1 <= amount <= MAX_AMOUNT:
        raise InputError(
            f"amount must be an integer in minor units from 1 to 2^53-1 (value: {amount!r})",
            field="amount",
        )
    if type(event_ms) is not int or event_ms < 0:
        raise InputError(
            f"event_ms must be a non-negative integer (value: {event_ms!r})", field="event_ms"
        )
    if len(keys) != len(bucket.caps):
        raise InputError(f"keys must be one window key per cap (value: {keys!r})", field="keys")
    for k in keys:
        if type(k) is not int or k < 0:
            raise InputError(
                f"window keys must be non-negative integers (value: {keys!r})", field="keys"
            )
    if applicant is not None:
        _check_id("applicant", applicant)
    if application_id is not None:
        _check_id("application_id", application_id)


def check_fingerprints(fingerprints: Sequence[object]) -> None:
    """Content fingerprints are unsigned 64-bit integers."""
    for fp in fingerprints:
        if type(fp) is not int or not 0 <= fp < 2**64:
            raise InputError(
                f"fingerprint must be an integer from 0 to 2^64-1 (value: {fp!r})",
                field="fingerprint",
            )


@dataclass(frozen=True, slots=True)
class CapLimit:
    """One cap of a bucket: its window and limits (None = no limit)."""

    window: str
    count: int | None
    amount: int | None

    def __post_init__(self) -> None:
        if self.window not in WINDOWS:
            raise InputError(
                f"cap window must be one of {', '.join(WINDOWS)} (value: {self.window!r})",
                field="window",
            )
        for name in ("count", "amount"):
            v = getattr(self, name)
            if v is not None and (type(v) is not int or not 0 <= v <= MAX_AMOUNT):
                raise InputError(
                    f"cap {name} must be an integer from 0 to 2^53-1 or None (value: {v!r})",
                    field=name,
                )


@dataclass(frozen=True, slots=True)
class Bucket:
    """What is reserved against: an id, its caps, its time zone and dedupe window."""

    id: str
    caps: tuple[CapLimit, ...]
    timezone: str
    dedupe_ms: int = 0

    def __post_init__(self) -> None:
        _check_id("bucket", self.id)
        try:
            zone(self.timezone)
        except (ZoneInfoNotFoundError, ValueError, TypeError):
            raise InputError(
                f"unknown time zone (value: {self.timezone!r})", field="timezone"
            ) from None
        if type(self.dedupe_ms) is not int or not 0 <= self.dedupe_ms <= MAX_AMOUNT:
            raise InputError(
                f"dedupe_ms must be a non-negative integer (value: {self.dedupe_ms!r})",
                field="dedupe_ms",
            )


class Reservation(NamedTuple):
    """One reservation, as :meth:`QuotaStore.try_reserve_many` takes them (a plain tuple
    of these nine in this order works too)."""

    bucket: Bucket
    keys: tuple[int, ...]  # the bucket's window keys, one per cap
    amount: int
    applicant: str | None  # for dedupe (None: no dedupe)
    event_ms: int
    entry: ReferralEntry | None  # the ledger entry a grant bills (None: none)
    application_id: str | None
    fingerprint: int | None = None
    record: bytes = b""  # the decision record kept with a grant


class Attempt(NamedTuple):
    """One candidate of a decision a store walks in one call (:meth:`QuotaStore.walk_many`):
    the bucket and the row's window key of each of its caps, the applicant (for dedupe;
    None for the funder's budgets), the ledger entry of a grant, the decision record it
    stores when granted, the reason bits of its cap and dedupe refusals, and the bits of
    the refusals the router already knew of before it (skipped candidates)."""

    bucket: Bucket
    keys: tuple[int, ...]
    applicant: str | None
    entry: ReferralEntry | None
    record: bytes
    cap_bit: int
    dedupe_bit: int
    pre_bits: int


class Walk(NamedTuple):
    """A decision's candidates in the router's order, for one store call: the first that
    passes its caps and dedupe is reserved and its record stored; when none does, the
    ``decline`` record (with ``after_bits``: refusals known after the last candidate).
    A record's reason bits get the refusals before it ORed in (``late_bit`` for a late
    event), as the router's walk does."""

    application_id: str
    fingerprint: int
    event_ms: int
    amount: int
    attempts: list[Attempt]
    decline: bytes
    after_bits: int
    late_bit: int


class QuotaStore(ABC):
    """Atomic quota reservations, dedupe, idempotency and the referral ledger."""

    @abstractmethod
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
        """Reserve one grant of ``amount`` in every capped window, all or nothing.

        ``keys[i]`` is the window key of ``bucket.caps[i]`` at the event time. A cap holds
        at equality (a count cap of 10 grants the 10th and refuses the 11th). Caps are
        checked first, in order; then, when ``applicant`` is given and
        ``bucket.dedupe_ms`` > 0, an earlier grant to the same applicant within that many
        ms refuses this one. On success ``entry`` (if any) is
        appended to the ledger in the same step. Returns ``GRANTED``, ``DEDUPED``, a
        cap result (see :func:`cap_index`, :func:`cap_full`), or ``LATE`` when
        ``event_ms`` is more than ``LATE_MS`` older than the newest event time the store
        has seen (reservations and stored decisions advance it).

        A malformed argument raises :class:`~router.core.errors.InputError` before anything is
        written (:func:`validate_reservation`).

        With ``application_id``, a grant is remembered per bucket for the idempotency TTL: the
        same application reserving again at the same bucket (a retry after a lost reply) gets
        ``GRANTED`` again without counting or ledgering twice.
        """

    @abstractmethod
    def recall(self, application_id: str, fingerprint: int) -> bytes | None:
        """The decision record already stored for this id, if any (content must match)."""

    @abstractmethod
    def remember(self, application_id: str, fingerprint: int, record: bytes, event_ms: int) -> None:
        """Store the decision record for this id unless one exists (kept for the TTL)."""

    def lookup(self, application_id: str) -> bytes | None:
        """The decision record stored for this id, whatever content it was decided with
        (audit, and a caller's retry by id); None if there is none (never decided, or
        expired). A store that cannot look one up raises :class:`StoreError`."""
        raise StoreError(f"{type(self).__name__} cannot look a decision up by its id")

    def recall_many(
        self, application_ids: Sequence[str], fingerprints: Sequence[int]
    ) -> dict[int, bytes]:
        """Records of the ids already decided, by position. Checks every id before
        returning, so a conflict is raised before the caller reserves anything."""
        found: dict[int, bytes] = {}
        for i, (a, fp) in enumerate(zip(application_ids, fingerprints)):
            rec = self.recall(a, fp)
            if rec is not None:
                found[i] = rec
        return found

    def remember_many(
        self,
        application_ids: Sequence[str],
        fingerprints: Sequence[int],
        records: Sequence[bytes],
        event_ms: Sequence[int],
    ) -> None:
        """:meth:`remember` for parallel sequences."""
        for a, fp, rec, t in zip(application_ids, fingerprints, records, event_ms):
            self.remember(a, fp, rec, t)

    @abstractmethod
    def usage(self, bucket: Bucket, keys: tuple[int, ...]) -> list[tuple[int, int]]:
        """(count, amount) used in each of the bucket's windows at these keys."""

    @abstractmethod
    def ledger(self, *, branch: bool = False) -> Iterable[ReferralEntry]:
        """The posted referrals, in append order; with ``branch``, the second branch's
        loans too (entries with ``outcome == "branch"``, billed to the branch partner)."""

    #: True when :meth:`try_reserve_once` and :meth:`record_once` are atomic per call, so a
    #: single decision needs no separate recall and remember round trips.
    single_trip = False
    #: False when the store would drop ledger entries anyway (a replay's memory store that
    #: aggregates from the decisions): the router then does not build them.
    needs_entries = True
    #: True for stores shared between processes: decisions that are not a single trip then
    #: claim applications first (an in-process store dies with its process, claims and all).
    needs_claims = False
    #: True when the store lives in this process and never waits on a network (an
    #: event-loop caller then decides inline: :meth:`router.decide.engine.Router.adecide`).
    in_process = False
    #: True when the store's state is arrays a compiled walk decides a whole batch over
    #: (:mod:`router.decide.allocate_compiled`; only :class:`~router.store.array.ArrayQuotaStore`).
    compiled = False
    #: True while the store serves a replay (:meth:`for_replay`).
    replaying = False
    #: True when the store walks a whole decision's candidates in one call
    #: (:meth:`walk_many`; one Redis server: ``lua/decide.lua``).
    walks = False

    def capabilities(self) -> dict[str, bool]:
        """The declared capabilities above, by name (for messages, tests and checks)."""
        return {
            name: bool(getattr(self, name))
            for name in (
                "single_trip",
                "needs_entries",
                "needs_claims",
                "in_process",
                "compiled",
                "two_phase",
                "walks",
            )
        }

    def rewrite_records(
        self, application_ids: Sequence[str], fingerprints: Sequence[int], records: Sequence[bytes]
    ) -> None:
        """Replace stored decision records (same applications, same fingerprints) with
        these; only stores that declare :attr:`walks` need it."""
        raise NotImplementedError(f"{type(self).__name__} does not walk decisions")

    def walk_stream(
        self, runs: Iterable[Sequence[Walk]]
    ) -> Generator[list[tuple[int, list[int], bytes | None]], None, None]:
        """:meth:`walk_many` of each run in turn (a store may overlap them)."""
        for run in runs:
            yield self.walk_many(run)

    def walk_many(self, walks: Sequence[Walk]) -> list[tuple[int, list[int], bytes | None]]:
        """Decide each walk in order, one store call each (pipelined): per walk (the index
        of the attempt granted, -1 for none; each tried attempt's result; the record stored
        before, when the application was decided already — then nothing was tried).
        Only stores that declare :attr:`walks`."""
        raise NotImplementedError(f"{type(self).__name__} does not walk decisions")

    @property
    def async_walks(self) -> bool:
        """True when :meth:`awalk_many` serves (``Router.adecide`` then awaits the store
        on the running event loop instead of deciding in a worker thread)."""
        return False

    async def awalk_many(
        self, walks: Sequence[Walk], budget_ms: float | None = None
    ) -> list[tuple[int, list[int], bytes | None]]:
        """:meth:`walk_many` awaited, within ``budget_ms`` (the store's deadline at
        most). Only stores that declare :attr:`async_walks`."""
        raise NotImplementedError(f"{type(self).__name__} does not walk decisions async")

    def try_reserve_once(
        self,
        bucket: Bucket,
        keys: tuple[int, ...],
        amount: int,
        applicant: str | None,
        event_ms: int,
        entry: ReferralEntry | None = None,
        *,
        application_id: str,
        fingerprint: int,
        record: bytes,
    ) -> tuple[int, bytes | None]:
        """Answer from the application's stored record if it has one; otherwise reserve and,
        on a grant, store ``record``. Returns (result, None) or (-2, stored record)."""
        existing = self.recall(application_id, fingerprint)
        if existing is not None:
            return -2, existing
        r = self.try_reserve(
            bucket, keys, amount, applicant, event_ms, entry, application_id=application_id
        )
        if r == GRANTED:
            self.remember(application_id, fingerprint, record, event_ms)
        return r, None

    def record_once(
        self, application_id: str, fingerprint: int, record: bytes, event_ms: int
    ) -> bytes | None:
        """Store ``record`` unless the application has one; return the existing one if so."""
        existing = self.recall(application_id, fingerprint)
        if existing is not None:
            return existing
        self.remember(application_id, fingerprint, record, event_ms)
        return None

    # ---- the cross-slot protocol (stores whose single_trip is False) -------------------

    def claim_many(
        self, application_ids: Sequence[str], fingerprints: Sequence[int], lease_ms: int
    ) -> list[bool]:
        """Claim each application for deciding (True: ours). Default: nothing to claim."""
        return [True] * len(application_ids)

    def recover(
        self,
        application_id: str,
        fingerprint: int,
        bucket_ids: Sequence[str],
        lease_ms: int,
        event_ms: int,
    ) -> bytes | None:
        """For an application whose claim was taken: the decision made by whoever took it
        (waiting up to ``lease_ms`` for one in flight), or None once the claim is ours."""
        return None

    def try_reserve_recorded(
        self,
        bucket: Bucket,
        keys: tuple[int, ...],
        amount: int,
        applicant: str | None,
        event_ms: int,
        entry: ReferralEntry | None,
        *,
        application_id: str,
        fingerprint: int,
        record: bytes,
    ) -> int:
        """:meth:`try_reserve`, keeping ``record`` with the grant (for crash recovery)."""
        return self.try_reserve(
            bucket, keys, amount, applicant, event_ms, entry, application_id=application_id
        )

    def try_reserve_many(
        self, requests: Sequence[tuple], *, single_trip: bool = False
    ) -> list[tuple[int, bytes | None]]:
        """Several independent reservations, in order; each request is a
        :class:`Reservation` (or the same nine as a plain tuple). With
        ``single_trip`` each is :meth:`try_reserve_once`; otherwise a non-empty ``record`` is
        kept with the grant. Returns (result, stored record or None) per request. Network
        stores send them as one pipeline."""
        out: list[tuple[int, bytes | None]] = []
        for bucket, keys, amount, applicant, t, entry, app_id, fp, record in requests:
            if single_trip:
                out.append(
                    self.try_reserve_once(
                        bucket,
                        keys,
                        amount,
                        applicant,
                        t,
                        entry,
                        application_id=app_id,
                        fingerprint=fp,
                        record=record,
                    )
                )
            elif record:
                out.append(
                    (
                        self.try_reserve_recorded(
                            bucket,
                            keys,
                            amount,
                            applicant,
                            t,
                            entry,
                            application_id=app_id,
                            fingerprint=fp,
                            record=record,
                        ),
                        None,
                    )
                )
            else:
                out.append(
                    (
                        self.try_reserve(
                            bucket, keys, amount, applicant, t, entry, application_id=app_id
                        ),
                        None,
                    )
                )
        return out

    def record_many(
        self,
        application_ids: Sequence[str],
        fingerprints: Sequence[int],
        records: Sequence[bytes],
        event_ms: Sequence[int],
    ) -> list[bytes | None]:
        """:meth:`record_once` for many; network stores pipeline it."""
        return [
            self.record_once(a, fp, r, t)
            for a, fp, r, t in zip(application_ids, fingerprints, records, event_ms)
        ]

    # ---- the grant lifecycle (two-phase stores) ----------------------------------------

    #: True when grants made inside a decision stay *pending* until
    #: :meth:`end_decision` posts or voids them (network stores, where a reply can be lost).
    #: In-process stores post every grant at once: the caller and the store share a fate.
    two_phase = False

    def begin_decision(self) -> None:
        """A decision (or batch) starts: its deadline runs and its grants will be pending."""

    @contextmanager
    def deadline(self, deadline_ms: float | None) -> Generator[None, None, None]:
        """Decisions made inside this block, on this thread, get ``deadline_ms`` as their
        budget instead of the store's own ``timeout_ms`` — a caller's tighter deadline (a
        service request's header). Only ever shorter than the store's own; ``None``
        changes nothing. In-process stores never wait, so it changes nothing there."""
        yield

    def end_decision(self, handed_back: bool, answered: Sequence[tuple[str, str]] = ()) -> None:
        """The decision ended. ``handed_back``: its answers reach the caller, so its grants
        are posted (billable); otherwise they are voided (quota released). ``answered``:
        (bucket id, application id) of grants found already made that it answers with."""

    def flush(self) -> None:
        """Send every post and void still owed (no-op for in-process stores)."""

    def warm_up(self) -> None:
        """Best effort, before the first decision: connect and load what a first call
        would otherwise set up inside its deadline (no-op for in-process stores)."""

    def reachable(self) -> bool:
        """Whether the store answers now (a service's readiness probe); in-process stores
        always do."""
        return True

    def for_replay(self) -> None:
        """Switch to replay's service level: a long deadline per call, retries with
        backoff, grants pending as long as a batch takes (no-op for in-process stores)."""

    def forget_many(
        self, application_ids: Sequence[str], fingerprints: Sequence[int], records: Sequence[bytes]
    ) -> None:
        """Best effort: drop these decision records if they are still exactly these (their
        grants were voided, so a retry must decide afresh). No-op for in-process stores."""

    def close(self) -> None:
        """Release connections (no-op by default)."""

    def discard(self) -> None:
        """Delete everything this store holds — on a shared server only the keys under its
        own prefix (for checks and tests; an in-process store is simply dropped)."""
