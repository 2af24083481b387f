"""Quota-store contract: the shipped checks (:mod:`router.store.contract`) on every
registered backend — the in-memory store (dictionaries, and arrays), a real redis-server
and a real 3-master Redis Cluster — one test per check and backend, so a failure names
both. Users run the same checks on their own backends with
:func:`router.testing.check_quota_store`."""

from datetime import UTC, datetime

import pytest

from router.store import MemoryQuotaStore, store_kinds
from router.store.contract import CHECKS
from router.testing import check_quota_store


def ms(y, mo, d, h=0, mi=0, s=0):
    return int(datetime(y, mo, d, h, mi, s, tzinfo=UTC).timestamp() * 1000)


@pytest.mark.parametrize("kind", [k.name for k in store_kinds()])
@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__.removeprefix("check_"))
def test_contract(kind, check, store_factory):
    check(store_factory(kind))


def test_check_quota_store_runs_every_check_and_names_failures():
    """The shipped runner passes a conforming store and names each failing check."""
    assert check_quota_store("memory://") == len(CHECKS)

    class Leaky(MemoryQuotaStore):  # forgets every count: caps never bite
        def usage(self, bucket, keys):
            return [(0, 0)] * len(keys)

    with pytest.raises(AssertionError, match=r"quota-store checks failed:(.|\n)*check_count_cap"):
        check_quota_store(Leaky)


class TestMemoryOnly:
    def test_records_expire_after_ttl_by_event_time(self):
        # Replay expires by event time; Redis expires by its own clock (see test_redis_store).
        store = MemoryQuotaStore(idempotency_ttl_ms=3600_000)
        t = ms(2026, 11, 2)
        store.remember("a1", 31, b"record-0", t)
        store.remember("a2", 31, b"record-0", t + 2 * 3600_000)  # event time moves on
        assert store.recall("a1", 31) is None and store.recall("a2", 31) == b"record-0"
