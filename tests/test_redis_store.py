"""Redis-specific behaviour against real servers: equivalence with replay, TTLs, bad input."""

from datetime import datetime, timezone

import msgspec
import pytest
import redis

from router.config import load_strategy
from router.replay import replay
from router.store import GRANTED, Bucket, CapLimit
from router.traffic import write_traffic
from router.windows import key_of

TZ = "Asia/Shanghai"


@pytest.fixture(scope="module")
def traffic_50k(tmp_path_factory):
    return write_traffic(tmp_path_factory.mktemp("t") / "t.parquet", 50_000, seed=31,
                         per_day=50_000)


@pytest.mark.parametrize("kind", ["redis", "cluster"])
def test_replay_through_redis_equals_memory(tmp_path, traffic_50k, store_factory, kind):
    """50k applications: the Redis store gives byte-identical decisions to the memory store."""
    import sys
    sys.path.insert(0, "tests")
    from test_replay import _small_caps_strategy  # caps scaled so that they bite

    s = _small_caps_strategy("best_value")
    mem = replay(s, traffic_50k, tmp_path / "mem")
    red = replay(s, traffic_50k, tmp_path / "red", store=store_factory(kind))
    assert mem.decisions_path.read_bytes() == red.decisions_path.read_bytes()
    assert mem.summary["partners"] == red.summary["partners"]
    assert sum(mem.summary["decisions"].values()) == 50_000
    assert mem.summary["decisions"]["refer"] > 1000


def _ms(*a):
    return int(datetime(*a, tzinfo=timezone.utc).timestamp() * 1000)


def test_every_counter_has_a_ttl_to_window_end(store_factory):
    store = store_factory("redis")
    b = Bucket("p1", (CapLimit("hour", 5, None), CapLimit("day", 9, None),
                      CapLimit("month", None, 10**9)), TZ)
    t = _ms(2026, 11, 2, 15, 30)  # 23:30 Shanghai
    keys = tuple(key_of(t, c.window, TZ) for c in b.caps)
    assert store.try_reserve(b, keys, 100, None, t) == GRANTED
    ttls = store.counter_ttls(b, keys)
    grace = 6 * 3600_000
    assert all(x > 0 for x in ttls)
    assert abs(ttls[0] - (30 * 60_000 + grace)) < 5_000     # hour ends at 00:00
    assert abs(ttls[1] - (30 * 60_000 + grace)) < 5_000     # so does the day
    assert abs(ttls[2] - (28 * 86_400_000 + 30 * 60_000 + grace)) < 5_000  # Nov ends Dec 1


def test_lowering_a_cap_mid_window_refuses(store_factory):
    store = store_factory("redis")
    t = _ms(2026, 11, 2, 4)
    high = Bucket("p1", (CapLimit("day", 10, None),), TZ)
    k = (key_of(t, "day", TZ),)
    for _ in range(5):
        assert store.try_reserve(high, k, 1, None, t) == GRANTED
    low = Bucket("p1", (CapLimit("day", 3, None),), TZ)
    assert store.try_reserve(low, k, 1, None, t) >= 2
    assert store.usage(low, k) == [(5, 5)]


@pytest.mark.parametrize("amount", ["0", "-5", "9007199254740992", "1.5", "nan", "abc"])
def test_the_script_itself_validates_before_writing(store_factory, amount):
    """Defence in depth: even a caller that bypasses Python's checks cannot half-write."""
    store = store_factory("redis")
    p = store.prefix
    with pytest.raises(redis.ResponseError, match="ROUTER bad amount"):
        store._reserve(keys=[f"{p}{{p:x}}:c", f"{p}{{p:x}}:d", f"{p}{{p:x}}:l", f"{p}{{p:x}}:g",
                             f"{p}{{p:x}}:a"],
                       args=[1, amount, 1, 0, 0, 0, 1000, "", "a", 0, "", "", 10, -1, 1000])
    assert store.client.keys(f"{p}*") == []


def test_ledger_entries_in_streams_carry_no_raw_identifier(store_factory, make_router):
    from router.testing import make_application

    store = store_factory("redis")
    router = make_router({600: 0.2}, store=store)
    d = router.decide(make_application(bureau_score=600, national_id="110101199001015555"))
    assert d.partner_id == "plat_b"
    (entry,) = store.ledger()
    assert entry.partner_id == "plat_b" and len(entry.applicant_hash) == 32
    raw = b"".join(f[b"entry"] for _, f in store.client.xrange(f"{store.prefix}{{p:plat_b}}:ledger"))
    assert b"110101199001015555" not in raw
    assert msgspec.json.decode(raw)["terms"]["rev_share"] == 0.3
