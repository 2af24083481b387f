"""The cluster answers like one server (issue 9, finding 8): conflicting content from many
processes is an IdempotencyConflict, declines are idempotent, a caller behind another's
claim waits no longer than its deadline."""

from __future__ import annotations

import multiprocessing as mp
import time
import uuid
from collections import defaultdict

import pytest
from race_worker import decide_variants

from router.store.redis import counter_value

# Every test here talks to real redis-server processes.
pytestmark = pytest.mark.redis

WORKERS = 8


@pytest.fixture(params=["redis", "cluster"])
def url(request):
    if request.param == "redis":
        s = request.getfixturevalue("redis_server")
        return f"redis://{s.host}:{s.port}/0?timeout_ms=5000&prefix=ce{uuid.uuid4().hex[:6]}:"
    hosts = ",".join(f"{h}:{p}" for h, p in request.getfixturevalue("redis_cluster"))
    return f"redis+cluster://{hosts}?timeout_ms=5000&prefix=ce{uuid.uuid4().hex[:6]}:"


def test_conflicting_content_from_many_processes(url):
    """40 ids, each sent by 8 processes, 4 of them with another amount (other content):
    one content wins per id; every caller with it gets the same decision, every caller
    with the other content gets IdempotencyConflict — referrals and declines alike."""
    specs = [[(f"c-{k}", k, 100_000 + (w % 2) * 1_000) for k in range(40)] for w in range(WORKERS)]
    ctx = mp.get_context("spawn")
    t = time.monotonic()
    with ctx.Pool(WORKERS) as pool:
        results = [
            r
            for batch in pool.starmap(decide_variants, [(url, s, -1) for s in specs])
            for r in batch
        ]
    elapsed = time.monotonic() - t
    by_id = defaultdict(list)
    for app_id, amount, outcome, partner, reasons, degraded in results:
        by_id[app_id].append((amount, outcome, partner, reasons, degraded))
    for app_id, answers in by_id.items():
        assert not any(a[4] for a in answers), answers  # nobody degraded
        decided = {a for a in answers if a[1] != "conflict"}
        assert len(decided) == 1, (app_id, decided)  # one decision per id
        ((amount, *_),) = decided
        assert all(a[1] == "conflict" for a in answers if a[0] != amount), answers
        assert all(a[1] != "conflict" for a in answers if a[0] == amount), answers
    assert elapsed < 60  # nobody waits out a 5 s lease per application


def test_a_stalled_master_leaves_no_phantom_and_no_unrecorded_referral(redis_cluster):
    """One master of the cluster stops for 300 ms while decisions stream (short deadlines):
    every Refer handed back has its decision record and its posted ledger entry, nothing
    else is billed, counters equal the posted grants, nobody is referred twice."""
    import os
    import signal

    import redis as redis_lib
    from servers import stall_later
    from test_fault_lifecycle import _app, _router

    from router.core.messages import Refer

    hosts = ",".join(f"{h}:{p}" for h, p in redis_cluster)
    url = f"redis+cluster://{hosts}?timeout_ms=50&pending_ms=600&prefix=cs{uuid.uuid4().hex[:6]}:"
    router = _router(url)
    store = router.store
    pids = [redis_lib.Redis(host=h, port=p).info()["process_id"] for h, p in redis_cluster]
    victim = pids[1]
    t = stall_later(victim, 0.15, 0.3)
    answers = []
    try:
        for i in range(300):
            answers.append(router.decide(_app(i)))
    finally:
        t.join()
        os.kill(victim, signal.SIGCONT)
    assert any(d.degraded for d in answers) and any(isinstance(d, Refer) for d in answers)
    store.flush()
    time.sleep(0.7)
    store.sweep()
    refers = sorted(d.application_id for d in answers if isinstance(d, Refer))
    ledger = list(store.ledger())
    assert sorted(e.application_id for e in ledger) == refers
    assert len({e.applicant_hash for e in ledger}) == len(ledger)
    for app_id in refers:  # a retry finds the decision it was given
        assert store.client.get(store._app(app_id)) is not None, app_id
    counted = sum(
        counter_value(store.client.get(k))[0]
        for k in store.client.scan_iter(match=f"{store.prefix}{{p:plat_b}}:c:*")
    )
    assert counted == len(refers)
    assert store.pending_count() == 0


# (Weighted rotation only: it is the method with state of its own — the rotation counter —
# beside the quotas; the kill exercises the same reservation and settle path under every
# method, and the store differential runs all three. Each run costs ~15 s of real time.)
@pytest.mark.parametrize("method", ["weighted"])
def test_a_master_killed_for_3_s(tmp_path, method):
    """SIGKILL of the master holding some applications' and one partner's slots, restarted
    3 s later from its files (grants wait pending longer than that: ``pending_ms`` 4 s):
    every Refer handed back has its decision record and its one posted entry; the degraded
    ones, sent again, go to one partner at most (never a second referral of the same
    application)."""
    import signal
    import threading
    from datetime import UTC, datetime, timedelta

    from servers import cluster_node, start_cluster, wait_cluster_ok

    T0 = datetime(2026, 11, 2, 2, 0, tzinfo=UTC)

    from router.core.config import strategy_from_dict
    from router.core.messages import Refer
    from router.decide.engine import Router
    from router.store import quota_store_from_url
    from router.testing import ScoreLookupScorer, make_application, strategy_dict

    ports, nodes = start_cluster(tmp_path, "--appendonly", "yes", "--appendfsync", "always")
    try:
        url = (
            f"redis+cluster://{','.join(f'127.0.0.1:{p}' for p in ports)}"
            f"?timeout_ms=200&pending_ms=4000&prefix=mk{uuid.uuid4().hex[:6]}:"
        )
        s = strategy_from_dict(strategy_dict(routing={"method": method}))
        router = Router(
            s, quota_store_from_url(url), scorers={"main": ScoreLookupScorer({700: 0.02})}
        )

        def app(i):
            return make_application(
                application_id=f"mk-{i}",
                national_id=f"1101011990{i:08d}",
                region="440300",
                received_at=T0 + timedelta(seconds=i),
            )

        victim = nodes[1]
        restarted = []

        def kill_and_restart():
            time.sleep(0.2)
            victim.kill(sig=signal.SIGKILL)
            time.sleep(3)
            restarted.append(
                cluster_node(tmp_path, ports[1], "--appendonly", "yes", "--appendfsync", "always")
            )

        t = threading.Thread(target=kill_and_restart)
        t.start()
        answers = {}
        end = time.monotonic() + 4
        i = 0
        while time.monotonic() < end:
            answers[f"mk-{i}"] = router.decide(app(i))
            i += 1
        t.join()
        wait_cluster_ok(ports)
        assert any(d.degraded for d in answers.values())
        # Sent again: the degraded ones get a real decision now.
        for k in range(i):
            if answers[f"mk-{k}"].degraded:
                answers[f"mk-{k}"] = router.decide(app(k))
        store = router.store
        store.flush()
        time.sleep(4.1)  # past the pending deadline: whatever nobody posted is voided
        store.sweep()
        refers = {a: d.partner_id for a, d in answers.items() if isinstance(d, Refer)}
        ledger = list(store.ledger())
        assert sorted(e.application_id for e in ledger) == sorted(refers)  # once each
        assert {e.application_id: e.partner_id for e in ledger} == refers  # the same partner
        for a in refers:
            assert store.client.get(store._app(a)) is not None, a  # its record
        counted = sum(
            counter_value(store.client.get(k))[0]
            for p in ("bank_a", "plat_b")
            for k in store.client.scan_iter(match=f"{store.prefix}{{p:{p}}}:c:*:day:*")
        )
        assert counted == len(refers)
        assert store.pending_count() == 0
        router.store.close()
    finally:
        for n in nodes + restarted:
            if n.running():
                n.stop()


def test_waiting_on_another_callers_claim_is_bounded_by_the_deadline(redis_cluster):
    """Another caller holds the claim (a 5 s lease) and has not decided yet: this caller
    answers degraded within its own deadline instead of waiting out the lease."""
    from test_fault_lifecycle import _app, _router

    hosts = ",".join(f"{h}:{p}" for h, p in redis_cluster)
    router = _router(f"redis+cluster://{hosts}?timeout_ms=50&prefix=cw{uuid.uuid4().hex[:6]}:")
    app = _app(7)
    store = router.store
    from router.core.columns import row_from_application

    fp = row_from_application(app, router.hasher).fingerprint
    assert store.claim_many([app.application_id], [fp], 5000) == [True]  # the other caller
    t = time.perf_counter()
    d = router.decide(app)
    elapsed = time.perf_counter() - t
    assert d.degraded and elapsed < 0.5, elapsed
    assert list(store.ledger()) == []


def _referring_router(store):
    """A router over ``store`` that keeps nobody: every application goes to a partner."""
    from router.core.config import strategy_from_dict
    from router.decide.engine import Router
    from router.testing import ScoreLookupScorer, strategy_dict

    d = strategy_dict(branch=None)
    d["primary"]["max_pd"] = 0.0001
    return Router(
        strategy_from_dict(d), store, scorers={"main": ScoreLookupScorer({}, default=0.02)}
    )


def test_a_record_left_behind_by_a_voided_grant_does_not_answer_a_retry(store_factory):
    """On a cluster a decision record and its grant live in different slots. Records that
    were written although their reply was lost, with the node then away when the router
    deletes them again after voiding the batch's grants: a retry must not be answered
    Refer from such a record (its grant is void: the referral would never be billed) — it
    decides afresh, and the referral it hands back is billed once."""
    from router.core.errors import StoreError
    from router.core.messages import Refer
    from router.testing import make_application

    store = store_factory("cluster")
    router = _referring_router(store)
    app = make_application(application_id="lost-1", national_id="110101199001017777")
    real_record, real_forget = store.record_many, store.forget_many

    def record_then_lose_the_reply(*args, **kwargs):
        real_record(*args, **kwargs)
        raise StoreError("record failed: connection reset (the write went through)")

    store.record_many = record_then_lose_the_reply
    store.forget_many = lambda *a, **k: None  # the node is away: the records stay
    first = router.decide_batch([app])[0]
    assert first.degraded
    store.record_many, store.forget_many = real_record, real_forget
    again = router.decide(app)
    assert isinstance(again, Refer) and not again.degraded
    store.flush()
    assert [e.application_id for e in store.ledger()] == ["lost-1"]


def test_a_retry_right_after_a_lost_reply_is_decided_afresh_and_billed(store_factory):
    """One server: a reservation whose reply is lost (the script ran: grant and record
    written) is voided when the decision ends. A retry at once must not be answered from
    the record the void is about to delete — owed voids go out ahead of its reservation —
    so the referral it hands back is a new, billed one."""
    import redis as redis_lib

    from router.core.messages import Refer
    from router.testing import make_application

    store = store_factory("redis")
    router = _referring_router(store)
    app = make_application(application_id="lost-2", national_id="110101199001018888")
    real = store._send_many

    def run_then_lose_the_reply(commands, *args, **kwargs):
        real(commands, *args, **kwargs)
        raise redis_lib.TimeoutError("reply lost")

    store._send_many = run_then_lose_the_reply
    assert router.decide(app).degraded
    store._send_many = real
    again = router.decide(app)
    assert isinstance(again, Refer) and not again.degraded
    store.flush()
    assert [e.application_id for e in store.ledger()] == ["lost-2"]
    assert store.pending_count() == 0
