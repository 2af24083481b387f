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
        scripts = [
            c
            for batch in sent[before:]
            for c in batch
            if c[0] == "EVALSHA" and c[1] != store._settle.sha
        ]
        assert [c[1] for c in scripts] == [decide_sha], (i, d)
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
