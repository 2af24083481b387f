"""Redis-specific behaviour against real servers: equivalence with replay, TTLs, bad input."""

from datetime import UTC, datetime

import msgspec
import pytest
import redis

from router.core.config import load_strategy
from router.core.windows import key_of
from router.replay import replay
from router.store import GRANTED, Bucket, CapLimit
from router.traffic import write_traffic

# Every test here talks to real redis-server processes.
pytestmark = pytest.mark.redis

TZ = "Asia/Shanghai"


@pytest.fixture(scope="module")
def traffic_50k(tmp_path_factory):
    return write_traffic(
        tmp_path_factory.mktemp("t") / "t.parquet", 50_000, seed=31, per_day=50_000
    )


@pytest.mark.parametrize("kind", ["redis", "cluster"])
def test_replay_through_redis_equals_memory(tmp_path, traffic_50k, store_factory, kind):
    """50k applications: the Redis store gives byte-identical decisions to the memory store."""
    from tests_helpers import small_caps_strategy  # caps scaled so that they bite

    s = small_caps_strategy("best_value")
    mem = replay(s, traffic_50k, tmp_path / "mem")
    red = replay(s, traffic_50k, tmp_path / "red", store=store_factory(kind))
    assert mem.decisions_path.read_bytes() == red.decisions_path.read_bytes()
    assert mem.summary["partners"] == red.summary["partners"]
    assert sum(mem.summary["decisions"].values()) == 50_000
    assert mem.summary["decisions"]["refer"] > 1000


def _ms(*a):
    return int(datetime(*a, tzinfo=UTC).timestamp() * 1000)


def test_every_counter_has_a_ttl_to_window_end(store_factory):
    store = store_factory("redis")
    b = Bucket(
        "p1",
        (CapLimit("hour", 5, None), CapLimit("day", 9, None), CapLimit("month", None, 10**9)),
        TZ,
    )
    t = _ms(2026, 11, 2, 15, 30)  # 23:30 Shanghai
    keys = tuple(key_of(t, c.window, TZ) for c in b.caps)
    assert store.try_reserve(b, keys, 100, None, t) == GRANTED
    ttls = store.counter_ttls(b, keys)
    grace = 6 * 3600_000 + 3600_000  # the late-event horizon, and an hour of margin
    assert all(x > 0 for x in ttls)
    assert abs(ttls[0] - (30 * 60_000 + grace)) < 5_000  # hour ends at 00:00
    assert abs(ttls[1] - (30 * 60_000 + grace)) < 5_000  # so does the day
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


def _keys(p: str) -> list[str]:
    """The reservation script's keys for one cap at bucket ``x``."""
    return [f"{p}{{p:x}}:{k}" for k in ("c", "d", "l", "g", "a", "pendq", "h")]


@pytest.mark.parametrize("pending", [1000.0, -1.0, 0.5])
def test_the_script_wants_a_token_for_a_pending_grant(store_factory, pending):
    import struct

    store = store_factory("redis")
    p = store.prefix
    header = struct.pack("<10d", 5, 1, 0, 0, 1, 1000, 0, pending, -1, 0)
    with pytest.raises(redis.ResponseError, match="ROUTER bad (token|pending_ms)"):
        store._reserve(
            keys=_keys(p),
            args=[header, struct.pack("<3d", 10, -1, 1000), "", "a", "", "", "short", "", "x"],
        )
    assert store.client.keys(f"{p}*") == []


@pytest.mark.parametrize(
    "amount", [0.0, -5.0, 2.0**53, 1.5, float("nan"), float("inf"), "text header", "short"]
)
def test_the_script_itself_validates_before_writing(store_factory, amount):
    """Defence in depth: even a caller that bypasses Python's checks cannot half-write."""
    import struct

    store = store_factory("redis")
    p = store.prefix
    header = (
        amount.encode()
        if isinstance(amount, str)
        else struct.pack("<10d", amount, 1, 0, 0, 0, 1000, 0, 0, -1, 0)
    )
    with pytest.raises(redis.ResponseError, match="ROUTER bad (amount|header)"):
        store._reserve(
            keys=_keys(p),
            args=[header, struct.pack("<3d", 10, -1, 1000), "", "a", "", "", "", "", ""],
        )
    assert store.client.keys(f"{p}*") == []


@pytest.mark.parametrize("caps", [b"", b"x" * 24, None])
def test_the_script_rejects_malformed_caps(store_factory, caps):
    import struct

    store = store_factory("redis")
    p = store.prefix
    caps = caps if caps is not None else struct.pack("<3d", 10, -1, 0)  # a zero TTL
    with pytest.raises(redis.ResponseError, match="ROUTER bad (caps|counter ttl|count limit)"):
        store._reserve(
            keys=_keys(p),
            args=[
                struct.pack("<10d", 5, 1, 0, 0, 0, 1000, 0, 0, -1, 0),
                caps,
                "",
                "a",
                "",
                "",
                "",
                "",
                "",
            ],
        )
    assert store.client.keys(f"{p}*") == []


def test_ledger_entries_in_streams_carry_no_raw_identifier(store_factory, make_router):
    from router.testing import make_application

    store = store_factory("redis")
    router = make_router({600: 0.2}, store=store)
    d = router.decide(make_application(bureau_score=600, national_id="110101199001015555"))
    assert d.partner_id == "plat_b"
    (entry,) = store.ledger()
    assert entry.partner_id == "plat_b" and len(entry.applicant_hash) == 32
    raw = b"".join(
        f[b"entry"] for _, f in store.client.xrange(f"{store.prefix}{{p:plat_b}}:ledger")
    )
    assert b"110101199001015555" not in raw
    assert msgspec.json.decode(raw)["terms"]["rev_share"] == 0.3


def test_every_counter_key_has_a_ttl_after_a_replay(tmp_path, store_factory):
    from router.traffic import write_traffic as wt

    store = store_factory("redis")
    t = wt(tmp_path / "t.parquet", 3000, seed=8, per_day=3000)
    replay(load_strategy("configs/strategy.toml"), t, tmp_path / "o", store=store)
    counters = list(store.client.scan_iter(match=f"{store.prefix}*:c:*", count=1000))
    assert counters
    assert all(store.client.pttl(k) > 0 for k in counters)
    others = list(store.client.scan_iter(match=f"{store.prefix}*", count=1000))
    # Only the ledger streams and the event-time horizon persist.
    kept = [k for k in others if k.endswith(b":ledger") or k == f"{store.prefix}{{h}}".encode()]
    assert all(store.client.pttl(k) > 0 for k in others if k not in kept)


def test_prefixes_isolate_strategies_on_one_server(store_factory):
    a, b = store_factory("redis"), store_factory("redis")
    t = _ms(2026, 11, 2, 4)
    bk = Bucket("p1", (CapLimit("day", 1, None),), TZ)
    k = (key_of(t, "day", TZ),)
    assert a.try_reserve(bk, k, 5, None, t) == GRANTED
    assert b.try_reserve(bk, k, 5, None, t) == GRANTED  # its own counters
    assert a.try_reserve(bk, k, 5, None, t) >= 2


def test_password_in_the_url(tmp_path):
    import port_for
    from servers import start_node

    from router.core.errors import StoreError
    from router.store import quota_store_from_url

    port = port_for.select_random()
    node = start_node(tmp_path, port, "--requirepass", "s3cret")
    try:
        t = _ms(2026, 11, 2, 4)
        bk = Bucket("p1", (CapLimit("day", 1, None),), TZ)
        k = (key_of(t, "day", TZ),)
        good = quota_store_from_url(f"redis://:s3cret@127.0.0.1:{port}/0?timeout_ms=2000")
        assert good.try_reserve(bk, k, 5, None, t) == GRANTED
        bad = quota_store_from_url(f"redis://:wrong@127.0.0.1:{port}/0?timeout_ms=2000")
        with pytest.raises(StoreError):
            bad.try_reserve(bk, k, 5, None, t)
    finally:
        node.stop()


def test_replay_keeps_the_options_the_url_gave_and_raises_the_others():
    """Replay's floor (long deadlines, 6 retries) applies where the URL is silent; a URL
    asking for one retry gets one (a dead store then answers in seconds, not ~13 s)."""
    from router.store.redis import RedisQuotaStore

    given = RedisQuotaStore.from_url("redis://127.0.0.1:1/0?retries=1&backoff_ms=10")
    given.for_replay()
    assert (given.retries, given.link.retries, given.link.backoff_s) == (1, 1, 0.01)
    assert given.link.timeout_s == 10.0 and given.pending_ms == 3_600_000
    silent = RedisQuotaStore.from_url("redis://127.0.0.1:1/0?timeout_ms=200")
    silent.for_replay()
    assert (silent.retries, silent.link.backoff_s, silent.link.timeout_s) == (6, 0.1, 0.2)
