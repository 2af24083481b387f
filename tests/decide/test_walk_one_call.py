"""One store call per decision, whatever the caps do (lua/decide.lua on one server): the
decision's candidates go in one script that tries them in order, so a refused first
choice costs no second round trip; and the script validates before it writes."""

from __future__ import annotations

import struct
from datetime import UTC, datetime, timedelta

import pytest
import redis

from router.core.config import strategy_from_dict
from router.core.messages import Decline, Refer
from router.decide.engine import Router
from router.testing import ScoreLookupScorer, make_application, strategy_dict

pytestmark = pytest.mark.redis

T0 = datetime(2026, 11, 2, 2, 0, tzinfo=UTC)


def _tight():
    d = strategy_dict(routing={"method": "waterfall"})
    d["primary"]["caps"] = [{"window": "day", "count": 2}]
    d["branch"]["caps"] = [{"window": "day", "count": 2}]
    for p in d["partners"]:
        p["caps"] = [{"window": "day", "count": 3}]
    return strategy_from_dict(d)


def test_one_script_call_per_decision_whatever_the_caps_do(store_factory):
    store = store_factory("redis")
    router = Router(
        _tight(), store, scorers={"main": ScoreLookupScorer({700: 0.02, 650: 0.08}, default=0.2)}
    )
    sent: list[list[tuple]] = []
    send = store.link.send

    def counting(commands, **kw):
        sent.append(commands)
        return send(commands, **kw)

    store.link.send = counting
    decide_sha = store._decide.sha
    kinds = []
    for i in range(40):
        before = len(sent)
        d = router.decide(
            make_application(
                application_id=f"w-{i}",
                national_id=f"1101011990{i:08d}",
                bureau_score=(700, 650, 600)[i % 3],
                region=("310000", "440300")[i % 2],
                received_at=T0 + timedelta(seconds=i),
            )
        )
        kinds.append(type(d).__name__)
        # One round trip (posts and voids owed ride along; the flusher's own sends of
        # settles alone are not the decision's): the decide script, or for a decline
        # with nothing to try (no option, or every cap known full) the record's SET.
        trips = [
            [c for c in batch if not (c[0] == "EVALSHA" and c[1] == store._settle.sha)]
            for batch in sent[before:]
        ]
        trips = [t for t in trips if t]
        assert len(trips) == 1, (i, d, trips)
        (trip,) = trips
        scripts = [c[1] for c in trip if c[0] == "EVALSHA"]
        assert scripts == [decide_sha] or (isinstance(d, Decline) and trip[0][0] == "SET"), (i, d)
    # The caps ran out on the way: keep, branch and partners refused, then declines.
    assert {"Keep", "Branch", "Refer", "Decline"} <= set(kinds)
    assert router.cap_refusals()  # refusals happened (each answered in the same call)


def test_a_refused_first_partner_and_the_retry_answer_from_the_same_call(store_factory):
    store = store_factory("redis")
    router = Router(_tight(), store, scorers={"main": ScoreLookupScorer({}, default=0.05)})
    apps = [
        make_application(
            application_id=f"r-{i}",
            national_id=f"1101011990{i:08d}",
            region="440300",  # not licensed: referred
            received_at=T0 + timedelta(seconds=i),
        )
        for i in range(8)
    ]
    first = [router.decide(a) for a in apps]
    partners = [d.partner_id for d in first if isinstance(d, Refer)]
    # Waterfall: the first partner until its cap (3), then the next; then declines.
    assert partners[:3] == [partners[0]] * 3 and partners[3] != partners[0]
    assert [router.decide(a) for a in apps] == first  # retries: the stored decisions
    assert any(isinstance(d, Decline) for d in first) or len(partners) == 8


@pytest.mark.parametrize(
    "header",
    [
        struct.pack("<6d", 1.5e12 + 0.5, 100, 1000, 0, 0, 0),  # event time not an integer
        struct.pack("<6d", 1e12, 0, 1000, 0, 0, 0),  # amount 0
        struct.pack("<6d", 1e12, 100, 0, 0, 0, 0),  # record ttl 0
        struct.pack("<6d", 1e12, 100, 1000, 0, float("nan"), 0),  # late_ms NaN
        struct.pack("<5d", 1e12, 100, 1000, 0, 0),  # short
    ],
)
def test_the_decide_script_validates_before_writing(store_factory, header):
    from router.store.redis import _DECIDE

    store = store_factory("redis")
    app_key, horizon = f"{store.prefix}{{a:x}}", f"{store.prefix}{{h}}"
    sha = store.client.script_load(_DECIDE)
    args = [header, b"12345678", "x", b"rec", struct.pack("<d", 0)]
    with pytest.raises(redis.ResponseError, match="ROUTER bad"):
        store.client.evalsha(sha, 2, app_key, horizon, *args)
    assert store.client.exists(app_key, horizon) == 0


@pytest.fixture(scope="module")
def traffic_20k(tmp_path_factory):
    from router.traffic import write_traffic

    return write_traffic(
        tmp_path_factory.mktemp("t") / "t.parquet", 20_000, seed=41, per_day=20_000
    )


@pytest.mark.parametrize("method", ["best_value", "waterfall", "weighted"])
def test_replay_sends_decisions_ahead_and_equals_the_array_store(
    tmp_path, traffic_20k, store_factory, method, monkeypatch
):
    """Replay through one Redis server sends each batch's decisions ahead of the walk, one
    script each, pipelined in arrival order (not for weighted routing: its order depends
    on the grants before), and gives byte-identical outputs to the array store: decisions,
    partner figures, refusal counts and cap run-out times."""
    from tests_helpers import small_caps_strategy

    from router.replay import replay
    from router.store.redis import RedisQuotaStore

    streamed = []
    orig = RedisQuotaStore.walk_stream

    def spy(self, runs):
        for got in orig(self, runs):
            streamed.append(len(got))
            yield got

    monkeypatch.setattr(RedisQuotaStore, "walk_stream", spy)
    s = small_caps_strategy(method)
    arr = replay(s, traffic_20k, tmp_path / "arr", report=False)
    red = replay(s, traffic_20k, tmp_path / "red", store=store_factory("redis"), report=False)
    assert arr.decisions_path.read_bytes() == red.decisions_path.read_bytes()
    for part in ("decisions", "partners", "cap_refusals", "timeline", "kept", "budgets"):
        assert arr.summary.get(part) == red.summary.get(part), part
    assert arr.summary["decisions"]["refer"] > 500
    if method == "weighted":
        assert not streamed
    else:
        # Rows with no option, or whose every candidate the floors know is full, are
        # declined without a call; the rest go ahead.
        assert sum(streamed) > 5_000


def test_a_late_row_the_walk_knows_is_full_keeps_the_walks_reasons(store_factory):
    """A decision sent ahead is tried without the router's floors: for a late event the
    store answers "late" for a candidate the walk counts as known full. The stored record
    must be the walk's (it is rewritten), so a retry answers exactly what was returned."""
    from router.core.columns import from_applications
    from router.core.windows import key_of
    from router.decide.outcomes import to_decisions

    store = store_factory("redis")
    store.for_replay()
    router = Router(_tight(), store, scorers={"main": ScoreLookupScorer({}, default=0.02)})
    apps = [
        make_application(
            application_id=f"late-{i}",
            national_id=f"1101011990{i:08d}",
            region="310000",  # licensed: kept first
            received_at=T0 + timedelta(seconds=i),
        )
        for i in range(3)
    ]
    # The store has seen an event 7 hours later (these are late), and the router already
    # knows the keep budget is full for their day.
    later = int((T0 + timedelta(hours=7)).timestamp() * 1000)
    store.client.zadd(f"{store.prefix}{{h}}", {"h": later})
    al = router._allocator
    keep = al.keep_bucket
    t0 = int(T0.timestamp() * 1000)
    al.floors[keep.id] = [(key_of(t0, keep.caps[0].window, keep.timezone), 0)]
    al.refusals[keep.id, keep.caps[0].window] = 1  # (as the refusal that taught it)
    cols = from_applications(apps, router.hasher)
    first = to_decisions(router.decide_columns(cols), cols.application_id, "test-1")
    assert all(isinstance(d, Decline) for d in first)
    assert all({"KEEP_BUDGET_EXHAUSTED", "LATE_EVENT"} <= set(d.reasons) for d in first)
    assert [router.decide(a) for a in apps] == first  # the retries: the stored records


def test_a_connection_lost_mid_stream_is_retried_and_changes_no_decision(
    tmp_path, traffic_20k, store_factory, monkeypatch
):
    """Replay must not degrade: a reply lost after the scripts ran (the connection dropped
    mid-stream) is retried — the runs not read are sent again; those that ran answer with
    their stored decisions — and the decisions equal the array store's."""
    from tests_helpers import small_caps_strategy

    from router.replay import replay
    from router.store.redis_link import Link

    real = Link._read
    lost = {"n": 0}

    def lossy(conn, n):
        out = real(conn, n)  # the scripts ran ...
        if lost["n"] < 2 and n > 100:
            lost["n"] += 1
            raise redis.ConnectionError("connection dropped before the replies")  # ... lost
        return out

    monkeypatch.setattr(Link, "_read", staticmethod(lossy))
    s = small_caps_strategy("best_value")
    arr = replay(s, traffic_20k, tmp_path / "arr", report=False)
    store = store_factory("redis")
    red = replay(s, traffic_20k, tmp_path / "red", store=store, report=False)
    assert lost["n"] == 2
    assert arr.decisions_path.read_bytes() == red.decisions_path.read_bytes()
    assert arr.summary["partners"] == red.summary["partners"]
    # Every referral and branch loan posted once, none voided by the retry.
    store.flush()
    assert len(list(store.ledger(branch=True))) == (
        arr.summary["decisions"]["refer"] + arr.summary["decisions"]["branch"]
    )
