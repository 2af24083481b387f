"""Worker for the multi-process race tests (imported by spawned processes)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

T0 = datetime(2026, 11, 2, 2, 0, tzinfo=timezone.utc)


def race_strategy():
    from router.testing import strategy_dict

    d = strategy_dict(branch=None)
    d["primary"]["max_pd"] = 0.0001  # nobody is kept: everything goes to the partner
    d["partners"] = [d["partners"][1]]  # plat_b alone
    d["partners"][0]["caps"] = [{"window": "day", "count": 100, "amount": 200_000_000}]
    d["partners"][0]["dedupe_days"] = 0
    return d


def decide_many(url: str, app_specs: list[tuple[str, int, int]]) -> list[tuple[str, str, str | None]]:
    """Decide (application id, applicant number, amount) specs; return (id, outcome, partner)."""
    from router.config import strategy_from_dict
    from router.engine import Router
    from router.store import quota_store_from_url
    from router.testing import ScoreLookupScorer, make_application

    router = Router(strategy_from_dict(race_strategy()), quota_store_from_url(url),
                    scorers={"main": ScoreLookupScorer({}, default=0.2)})
    out = []
    for app_id, who, amount in app_specs:
        d = router.decide(make_application(
            application_id=app_id, national_id=f"1101011990{who:08d}", requested_amount=amount,
            received_at=T0 + timedelta(seconds=who % 3600)))
        out.append((app_id, type(d).__name__, getattr(d, "partner_id", None)))
    router.store.close()
    return out
