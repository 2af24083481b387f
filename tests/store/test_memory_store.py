"""The memory store's own promises beyond the shared contract: what it keeps follows the
traffic inside its windows, not the length of the history (records expire by event time),
and ``on_append`` sees every ledger entry. Found wanting by mutation testing: expiry
mistakes changed no decision in the contract, only what the store kept forever."""

from __future__ import annotations

from router.core.messages import ReferralEntry
from router.store import GRANTED, MemoryQuotaStore
from router.store.base import LATE_MS
from router.store.contract import bucket, keys, ms, sample_entry

STEP = 300_000  # a reservation every five minutes
SWEEP = 3600_000  # the store sweeps about once an hour of event time


def test_records_are_kept_for_their_windows_not_for_the_history():
    ttl = 6 * 3600_000
    store = MemoryQuotaStore(idempotency_ttl_ms=ttl)
    b = bucket(("hour", 1000, None), ("day", 100_000, None), dedupe_days=1)
    t0 = ms(2026, 11, 2)
    for k in range(3 * 24 * 12):  # three days
        t = t0 + k * STEP
        assert store.try_reserve(b, keys(b, t), 100, f"h{k}", t, application_id=f"a{k}") == GRANTED
    # Idempotency: the last TTL's applications (plus up to one sweep interval).
    assert 0 < len(store._grants["p1"]) <= (ttl + SWEEP) // STEP + 1
    # Dedupe: the last day plus the late limit (plus one sweep interval).
    assert 0 < len(store._last_grant["p1"]) <= (86_400_000 + LATE_MS + SWEEP) // STEP + 1
    # Old windows: only those a late event may still reach.
    assert len(store._archive) <= 2 * (LATE_MS + SWEEP) // 3600_000 + 4
    # A retry inside the TTL is still the same grant; outside it, a new application.
    t_end = t0 + (3 * 24 * 12 - 1) * STEP
    last = f"a{3 * 24 * 12 - 1}"
    assert store.try_reserve(b, keys(b, t_end), 100, "x", t_end, application_id=last) == GRANTED
    assert store.usage(b, keys(b, t_end))[0][0] == 12  # the hour's twelve, not thirteen


def test_on_append_sees_every_entry():
    seen: list[ReferralEntry] = []
    store = MemoryQuotaStore(on_append=seen.append)
    b, t = bucket(("day", 5, None)), ms(2026, 11, 2, 4)
    entry = sample_entry(1, t)
    assert store.try_reserve(b, keys(b, t), 100, None, t, entry) == GRANTED
    assert [e.referral_id for e in seen] == ["r1"]
