"""Shared test data: a lender's own traffic layout and a small strategy to replay it."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from router.core.config import strategy_from_dict
from router.testing import ScoreLookupScorer, make_application, strategy_dict

T0 = datetime(2026, 11, 2, 15, 30, tzinfo=UTC)  # 23:30 in Shanghai: a day rolls over

#: Routers a test module wants closed at its test's end (``conftest.py`` closes them), so
#: no grant flusher outlives a test that stopped its server (it would log a warning every
#: second, retrying).
OPEN_ROUTERS: list = []

#: Application field -> the lender's column name.
MAPPING = {
    "application_id": "app_no",
    "received_at": "applied_at",
    "bureau_score": "score",
    "requested_amount": "loan_amount",
    "national_id": "id_number",
    "defaulted": "bad_flag",
}


def lender_rows(n: int) -> list[dict]:
    """``n`` valid rows in the lender's layout (row r: application L00r, minute r)."""
    rows = []
    for r in range(1, n + 1):
        rows.append(
            {
                "app_no": f"L{r:03d}",
                "applied_at": f"2026-11-02T10:{r:02d}:00+08:00",
                "channel": "own_app",
                "id_number": f"1101011990010{r:05d}",
                "age": 30 + r % 20,
                "monthly_income": 1_200_000,
                "score": [720, 650, 600][r % 3],
                "inquiries_3m": 1,
                "open_loans": 1,
                "dti": 0.3,
                "worst_dpd_12m": 0,
                "region": "310000",
                "loan_amount": 1_000_000 + 10_000 * r,
                "term_months": 12,
                "max_apr": 0.18,
                "consent": "any",
                "bad_flag": r % 4 == 0,
            }
        )
    return rows


def strategy_and_scorer():
    """The small test strategy and a scorer keyed on the bureau score."""
    return (
        strategy_from_dict(strategy_dict()),
        ScoreLookupScorer({720: 0.02, 650: 0.08, 600: 0.2}),
    )


def tight_stream(n: int, seed: int, t0: datetime = T0, gap_s: int = 4) -> list:
    """``n`` applications every ``gap_s`` seconds or so from ``t0``, varied so rules, caps,
    dedupe and consent all bite, with earlier ones repeated (idempotent answers)."""
    rnd = random.Random(seed)
    apps = []
    for i in range(n):
        kw = dict(
            application_id=f"a{i}",
            received_at=t0 + timedelta(seconds=gap_s * i + rnd.randint(0, 3)),
            requested_amount=rnd.choice([100_00, 5_000_00, 20_000_00, 60_000_00]),
            bureau_score=rnd.choice([550, 600, 650, 700, 720]),
            region=rnd.choice(["310000", "310100", "440300"]),
            national_id=f"1101011990010{rnd.randint(0, 40):05d}",
            consent=rnd.choice(["any", "any", ["bank_a"], ["plat_b"], "none"]),
            age=rnd.choice([17, 30, 45, 61]) if rnd.random() < 0.1 else 35,
            max_apr=rnd.choice([0.05, 0.18, 0.24, 0.3]),
        )
        if rnd.random() < 0.05:
            kw["employer"] = "Bank A Group"
        apps.append(make_application(**kw))
    # Repeats of earlier applications (idempotent answers), in the stream's order.
    for k in range(0, n, 7):
        apps.insert(min(len(apps), k + rnd.randint(1, 30)), apps[k])
    return apps


def tight_strategy(method: str, caps_scale: int = 1):
    """The test strategy with small caps on every bucket and a one-day dedupe."""
    d = strategy_dict(routing={"method": method})
    d["partners"][0]["caps"] = [
        {"window": "hour", "count": 4 * caps_scale},
        {"window": "day", "count": 9 * caps_scale, "amount": 90_000_00 * caps_scale},
    ]
    d["partners"][1]["caps"] = [
        {"window": "hour", "count": 3 * caps_scale, "amount": 60_000_00 * caps_scale},
        {"window": "month", "count": 20 * caps_scale},
    ]
    d["partners"][0]["dedupe_days"] = 1
    d["primary"]["caps"] = [{"window": "hour", "count": 3 * caps_scale}]
    if d.get("branch"):
        d["branch"]["caps"] = [{"window": "day", "count": 5 * caps_scale}]
    return strategy_from_dict(d)


def small_caps_strategy(method="best_value"):
    """The example strategy with every cap divided by 10 (20k rows then hit them)."""
    import msgspec

    raw = msgspec.toml.decode(open("configs/strategy.toml", "rb").read())
    raw["partners"] = msgspec.toml.decode(open("configs/partners.toml", "rb").read())["partners"]
    raw.pop("partner_book")
    raw["base_dir"] = "configs"
    raw["routing"]["method"] = method
    for holder in [raw["primary"], raw["branch"], *raw["partners"]]:
        for cap in holder.get("caps", []):
            for k in ("count", "amount"):
                if k in cap:
                    cap[k] //= 10
    return strategy_from_dict(raw)


def tight_caps(d: dict) -> dict:
    """Partner caps that bite within a few dozen applications (windows of every kind)."""
    d["partners"][0]["caps"] = [
        {"window": "hour", "count": 3},
        {"window": "day", "count": 5, "amount": 8_000_000},
    ]
    d["partners"][1]["caps"] = [
        {"window": "hour", "count": 2, "amount": 5_000_000},
        {"window": "month", "count": 6},
    ]
    d["partners"][0]["dedupe_days"] = 1
    return d


def tight_budgets(d: dict) -> dict:
    """The funder's own budgets (keep and branch) bite too, by count and by amount."""
    d["primary"]["caps"] = [
        {"window": "hour", "count": 2},
        {"window": "day", "amount": 6_000_000},
    ]
    d["branch"]["caps"] = [{"window": "hour", "count": 1}, {"window": "day", "count": 3}]
    return d
