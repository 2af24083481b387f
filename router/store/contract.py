"""The quota-store contract as executable checks (shipped, like scikit-learn's
``check_estimator``): every backend — the project's own and a user's — must pass them all.

Each check takes a *fresh, empty* store and raises :class:`AssertionError` naming what
went wrong. :func:`router.testing.check_quota_store` runs them all on stores it builds
from a URL or a factory; the project's test suite runs each one on every registered
backend (``tests/store/test_store_contract.py``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from typing import Any

from router.core.errors import IdempotencyConflict, InputError
from router.core.messages import CommercialTerms, ReferralEntry
from router.core.windows import key_of
from router.store.base import (
    CAP_HIT,
    DEDUPED,
    GRANTED,
    LATE,
    LATE_MS,
    Bucket,
    CapLimit,
    QuotaStore,
)
from router.store.base import cap_full as _cap_full
from router.store.base import cap_index as _cap_index

TZ = "Asia/Shanghai"
Check = Callable[[QuotaStore], None]


def ms(y: int, mo: int, d: int, h: int = 0, mi: int = 0, s: int = 0) -> int:
    """Epoch milliseconds of a UTC time."""
    return int(datetime(y, mo, d, h, mi, s, tzinfo=UTC).timestamp() * 1000)


def bucket(*caps: tuple, dedupe_days: int = 0, bid: str = "p1", tz: str = TZ) -> Bucket:
    """A bucket with caps given as (window, count, amount)."""
    return Bucket(bid, tuple(CapLimit(*c) for c in caps), tz, dedupe_days * 86_400_000)


def keys(b: Bucket, t: int) -> tuple[int, ...]:
    """The bucket's window keys at event time ``t``."""
    return tuple(key_of(t, c.window, b.timezone) for c in b.caps)


def _reserve(store: QuotaStore, b: Bucket, t: int, amount: Any = 100, applicant=None, **kw):
    return store.try_reserve(b, keys(b, t), amount, applicant, t, **kw)


def _raises(kind: type[BaseException], pattern: str, fn: Callable[[], Any]) -> None:
    try:
        fn()
    except kind as exc:
        assert re.search(pattern, str(exc)), f"{kind.__name__} without {pattern!r}: {exc}"
        return
    raise AssertionError(f"expected {kind.__name__} ({pattern!r}); nothing was raised")


def _refused(r: int) -> bool:
    return r >= CAP_HIT


# ---- caps ------------------------------------------------------------------------------


def check_count_cap_holds_at_equality(store: QuotaStore) -> None:
    b, t = bucket(("day", 3, None)), ms(2026, 11, 2, 4)
    results = [_reserve(store, b, t) for _ in range(4)]
    assert results[:3] == [GRANTED] * 3, results
    assert _cap_index(results[3]) == 0 and _cap_full(results[3]), results
    assert store.usage(b, keys(b, t)) == [(3, 300)]


def check_amount_cap_holds_at_equality(store: QuotaStore) -> None:
    b, t = bucket(("day", None, 1000)), ms(2026, 11, 2, 4)
    assert _reserve(store, b, t, 600) == GRANTED
    r = _reserve(store, b, t, 401)  # would be 1001
    assert _refused(r) and _cap_index(r) == 0 and not _cap_full(r), r
    assert _reserve(store, b, t, 400) == GRANTED  # exactly 1000
    assert _refused(_reserve(store, b, t, 1))


def check_every_cap_checked_before_any_increment(store: QuotaStore) -> None:
    b = bucket(("hour", 2, None), ("day", 3, None), ("month", None, 10_000))
    t = ms(2026, 11, 2, 4)
    assert _reserve(store, b, t) == GRANTED and _reserve(store, b, t) == GRANTED
    assert _cap_index(_reserve(store, b, t)) == 0  # the hour cap bites
    assert store.usage(b, keys(b, t)) == [(2, 200)] * 3  # nothing half-applied
    t2 = t + 3600_000
    assert _reserve(store, b, t2) == GRANTED  # next hour, the day has one left
    assert _cap_index(_reserve(store, b, t2)) == 1  # the day cap bites
    assert store.usage(b, keys(b, t2))[1:] == [(3, 300), (3, 300)]


def check_buckets_are_independent(store: QuotaStore) -> None:
    a, b = bucket(("day", 1, None), bid="a"), bucket(("day", 1, None), bid="b")
    t = ms(2026, 11, 2, 4)
    assert _reserve(store, a, t) == GRANTED and _reserve(store, b, t) == GRANTED


def check_day_rolls_over_at_local_midnight(store: QuotaStore) -> None:
    b = bucket(("day", 1, None))
    before, after = ms(2026, 11, 2, 15, 59, 59), ms(2026, 11, 2, 16)  # 23:59:59 / 00:00 local
    assert _reserve(store, b, before) == GRANTED
    assert _refused(_reserve(store, b, before))
    assert _reserve(store, b, after) == GRANTED
    b2 = bucket(("day", 1, None), bid="p2")  # UTC midnight is no rollover in Shanghai
    assert _reserve(store, b2, ms(2026, 11, 2, 23, 59)) == GRANTED
    assert _refused(_reserve(store, b2, ms(2026, 11, 3, 0, 1)))


def check_hour_rolls_over_on_the_local_hour(store: QuotaStore) -> None:
    b = bucket(("hour", 1, None))
    assert _reserve(store, b, ms(2026, 11, 2, 5, 59, 59)) == GRANTED  # 13:59:59 Shanghai
    assert _refused(_reserve(store, b, ms(2026, 11, 2, 5, 59, 59)))
    assert _reserve(store, b, ms(2026, 11, 2, 6)) == GRANTED  # 14:00:00


def check_repeated_dst_hour_is_two_windows_and_the_day_has_25_hours(store: QuotaStore) -> None:
    ny = "America/New_York"  # clocks go back 2026-11-01 02:00 EDT -> 01:00 EST
    hour, day = bucket(("hour", 1, None), bid="h", tz=ny), bucket(("day", 3, None), bid="d", tz=ny)
    first, second = ms(2026, 11, 1, 5, 30), ms(2026, 11, 1, 6, 30)  # 01:30 EDT, 01:30 EST
    assert _reserve(store, hour, first, 1) == GRANTED and _refused(_reserve(store, hour, first, 1))
    assert _reserve(store, hour, second, 1) == GRANTED  # the same wall-clock hour, a new window
    # 00:30 EDT and 23:30 EST (25 hours later) are the same day; 00:00 EST the next day
    assert _reserve(store, day, ms(2026, 11, 1, 4, 30), 1) == GRANTED
    assert _reserve(store, day, ms(2026, 11, 2, 4, 30), 1) == GRANTED
    assert _reserve(store, day, ms(2026, 11, 2, 4, 59, 59), 1) == GRANTED
    assert _refused(_reserve(store, day, ms(2026, 11, 2, 4, 59, 59), 1))
    assert _reserve(store, day, ms(2026, 11, 2, 5), 1) == GRANTED


def check_zero_cap_and_cost_over_cap_refuse_and_count_nothing(store: QuotaStore) -> None:
    t = ms(2026, 11, 2, 4)
    zero, small = bucket(("day", 0, None), bid="z"), bucket(("day", None, 500), bid="s")
    assert _cap_full(_reserve(store, zero, t))
    assert _refused(_reserve(store, small, t, amount=501))
    assert store.usage(zero, keys(zero, t)) == [(0, 0)]
    assert store.usage(small, keys(small, t)) == [(0, 0)]


def check_month_rolls_over(store: QuotaStore) -> None:
    b = bucket(("month", 1, None))
    assert _reserve(store, b, ms(2026, 11, 30, 15, 59)) == GRANTED  # Nov 30 23:59 local
    assert _reserve(store, b, ms(2026, 11, 30, 16, 1)) == GRANTED  # Dec 1 00:01 local


# ---- dedupe ----------------------------------------------------------------------------


def check_same_applicant_blocked_inside_the_dedupe_window(store: QuotaStore) -> None:
    b, t = bucket(("day", 100, None), dedupe_days=7), ms(2026, 11, 2, 4)
    assert _reserve(store, b, t, applicant="h1") == GRANTED
    assert _reserve(store, b, t + 1, applicant="h2") == GRANTED
    assert _reserve(store, b, t + 6 * 86_400_000, applicant="h1") == DEDUPED
    assert _reserve(store, b, t + 7 * 86_400_000, applicant="h1") == GRANTED


def check_dedupe_refusal_counts_nothing(store: QuotaStore) -> None:
    b, t = bucket(("day", 100, None), dedupe_days=1), ms(2026, 11, 2, 4)
    _reserve(store, b, t, applicant="h1")
    _reserve(store, b, t, applicant="h1")
    assert store.usage(b, keys(b, t)) == [(1, 100)]


def check_dedupe_needs_an_applicant_and_a_window(store: QuotaStore) -> None:
    t = ms(2026, 11, 2, 4)
    plain = bucket(("day", 10, None), bid="plain")  # no dedupe window
    assert _reserve(store, plain, t, 100, "h1") == GRANTED
    assert _reserve(store, plain, t, 100, "h1") == GRANTED
    deduped = bucket(("day", 10, None), dedupe_days=1, bid="deduped")
    assert _reserve(store, deduped, t) == GRANTED  # no applicant: nothing to dedupe on
    assert _reserve(store, deduped, t) == GRANTED
    assert store.usage(plain, keys(plain, t)) == [(2, 200)]


def check_dedupe_is_per_bucket(store: QuotaStore) -> None:
    a = bucket(("day", 9, None), dedupe_days=7, bid="a")
    b = bucket(("day", 9, None), dedupe_days=7, bid="b")
    t = ms(2026, 11, 2, 4)
    assert _reserve(store, a, t, applicant="h1") == GRANTED
    assert _reserve(store, b, t, applicant="h1") == GRANTED


# ---- idempotency -----------------------------------------------------------------------


def check_the_first_decision_is_returned(store: QuotaStore) -> None:
    assert store.recall("a1", 11) is None
    store.remember("a1", 11, b"record-0", ms(2026, 11, 2))
    assert store.recall("a1", 11) == b"record-0"


def check_a_decision_is_found_by_its_id(store: QuotaStore) -> None:
    assert store.lookup("a1") is None
    store.remember("a1", 11, b"record-0", ms(2026, 11, 2))
    store.remember("a1", 12, b"record-1", ms(2026, 11, 2))  # (the first one stays)
    assert store.lookup("a1") == b"record-0"
    assert store.lookup("a2") is None


def check_same_id_with_other_content_is_a_conflict(store: QuotaStore) -> None:
    store.remember("a1", 11, b"record-0", ms(2026, 11, 2))
    _raises(IdempotencyConflict, "a1", lambda: store.recall("a1", 12))


def check_remember_keeps_the_first(store: QuotaStore) -> None:
    store.remember("a1", 11, b"record-0", ms(2026, 11, 2))
    store.remember("a1", 11, b"record-99", ms(2026, 11, 2))
    assert store.recall("a1", 11) == b"record-0"


def check_recall_many_checks_all_before_returning(store: QuotaStore) -> None:
    store.remember_many(["a1", "a2"], [21, 22], [b"r1", b"r2"], [ms(2026, 11, 2)] * 2)
    assert store.recall_many(["x", "a2", "a1"], [0, 22, 21]) == {1: b"r2", 2: b"r1"}
    _raises(IdempotencyConflict, "a2", lambda: store.recall_many(["a1", "a2"], [21, 29]))


# ---- bad input -------------------------------------------------------------------------


def check_bad_amounts_are_errors_and_write_nothing(store: QuotaStore) -> None:
    b, t = bucket(("day", 10, None)), ms(2026, 11, 2, 4)
    for amount in (0, -5, 2**53, 2**60, 1.5, float("nan"), True, "100"):
        _raises(InputError, "amount", partial(_reserve, store, b, t, amount, application_id="a1"))
    assert store.usage(b, keys(b, t)) == [(0, 0)]
    assert _reserve(store, b, t, 5, application_id="a1") == GRANTED


def check_bad_ids_are_errors_and_write_nothing(store: QuotaStore) -> None:
    b, t = bucket(("day", 10, None), dedupe_days=1), ms(2026, 11, 2, 4)
    bad = [
        ("application_id", ""),
        ("application_id", "x" * 200),
        ("application_id", "app{1}"),
        ("application_id", "申请-1"),
        ("applicant", "h 1"),
        ("applicant", ""),
    ]
    for field, value in bad:
        kw = {"application_id": "ok-1", "applicant": "h1", field: value}
        _raises(
            InputError,
            field,
            partial(_reserve, store, b, t, 5, kw["applicant"], application_id=kw["application_id"]),
        )
    assert store.usage(b, keys(b, t)) == [(0, 0)]


def check_a_later_caps_refusal_names_that_cap(store: QuotaStore) -> None:
    b, t = bucket(("day", 5, None), ("month", 3, 250)), ms(2026, 11, 2, 4)
    assert _reserve(store, b, t) == GRANTED and _reserve(store, b, t) == GRANTED
    r = _reserve(store, b, t, 100)  # the month's amount: 300 > 250
    assert r == CAP_HIT + 2 * 1, r
    assert _reserve(store, b, t, 50) == GRANTED  # exactly 250, the third of three
    r = _reserve(store, b, t, 1)  # the month's count is full
    assert r == CAP_HIT + 2 * 1 + 1, r


# ---- event time ------------------------------------------------------------------------


def check_the_late_limit_is_exact(store: QuotaStore) -> None:
    b, t = bucket(("day", 10, None)), ms(2026, 11, 2, 12)
    assert _reserve(store, b, t) == GRANTED
    assert _reserve(store, b, t - LATE_MS) == GRANTED  # exactly at the limit: still on time
    assert _reserve(store, b, t - LATE_MS - 1) == LATE
    assert store.usage(b, keys(b, t)) == [(2, 200)]


def check_a_late_event_counts_in_its_own_window(store: QuotaStore) -> None:
    b, other = bucket(("day", 1, None)), bucket(("day", 100, None), bid="other")
    day1 = ms(2026, 11, 2, 15)  # 23:00 local
    assert _reserve(store, b, day1) == GRANTED
    day2 = day1 + 2 * 3600_000  # 01:00 of the next local day: the window rolls
    assert _reserve(store, b, day2, 300) == GRANTED
    assert _reserve(store, other, day2 + 3600_000) == GRANTED  # time moves on (a sweep)
    late = day1 + 1800_000  # 23:30 of the first day, inside the late limit
    r = _reserve(store, b, late)
    assert _refused(r) and _cap_full(r), r  # the first day's cap is still full
    assert store.usage(b, keys(b, late)) == [(1, 100)]
    assert store.usage(b, keys(b, day2)) == [(1, 300)]


def check_a_late_event_in_a_window_never_seen_starts_from_zero(store: QuotaStore) -> None:
    b = bucket(("day", 1, None))
    day2 = ms(2026, 11, 2, 17)  # 01:00 local on 3 November
    assert _reserve(store, b, day2) == GRANTED
    late = day2 - 2 * 3600_000  # 23:00 on 2 November: no counter for that day yet
    assert _reserve(store, b, late, 250) == GRANTED
    assert store.usage(b, keys(b, late)) == [(1, 250)]
    assert _refused(_reserve(store, b, late))


def check_grants_and_dedupe_outlive_the_sweeps(store: QuotaStore) -> None:
    """Records expire by event time, not sooner: 20 hours of other traffic later (the
    stores sweep about hourly), a retry of a grant is still the same grant and the
    applicant is still inside a one-day dedupe window."""
    b, t = bucket(("day", 10, None), dedupe_days=1), ms(2026, 11, 2, 1)
    assert _reserve(store, b, t, 100, "h1", application_id="a1") == GRANTED
    other = bucket(("day", 1000, None), bid="other")
    for k in range(1, 41):
        assert _reserve(store, other, t + k * 1800_000) == GRANTED
    t2 = t + 20 * 3600_000
    assert _reserve(store, b, t2, 100, "h1", application_id="a1") == GRANTED
    assert store.usage(b, keys(b, t)) == [(1, 100)]  # the retry applied nothing
    assert _reserve(store, b, t2, 100, "h1", application_id="a2") == DEDUPED
    t3 = t + 86_400_000 + 1  # the dedupe window has passed
    assert _reserve(store, b, t3, 100, "h1", application_id="a3") == GRANTED
    for k in range(1, 17):  # past every record's end: the sweeps drop them
        assert _reserve(store, other, t3 + k * 1800_000) == GRANTED
    assert _reserve(store, b, t3 + 8 * 3600_000, 100, "h1", application_id="a4") == DEDUPED


# ---- retries ---------------------------------------------------------------------------


def check_a_retried_grant_is_not_applied_twice(store: QuotaStore) -> None:
    b, t = bucket(("day", 2, None), dedupe_days=1), ms(2026, 11, 2, 4)
    first = _reserve(store, b, t, 100, "h1", application_id="a1")
    again = _reserve(store, b, t, 100, "h1", application_id="a1")
    assert first == again == GRANTED, (first, again)
    assert store.usage(b, keys(b, t)) == [(1, 100)]


def check_other_applications_are_still_counted(store: QuotaStore) -> None:
    b, t = bucket(("day", 2, None)), ms(2026, 11, 2, 4)
    results = [_reserve(store, b, t, application_id=a) for a in ("a1", "a2", "a3", "a1")]
    assert results[:2] == [GRANTED, GRANTED] and _refused(results[2]), results
    assert results[3] == GRANTED  # a1 was granted before: its retry answers the same


# ---- single trip -----------------------------------------------------------------------


def check_a_grant_stores_its_record_and_retries_answer_it(store: QuotaStore) -> None:
    b, t = bucket(("day", 5, None)), ms(2026, 11, 2, 4)

    def once(record: bytes, fp: int = 7):
        return store.try_reserve_once(
            b, keys(b, t), 100, None, t, application_id="a1", fingerprint=fp, record=record
        )

    assert once(b"granted") == (GRANTED, None)
    assert once(b"other")[1] == b"granted"
    assert store.usage(b, keys(b, t)) == [(1, 100)]
    _raises(IdempotencyConflict, "a1", lambda: once(b"x", 8))


def check_a_refusal_stores_nothing_and_record_once_keeps_the_first(store: QuotaStore) -> None:
    b, t = bucket(("day", 0, None)), ms(2026, 11, 2, 4)
    r, existing = store.try_reserve_once(
        b, keys(b, t), 100, None, t, application_id="a2", fingerprint=9, record=b"granted"
    )
    assert _refused(r) and existing is None, (r, existing)
    assert store.record_once("a2", 9, b"declined", t) is None
    assert store.record_once("a2", 9, b"again", t) == b"declined"
    _raises(IdempotencyConflict, "a2", lambda: store.record_once("a2", 10, b"x", t))


# ---- ledger ----------------------------------------------------------------------------


def sample_entry(i: int, t: int) -> ReferralEntry:
    """A ledger entry for the checks: referral ``r{i}`` of application ``a{i}`` at ``t``."""
    return ReferralEntry(
        referral_id=f"r{i}",
        decision_id=f"d{i}",
        application_id=f"a{i}",
        partner_id="p1",
        event_time_ms=t,
        amount=100,
        term_months=12,
        applicant_hash="h",
        terms=CommercialTerms(rev_share=0.2),
        expected_value=10,
        strategy_version="v",
    )


def check_an_entry_is_appended_only_when_granted(store: QuotaStore) -> None:
    b, t = bucket(("day", 1, None)), ms(2026, 11, 2, 4)
    assert store.try_reserve(b, keys(b, t), 100, None, t, sample_entry(1, t)) == GRANTED
    assert _refused(store.try_reserve(b, keys(b, t), 100, None, t, sample_entry(2, t)))
    assert [e.referral_id for e in store.ledger()] == ["r1"]


def check_capabilities_are_declared(store: QuotaStore) -> None:
    caps = store.capabilities()
    assert all(type(v) is bool for v in caps.values()), caps
    if caps["compiled"]:
        assert caps["in_process"], "a compiled store walks arrays in this process"
    if not caps["in_process"]:
        assert caps["two_phase"], "a store behind a network must keep grants pending"


#: Every check, in the order :func:`router.testing.check_quota_store` runs them.
CHECKS: list[Check] = [f for name, f in list(globals().items()) if name.startswith("check_")]
