"""Faults against real redis-server processes: script cache loss, kill -9 and restart with
AOF, a reply lost after the script ran, and Redis down (degraded answers)."""

from __future__ import annotations

import signal
import time
import uuid
from datetime import UTC, datetime, timedelta

import port_for
import pytest
import redis
from servers import start_node
from tests_helpers import OPEN_ROUTERS

from router.core.config import strategy_from_dict
from router.core.messages import Decline, Keep, Refer
from router.core.windows import key_of
from router.decide.engine import Router
from router.store import GRANTED, Bucket, CapLimit, quota_store_from_url
from router.testing import ScoreLookupScorer, make_application, strategy_dict

# Every test here talks to real redis-server processes.
pytestmark = pytest.mark.redis

TZ = "Asia/Shanghai"
T0 = datetime(2026, 11, 2, 2, 0, tzinfo=UTC)


def _router(url: str, policy: str = "decline") -> Router:
    s = strategy_from_dict(strategy_dict(degraded={"policy": policy}))
    router = Router(
        s, quota_store_from_url(url), scorers={"main": ScoreLookupScorer({700: 0.02, 600: 0.2})}
    )
    OPEN_ROUTERS.append(router)  # closed at the test's end (conftest.py)
    return router


def _app(i: int, score: int = 600, **kw):
    return make_application(
        application_id=f"f-{i}",
        national_id=f"11010119900101{i:04d}",
        bureau_score=score,
        received_at=T0 + timedelta(seconds=i),
        **kw,
    )


@pytest.fixture
def own_server(tmp_path):
    """A redis-server of this test's own (AOF on, fsync always), so it can be killed."""
    port = port_for.select_random()
    node = start_node(tmp_path / "data", port, "--appendonly", "yes", "--appendfsync", "always")
    yield port, node, tmp_path / "data"
    if node.running():
        node.stop()


def test_script_flush_mid_run(own_server):
    port, _, _ = own_server
    url = f"redis://127.0.0.1:{port}/0?timeout_ms=2000&prefix={uuid.uuid4().hex[:6]}:"
    router = _router(url)
    first = [router.decide(_app(i)) for i in range(5)]
    redis.Redis(port=port).script_flush()
    second = [router.decide(_app(i)) for i in range(5, 10)]
    assert all(isinstance(d, Refer) for d in first + second)
    assert len(list(router.store.ledger())) == 10  # reloaded on NOSCRIPT, nothing twice


def test_kill_9_and_restart_loses_no_acknowledged_referral(own_server, tmp_path):
    port, node, data = own_server
    url = f"redis://127.0.0.1:{port}/0?timeout_ms=2000&prefix=k:"
    router = _router(url)
    acked = [router.decide(_app(i)) for i in range(20)]
    assert all(isinstance(d, Refer) for d in acked)
    node.kill(sig=signal.SIGKILL)  # kill -9
    restarted = start_node(data, port, "--appendonly", "yes", "--appendfsync", "always")
    try:
        # Grants are posted just after their answers are handed back; whatever the router
        # had not sent before the kill it sends once the server is back (the grants wait
        # pending, on disk, for pending_ms).
        router.store.flush()
        store = quota_store_from_url(url)
        ids = {e.application_id for e in store.ledger()}
        assert ids == {d.application_id for d in acked}
        # The same applications sent again get the same answers, counted once.
        router2 = Router(router.strategy, store, scorers=router.scorers)
        again = [router2.decide(_app(i)) for i in range(20)]
        assert again == acked
        assert len(list(store.ledger())) == 20
    finally:
        restarted.stop()


def test_reply_lost_after_the_script_ran_is_retried_exactly_once_in_replay(own_server, monkeypatch):
    """Replay's service level retries a call whose reply was lost: exactly once, because
    the resend finds the grant it made. (Live decisions never resend: see
    test_fault_lifecycle.py, where the lost grant is voided instead.)"""
    port, _, _ = own_server
    store = quota_store_from_url(f"redis://127.0.0.1:{port}/0?timeout_ms=2000&prefix=l:")
    store.for_replay()
    b = Bucket("p1", (CapLimit("day", 10, None),), TZ)
    t = int(T0.timestamp() * 1000)
    k = (key_of(t, "day", TZ),)
    warm = Bucket("p0", (CapLimit("day", 10, None),), TZ)
    assert store.try_reserve(warm, k, 1, None, t) == GRANTED  # the scripts are loaded
    real = store.link._send_once
    calls = {"n": 0}

    def lossy(*args, **kwargs):
        calls["n"] += 1
        result = real(*args, **kwargs)  # the script runs on the server ...
        if calls["n"] == 1:
            raise redis.ConnectionError("connection dropped before the reply")  # ... reply lost
        return result

    monkeypatch.setattr(store.link, "_send_once", lossy)
    assert store.try_reserve(b, k, 100, None, t, application_id="app-x") == GRANTED
    assert calls["n"] == 2
    assert store.usage(b, k) == [(1, 100)]


@pytest.mark.parametrize("policy,expected", [("decline", Decline), ("keep", Keep)])
def test_redis_down_gives_degraded_answers_within_the_deadline(policy, expected):
    dead = port_for.select_random()  # nothing listens here
    router = _router(f"redis://127.0.0.1:{dead}/0?timeout_ms=5", policy)
    t = time.perf_counter()
    prime = router.decide(_app(1, score=700))
    refer_candidate = router.decide(_app(2, score=600))
    elapsed = time.perf_counter() - t
    assert isinstance(prime, expected) and prime.degraded
    assert isinstance(refer_candidate, Decline) and refer_candidate.degraded
    assert "STORE_UNAVAILABLE" in refer_candidate.reasons
    assert elapsed < 0.5  # a few deadlines, not a hang


def test_redis_killed_mid_run_never_refers(own_server):
    port, node, _ = own_server
    router = _router(f"redis://127.0.0.1:{port}/0?timeout_ms=20&prefix=d:")
    before = [router.decide(_app(i)) for i in range(5)]
    assert all(isinstance(d, Refer) for d in before)
    node.kill(sig=signal.SIGKILL)  # kill -9
    after = [router.decide(_app(i)) for i in range(5, 15)]
    assert all(isinstance(d, Decline) and d.degraded for d in after)


class SimulatedCrash(BaseException):
    """Stands for the process dying (not an error the router handles)."""


@pytest.mark.parametrize("kind", ["redis", "cluster"])
def test_crash_between_grant_and_record_never_grants_twice(store_factory, kind, monkeypatch):
    """A batch granted at bank_a crashes before recording its decisions. The retry runs a
    strategy that would now pick plat_b: it must answer bank_a and grant nothing new."""
    store = store_factory(kind)
    scorers = {"main": ScoreLookupScorer({700: 0.02})}
    apps = [_app(i, score=700, region="440300") for i in (1, 2)]  # unlicensed: referred
    first = Router(strategy_from_dict(strategy_dict()), store, scorers=scorers)

    def crash(*args, **kwargs):
        raise SimulatedCrash

    # On a cluster the decision records are written after the grants (a crash window the
    # claims close); on a single server each grant writes its record in the same script.
    monkeypatch.setattr(store, "remember_many", crash)
    monkeypatch.setattr(store, "record_many", crash)
    # A dead process settles nothing: its grants stay pending on the server.
    monkeypatch.setattr(store, "end_decision", lambda *a, **k: None)
    try:
        first.decide_batch(apps)
        assert kind == "redis"  # nothing was left to record after the grants
    except SimulatedCrash:
        assert kind == "cluster"
    monkeypatch.undo()
    store.book.begin()  # forget the dead decision's bookkeeping
    assert list(store.ledger()) == []  # pending: nobody was told yet
    assert store.pending_count() == 2

    d = strategy_dict(routing={"method": "best_value"})  # now plat_b has the higher value
    retry = Router(strategy_from_dict(d), store, scorers=scorers)
    answers = retry.decide_batch(apps)
    assert [a.partner_id for a in answers] == ["bank_a", "bank_a"]
    # Handed back now: the retry posts the grants it answered with.
    assert [e.partner_id for e in store.ledger()] == ["bank_a", "bank_a"]
    assert store.pending_count() == 0
    fresh = retry.decide(_app(3, score=700, region="440300"))
    assert fresh.partner_id == "plat_b"  # the new strategy does apply to new applications


def test_router_loads_its_scripts_when_built(own_server):
    """A first decision must not spend its deadline on a connect and a NOSCRIPT round trip:
    the router connects and loads both scripts when it is built."""
    port, _, _ = own_server
    server = redis.Redis(port=port)
    server.script_flush()
    router = _router(f"redis://127.0.0.1:{port}/0?prefix={uuid.uuid4().hex[:6]}:")
    store = router.store
    assert server.script_exists(store._reserve.sha, store._settle.sha) == [True, True]
    server.config_resetstat()
    assert isinstance(router.decide(_app(1)), Refer)
    stats = server.info("commandstats")
    assert "cmdstat_script|load" not in stats and "cmdstat_hello" not in stats


def test_router_built_with_redis_down_still_answers_degraded():
    router = _router(f"redis://127.0.0.1:{port_for.select_random()}/0?timeout_ms=20")
    d = router.decide(_app(1))
    assert isinstance(d, Decline) and d.degraded


def test_the_deadline_runs_from_the_first_send(own_server, monkeypatch):
    """Work before a decision's first round trip (here: a process descheduled for longer
    than the whole budget) does not count against the store's deadline; a second round
    trip after the budget is spent is still refused."""
    port, _, _ = own_server
    router = _router(f"redis://127.0.0.1:{port}/0?timeout_ms=20&prefix={uuid.uuid4().hex[:6]}:")
    link = router.store.link
    link.begin()
    time.sleep(0.05)  # 2.5 budgets before the first send
    assert link.send([("PING",)]) == [b"PONG"]
    time.sleep(0.05)
    with pytest.raises(Exception, match="deadline passed"):
        link.send([("PING",)])
    link.end()
    # The router's own decisions, with the same pause before their first store call (while
    # the decision's candidates are laid out, after its deadline began).
    from router.decide import allocate

    slow = allocate.Allocator._row_candidates

    def late(self, *a):
        time.sleep(0.05)
        return slow(self, *a)

    monkeypatch.setattr(allocate.Allocator, "_row_candidates", late)
    d = router.decide(_app(2))
    assert isinstance(d, Refer) and not d.degraded


def test_default_live_deadline_is_50_ms():
    store = quota_store_from_url("redis://127.0.0.1:6379/0")
    try:
        assert store.timeout_ms == 50 and store.link.timeout_s == 0.05
    finally:
        store.client.close()
