"""Quota-store contract: the same test classes for every QuotaStore implementation —
the in-memory store (dictionaries, and arrays), a real redis-server and a real 3-master
Redis Cluster."""

from datetime import UTC, datetime

import pytest

from router.errors import IdempotencyConflict
from router.store import (
    CAP_HIT,
    DEDUPED,
    GRANTED,
    Bucket,
    CapLimit,
    MemoryQuotaStore,
    cap_full,
    cap_index,
)
from router.windows import key_of

TZ = "Asia/Shanghai"


@pytest.fixture(params=["memory", "array", "redis", "cluster"])
def store(request, store_factory):
    return store_factory(request.param)


def ms(y, mo, d, h=0, mi=0, s=0):
    return int(datetime(y, mo, d, h, mi, s, tzinfo=UTC).timestamp() * 1000)


def bucket(*caps, dedupe_days=0, bid="p1"):
    return Bucket(bid, tuple(CapLimit(*c) for c in caps), TZ, dedupe_days * 86_400_000)


def keys(b, t):
    return tuple(key_of(t, c.window, b.timezone) for c in b.caps)


def reserve(store, b, t, amount=100, applicant=None):
    return store.try_reserve(b, keys(b, t), amount, applicant, t)


class TestCaps:
    def test_count_cap_holds_at_equality(self, store):
        b = bucket(("day", 3, None))
        t = ms(2026, 11, 2, 4)
        results = [reserve(store, b, t) for _ in range(4)]
        assert results[:3] == [GRANTED] * 3
        assert cap_index(results[3]) == 0 and cap_full(results[3])
        assert store.usage(b, keys(b, t)) == [(3, 300)]

    def test_amount_cap_holds_at_equality(self, store):
        b = bucket(("day", None, 1000))
        t = ms(2026, 11, 2, 4)
        assert reserve(store, b, t, 600) == GRANTED
        r = reserve(store, b, t, 401)  # would be 1001
        assert r >= CAP_HIT and cap_index(r) == 0 and not cap_full(r)
        assert reserve(store, b, t, 400) == GRANTED  # exactly 1000
        assert reserve(store, b, t, 1) >= CAP_HIT

    def test_multi_window_all_checked_before_any_increment(self, store):
        b = bucket(("hour", 2, None), ("day", 3, None), ("month", None, 10_000))
        t = ms(2026, 11, 2, 4)
        assert reserve(store, b, t) == GRANTED
        assert reserve(store, b, t) == GRANTED
        assert cap_index(reserve(store, b, t)) == 0  # the hour cap bites
        assert store.usage(b, keys(b, t)) == [(2, 200), (2, 200), (2, 200)]  # nothing half-applied
        t2 = t + 3600_000
        assert reserve(store, b, t2) == GRANTED  # next hour, day has one left
        assert cap_index(reserve(store, b, t2)) == 1  # the day cap bites
        assert store.usage(b, keys(b, t2))[1:] == [(3, 300), (3, 300)]

    def test_buckets_are_independent(self, store):
        a, b = bucket(("day", 1, None), bid="a"), bucket(("day", 1, None), bid="b")
        t = ms(2026, 11, 2, 4)
        assert reserve(store, a, t) == GRANTED and reserve(store, b, t) == GRANTED

    def test_day_rolls_over_at_midnight_shanghai(self, store):
        b = bucket(("day", 1, None))
        before = ms(2026, 11, 2, 15, 59, 59)  # 23:59:59 in Shanghai
        after = ms(2026, 11, 2, 16, 0, 0)  # 00:00:00 the next day in Shanghai
        assert reserve(store, b, before) == GRANTED
        assert reserve(store, b, before) >= CAP_HIT
        assert reserve(store, b, after) == GRANTED
        # UTC midnight is not a rollover for a Shanghai window
        b2 = bucket(("day", 1, None), bid="p2")
        assert reserve(store, b2, ms(2026, 11, 2, 23, 59)) == GRANTED
        assert reserve(store, b2, ms(2026, 11, 3, 0, 1)) >= CAP_HIT

    def test_hour_rolls_over_on_the_local_hour(self, store):
        b = bucket(("hour", 1, None))
        assert reserve(store, b, ms(2026, 11, 2, 5, 59, 59)) == GRANTED  # 13:59:59 Shanghai
        assert reserve(store, b, ms(2026, 11, 2, 5, 59, 59)) >= CAP_HIT
        assert reserve(store, b, ms(2026, 11, 2, 6, 0, 0)) == GRANTED  # 14:00:00

    def test_dst_zone_repeated_hour_is_two_windows_and_the_day_has_25_hours(self, store):
        ny = "America/New_York"  # clocks go back 2026-11-01 02:00 EDT -> 01:00 EST
        hour = Bucket("h", (CapLimit("hour", 1, None),), ny)
        day = Bucket("d", (CapLimit("day", 3, None),), ny)

        def go(b, t):
            return store.try_reserve(b, (key_of(t, b.caps[0].window, ny),), 1, None, t)

        first, second = ms(2026, 11, 1, 5, 30), ms(2026, 11, 1, 6, 30)  # 01:30 EDT, 01:30 EST
        assert go(hour, first) == GRANTED and go(hour, first) >= CAP_HIT
        assert go(hour, second) == GRANTED  # same wall-clock hour, a new window
        # 00:30 EDT, 23:30 EST (25 hours later) are the same day; 00:00 EST the next day
        assert go(day, ms(2026, 11, 1, 4, 30)) == GRANTED
        assert go(day, ms(2026, 11, 2, 4, 30)) == GRANTED
        assert go(day, ms(2026, 11, 2, 4, 59, 59)) == GRANTED
        assert go(day, ms(2026, 11, 2, 4, 59, 59)) >= CAP_HIT
        assert go(day, ms(2026, 11, 2, 5, 0, 0)) == GRANTED

    def test_cap_of_zero_refuses_and_cost_over_cap_refuses(self, store):
        t = ms(2026, 11, 2, 4)
        zero = bucket(("day", 0, None), bid="z")
        assert cap_full(reserve(store, zero, t))
        small = bucket(("day", None, 500), bid="s")
        assert reserve(store, small, t, amount=501) >= CAP_HIT
        assert store.usage(zero, keys(zero, t)) == [(0, 0)]
        assert store.usage(small, keys(small, t)) == [(0, 0)]

    def test_month_rollover(self, store):
        b = bucket(("month", 1, None))
        assert reserve(store, b, ms(2026, 11, 30, 15, 59)) == GRANTED  # Nov 30 23:59 local
        assert reserve(store, b, ms(2026, 11, 30, 16, 1)) == GRANTED  # Dec 1 00:01 local


class TestDedupe:
    def test_same_applicant_blocked_inside_window(self, store):
        b = bucket(("day", 100, None), dedupe_days=7)
        t = ms(2026, 11, 2, 4)
        assert reserve(store, b, t, applicant="h1") == GRANTED
        assert reserve(store, b, t + 1, applicant="h2") == GRANTED
        assert reserve(store, b, t + 6 * 86_400_000, applicant="h1") == DEDUPED
        assert reserve(store, b, t + 7 * 86_400_000, applicant="h1") == GRANTED

    def test_dedupe_refusal_counts_nothing(self, store):
        b = bucket(("day", 100, None), dedupe_days=1)
        t = ms(2026, 11, 2, 4)
        reserve(store, b, t, applicant="h1")
        reserve(store, b, t, applicant="h1")
        assert store.usage(b, keys(b, t)) == [(1, 100)]

    def test_dedupe_is_per_bucket(self, store):
        a = bucket(("day", 9, None), dedupe_days=7, bid="a")
        b = bucket(("day", 9, None), dedupe_days=7, bid="b")
        t = ms(2026, 11, 2, 4)
        assert reserve(store, a, t, applicant="h1") == GRANTED
        assert reserve(store, b, t, applicant="h1") == GRANTED


class TestIdempotency:
    def _d(self, value=0):
        return b"record-%d" % value  # opaque to the store

    def test_first_decision_returned(self, store):
        assert store.recall("a1", 11) is None
        store.remember("a1", 11, self._d(), ms(2026, 11, 2))
        assert store.recall("a1", 11) == self._d()

    def test_same_id_different_content_is_an_error(self, store):
        store.remember("a1", 11, self._d(), ms(2026, 11, 2))
        with pytest.raises(IdempotencyConflict, match="a1"):
            store.recall("a1", 12)

    def test_remember_keeps_the_first(self, store):
        first = self._d()
        store.remember("a1", 11, first, ms(2026, 11, 2))
        store.remember("a1", 11, self._d(99), ms(2026, 11, 2))
        assert store.recall("a1", 11) == first

    def test_recall_many_checks_all_before_returning(self, store):
        store.remember_many(["a1", "a2"], [21, 22], [self._d(1), self._d(2)], [ms(2026, 11, 2)] * 2)
        assert store.recall_many(["x", "a2", "a1"], [0, 22, 21]) == {1: self._d(2), 2: self._d(1)}
        with pytest.raises(IdempotencyConflict, match="a2"):
            store.recall_many(["a1", "a2"], [21, 29])


class TestMemoryOnly:
    def test_records_expire_after_ttl_by_event_time(self):
        # Replay expires by event time; Redis expires by its own clock (see test_redis_store).
        store = MemoryQuotaStore(idempotency_ttl_ms=3600_000)
        t = ms(2026, 11, 2)
        store.remember("a1", 31, b"record-0", t)
        store.remember("a2", 31, b"record-0", t + 2 * 3600_000)  # event time moves on
        assert store.recall("a1", 31) is None and store.recall("a2", 31) == b"record-0"


class TestBadInput:
    @pytest.mark.parametrize("amount", [0, -5, 2**53, 2**60, 1.5, float("nan"), True, "100"])
    def test_bad_amount_is_an_error_and_writes_nothing(self, store, amount):
        from router.errors import InputError

        b = bucket(("day", 10, None))
        t = ms(2026, 11, 2, 4)
        with pytest.raises(InputError, match="amount"):
            store.try_reserve(b, keys(b, t), amount, None, t, application_id="a1")
        assert store.usage(b, keys(b, t)) == [(0, 0)]
        assert store.try_reserve(b, keys(b, t), 5, None, t, application_id="a1") == GRANTED

    @pytest.mark.parametrize(
        "field,value",
        [
            ("application_id", ""),
            ("application_id", "x" * 200),
            ("application_id", "app{1}"),
            ("application_id", "申请-1"),
            ("applicant", "h 1"),
            ("applicant", ""),
        ],
    )
    def test_bad_ids_are_errors_and_write_nothing(self, store, field, value):
        from router.errors import InputError

        b = bucket(("day", 10, None), dedupe_days=1)
        t = ms(2026, 11, 2, 4)
        kwargs = {"application_id": "ok-1", "applicant": "h1", field: value}
        with pytest.raises(InputError, match=field):
            store.try_reserve(
                b, keys(b, t), 5, kwargs["applicant"], t, application_id=kwargs["application_id"]
            )
        assert store.usage(b, keys(b, t)) == [(0, 0)]


class TestRetries:
    def test_retry_of_a_grant_is_not_applied_twice(self, store):
        b = bucket(("day", 2, None), dedupe_days=1)
        t = ms(2026, 11, 2, 4)
        first = store.try_reserve(b, keys(b, t), 100, "h1", t, application_id="a1")
        again = store.try_reserve(b, keys(b, t), 100, "h1", t, application_id="a1")
        assert first == again == GRANTED
        assert store.usage(b, keys(b, t)) == [(1, 100)]

    def test_other_applications_still_counted(self, store):
        b = bucket(("day", 2, None))
        t = ms(2026, 11, 2, 4)
        results = [
            store.try_reserve(b, keys(b, t), 100, None, t, application_id=a)
            for a in ("a1", "a2", "a3", "a1")
        ]
        assert results[:2] == [GRANTED, GRANTED] and results[2] >= CAP_HIT
        assert results[3] == GRANTED  # a1 was granted before: its retry answers the same


class TestSingleTrip:
    """Check, reserve and record in one call (atomic where ``single_trip`` is true)."""

    def test_grant_stores_the_record_and_retries_answer_it(self, store):
        b = bucket(("day", 5, None))
        t = ms(2026, 11, 2, 4)
        r, existing = store.try_reserve_once(
            b, keys(b, t), 100, None, t, application_id="a1", fingerprint=7, record=b"granted"
        )
        assert (r, existing) == (GRANTED, None)
        r, existing = store.try_reserve_once(
            b, keys(b, t), 100, None, t, application_id="a1", fingerprint=7, record=b"other"
        )
        assert existing == b"granted"
        assert store.usage(b, keys(b, t)) == [(1, 100)]
        with pytest.raises(IdempotencyConflict):
            store.try_reserve_once(
                b, keys(b, t), 100, None, t, application_id="a1", fingerprint=8, record=b"x"
            )

    def test_refusal_stores_nothing_and_record_once_keeps_the_first(self, store):
        b = bucket(("day", 0, None))
        t = ms(2026, 11, 2, 4)
        r, existing = store.try_reserve_once(
            b, keys(b, t), 100, None, t, application_id="a2", fingerprint=9, record=b"granted"
        )
        assert r >= CAP_HIT and existing is None
        assert store.record_once("a2", 9, b"declined", t) is None
        assert store.record_once("a2", 9, b"again", t) == b"declined"
        with pytest.raises(IdempotencyConflict):
            store.record_once("a2", 10, b"x", t)


class TestLedger:
    def test_entry_appended_only_when_granted(self, store):
        from router.messages import CommercialTerms, ReferralEntry

        b = bucket(("day", 1, None))
        t = ms(2026, 11, 2, 4)

        def entry(i):
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

        assert store.try_reserve(b, keys(b, t), 100, None, t, entry(1)) == GRANTED
        assert store.try_reserve(b, keys(b, t), 100, None, t, entry(2)) >= CAP_HIT
        assert [e.referral_id for e in store.ledger()] == ["r1"]
