"""The array store's compiled batch walk decides exactly as the Python walk on the
dictionary store — decision for decision and state for state.

Two routers see the same stream: one on :class:`MemoryQuotaStore` (every batch walked in
Python, one store call per attempt), one on :class:`ArrayQuotaStore` (every batch one
compiled call). Batches of random sizes alternate with single decisions (the scalar path,
on both); caps are tight, dedupe bites, ids repeat, some batches arrive late and out of
order, and the idempotency TTL is short so records expire. After every step the decisions,
ledgers, refusal counts and first-refusal events must match; at the end so must the
stores' counters (current and archived), dedupe entries and expiry queues.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests_helpers import T0, tight_strategy, tight_stream

from router.core.config import load_strategy, strategy_from_dict
from router.core.routing import routing_methods
from router.decide import allocate_compiled
from router.decide.engine import Router
from router.replay import replay
from router.replay.tune import strategy_data
from router.store import MemoryQuotaStore
from router.store import kernel as K
from router.store.array import ArrayQuotaStore, _words_of, applicant_words
from router.testing import ScoreLookupScorer, make_application, strategy_dict
from router.traffic import generate_batches

SCORER = ScoreLookupScorer({720: 0.01, 700: 0.02, 650: 0.08, 600: 0.2, 550: 0.35}, default=0.5)


def _routers(strategy, **store_options):
    events: dict[str, list] = {"memory": [], "array": []}
    mem = Router(
        strategy,
        MemoryQuotaStore(**store_options),
        scorers={"main": SCORER},
        on_cap=lambda *a: events["memory"].append(a),
    )
    arr = Router(
        strategy,
        ArrayQuotaStore(**store_options),
        scorers={"main": SCORER},
        on_cap=lambda *a: events["array"].append(a),
    )
    return mem, arr, events


def _chunks(apps, rnd):
    """The stream cut into singles and batches of random size; a few batches come late
    (swapped with the one before) and a few are shuffled inside."""
    out, i = [], 0
    while i < len(apps):
        k = rnd.choice([1, 1, 2, 5, 17, 64, 150])
        chunk = list(apps[i : i + k])
        if k > 2 and rnd.random() < 0.15:
            rnd.shuffle(chunk)
        out.append(chunk)
        i += k
    for j in range(1, len(out)):
        if rnd.random() < 0.08:
            out[j - 1], out[j] = out[j], out[j - 1]
    return out


def _feed(mem, arr, events, chunks):
    for chunk in chunks:
        if len(chunk) == 1:
            d1, d2 = [mem.decide(chunk[0])], [arr.decide(chunk[0])]
        else:
            d1, d2 = mem.decide_batch(chunk), arr.decide_batch(chunk)
        assert d1 == d2
        assert mem.cap_refusals() == arr.cap_refusals()
        assert events["memory"] == events["array"]
    assert list(mem.store.ledger()) == list(arr.store.ledger())
    a1, a2 = mem._allocator, arr._allocator
    assert a1.floors == a2.floors
    assert a1.rotation.current == a2.rotation.current


def _owners(arr: ArrayQuotaStore):
    by_index = {b: bid for bid, (b, _) in arr._buckets.items()}
    slot = {}
    for b, bid in by_index.items():
        for k in range(int(arr.bk[b, K.FIRST_SLOT]), int(arr.bk[b, K.END_SLOT])):
            slot[k] = (bid, k - int(arr.bk[b, K.FIRST_SLOT]))
    return by_index, slot


def _same_state(mem: MemoryQuotaStore, arr: ArrayQuotaStore):
    by_index, slot = _owners(arr)
    # Counters: current windows and the archive, zero cells for late events included.
    counters_m = {
        (bid, i, c[0]): (c[1], c[2])
        for bid, cells in mem._cells.items()
        for i, c in enumerate(cells)
        if c[0] >= 0
    }
    counters_m.update({k: (c[1], c[2]) for k, c in mem._archive.items()})
    counters_a = {
        (*slot[s], int(arr.sl[s, K.CUR_KEY])): (
            int(arr.sl[s, K.CUR_CNT]),
            int(arr.sl[s, K.CUR_AMT]),
        )
        for s in range(len(arr.sl))
        if arr.sl[s, K.CUR_KEY] >= 0
    }
    counters_a.update({(*slot[s], key): v for (s, key), v in arr.archive_items().items()})
    assert counters_m == counters_a
    assert list(mem._archive_expiry) == [
        (int(at), (*slot[int(s)], int(key)))
        for at, s, key in arr.aq[arr.aq_ptr[0] : arr.aq_ptr[1]].tolist()
    ]
    # Dedupe entries and their expiry queues, bucket by bucket.
    dedupe_m = {
        (bid, _words_of(a)): t for bid, seen in mem._last_grant.items() for a, t in seen.items()
    }
    dedupe_a = {(by_index[b], (hi, lo)): t for (b, hi, lo), t in arr.dedupe_items().items()}
    assert dedupe_m == dedupe_a
    for b, bid in by_index.items():
        queue, idx = [], int(arr.bk[b, K.DQ_HEAD])
        while idx != K.NONE:
            at, _, hi, lo, t, idx = arr.dq[idx].tolist()
            queue.append((at, (hi, lo), t))
        ref = [(at, _words_of(a), t) for at, a, t in mem._dedupe_expiry.get(bid, ())]
        assert queue == ref, bid
    assert mem._horizon == arr.clock[K.HORIZON] and mem._next_sweep == arr.clock[K.NEXT_SWEEP]


@pytest.mark.parametrize("method", routing_methods())
def test_compiled_walk_equals_python_walk(method):
    rnd = random.Random(method)
    mem, arr, events = _routers(tight_strategy(method), idempotency_ttl_ms=2 * 3600_000)
    # Three days at one application every ~2.5 minutes: hours, days and sweeps roll over.
    apps = tight_stream(1800, seed=len(method), gap_s=150)
    _feed(mem, arr, events, _chunks(apps, rnd))
    _same_state(mem.store, arr.store)
    assert sum(mem.cap_refusals().values()) > 100  # the caps did bite
    assert any(a[0] == "bank_a" for a in events["memory"])


def test_partners_in_other_time_zones_and_a_clock_change():
    """A partner counting in New York time across the night clocks go back (two hours
    share a wall-clock hour), next to Shanghai windows."""
    data = strategy_dict(routing={"method": "best_value"})
    data["partners"][1]["timezone"] = "America/New_York"
    data["partners"][1]["caps"] = [{"window": "hour", "count": 2}, {"window": "day", "count": 30}]
    data["partners"][0]["caps"] = [{"window": "hour", "count": 2}]
    data["primary"]["caps"] = [{"window": "hour", "count": 2}]
    strategy = strategy_from_dict(data)
    mem, arr, events = _routers(strategy)
    apps = tight_stream(1200, seed=3, t0=datetime(2026, 11, 1, 3, 0, tzinfo=UTC), gap_s=12)
    _feed(mem, arr, events, _chunks(apps, random.Random(3)))
    _same_state(mem.store, arr.store)
    assert any(a[0] == "plat_b" and a[1] == "hour" for a in events["memory"])


def test_queues_and_event_lists_grow_mid_batch(monkeypatch):
    """Start every queue tiny so the walk stops between rows to make room, many times."""
    monkeypatch.setattr(allocate_compiled, "CAPEV_ROWS", 1)
    mem, arr, events = _routers(tight_strategy("weighted"))
    arr.store.dq = np.zeros((2, K.DQ_COLS), dtype=np.int64)
    arr.store.aq = np.zeros((2, K.AQ_COLS), dtype=np.int64)
    apps = tight_stream(1500, seed=11, gap_s=60)
    _feed(mem, arr, events, [apps[i : i + 300] for i in range(0, len(apps), 300)])
    _same_state(mem.store, arr.store)
    assert len(arr.store.dq) > 2 and len(arr.store.aq) > 2


def test_replay_outputs_are_byte_identical_on_both_stores(tmp_path):
    """The shipped strategy with caps cut so they run out, over generated traffic in small
    batches, some of them late: the same decisions file and summary from both stores."""
    s = load_strategy("configs/strategy.toml")
    data = strategy_data(s)
    for p in data["partners"]:
        p["caps"] = [
            {"window": "hour", "count": 15},
            {"window": "day", "count": 120, "amount": 300_000_000},
        ]
    data["primary"]["caps"] = [{"window": "hour", "count": 40}]
    strategy = strategy_from_dict(data)
    batches = list(generate_batches(40_000, seed=9, per_day=10_000, chunk=2_000))
    batches[5], batches[6] = batches[6], batches[5]  # a late batch
    mem = MemoryQuotaStore(retain_ledger=False, validate=False)
    r1 = replay(strategy, batches, tmp_path / "m", store=mem, report=False)
    r2 = replay(strategy, batches, tmp_path / "a", report=False)
    assert r1.summary["traffic"]["late_events"] > 0
    assert (tmp_path / "m" / "summary.json").read_bytes() == (
        tmp_path / "a" / "summary.json"
    ).read_bytes()
    assert pq.read_table(tmp_path / "m" / "decisions.parquet").equals(
        pq.read_table(tmp_path / "a" / "decisions.parquet")
    )
    assert (
        sum(r2.summary["cap_refusals"].get(p["id"], {}).get("hour", 0) for p in data["partners"])
        > 0
    )


def test_applicant_words_decode_tokens_and_hash_other_text():
    tokens = ["0123456789abcdef" * 2, "f" * 32, "8000000000000001" + "0" * 16]
    hi, lo = applicant_words(tokens)
    assert [(int(h), int(w)) for h, w in zip(hi, lo)] == [_words_of(t) for t in tokens]
    assert _words_of("f" * 32) == (-1, -1)
    other = ["a1", "A" * 32, "0123456789abcdef" * 2]  # not all tokens: every one hashed alike
    hi, lo = applicant_words(other)
    assert [(int(h), int(w)) for h, w in zip(hi, lo)] == [_words_of(t) for t in other]
    assert _words_of("a1") != _words_of("a2")


_cap = st.fixed_dictionaries(
    {"window": st.sampled_from(["hour", "day", "month"])},
    # Amount caps that sums of the requested amounts below hit exactly, and others.
    optional={
        "count": st.integers(1, 6),
        "amount": st.sampled_from(
            [5_000_00, 25_100_00, 40_000_00, 65_000_00, 120_000_00, 99_999_99]
        ),
    },
).filter(lambda c: "count" in c or "amount" in c)
_caps = st.lists(_cap, max_size=3, unique_by=lambda c: c["window"])
_app = st.tuples(
    st.integers(0, 30 * 3600),  # seconds after the start (unordered)
    st.sampled_from([100_00, 5_000_00, 20_000_00, 60_000_00]),
    st.sampled_from([550, 600, 650, 700, 720]),
    st.integers(0, 9),  # applicant: repeats exercise dedupe
    st.sampled_from(["any", ["bank_a"], ["plat_b"], "none"]),
    st.integers(0, 40),  # application id: repeats are retries
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    method=st.sampled_from(routing_methods()),
    caps=st.lists(_caps, min_size=4, max_size=4),
    dedupe=st.tuples(st.integers(0, 2), st.integers(0, 2)),
    weights=st.tuples(st.integers(1, 5), st.integers(1, 5)),
    rows=st.lists(_app, min_size=2, max_size=120),
    cuts=st.lists(st.integers(1, 40), min_size=1, max_size=10),
)
def test_any_caps_and_any_batching_decide_alike(method, caps, dedupe, weights, rows, cuts):
    """Random caps on every bucket, dedupe windows, weights, stream and batch cuts."""
    data = strategy_dict(routing={"method": method})
    data["primary"]["caps"], data["branch"]["caps"] = caps[0], caps[1]
    for j in (0, 1):
        data["partners"][j]["caps"] = caps[2 + j]
        data["partners"][j]["dedupe_days"] = dedupe[j]
        data["partners"][j]["weight"] = weights[j]
    mem, arr, events = _routers(strategy_from_dict(data), idempotency_ttl_ms=6 * 3600_000)
    first: dict[int, object] = {}
    apps = []
    for sec, amount, score, who, consent, app in rows:
        if app in first:  # a retry carries the same content
            apps.append(first[app])
            continue
        first[app] = make_application(
            application_id=f"a{app}",
            received_at=T0 + timedelta(seconds=sec),
            requested_amount=amount,
            bureau_score=score,
            consent=consent,
            national_id=f"1101011990010{who:05d}",
        )
        apps.append(first[app])
    chunks, i = [], 0
    for k in cuts * (len(apps) // max(1, sum(cuts)) + 1):
        if i >= len(apps):
            break
        chunks.append(apps[i : i + k])
        i += k
    _feed(mem, arr, events, chunks)
    _same_state(mem.store, arr.store)
