"""Worker for the multi-process race tests (imported by spawned processes)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

T0 = datetime(2026, 11, 2, 2, 0, tzinfo=UTC)


def race_strategy():
    from router.testing import strategy_dict

    d = strategy_dict(branch=None)
    d["primary"]["max_pd"] = 0.0001  # nobody is kept: everything goes to the partner
    d["partners"] = [d["partners"][1]]  # plat_b alone
    d["partners"][0]["caps"] = [{"window": "day", "count": 100, "amount": 200_000_000}]
    d["partners"][0]["dedupe_days"] = 0
    return d


def decide_many(
    url: str, app_specs: list[tuple[str, int, int]]
) -> list[tuple[str, str, str | None]]:
    """Decide (application id, applicant number, amount) specs; return (id, outcome, partner)."""
    from router.core.config import strategy_from_dict
    from router.decide.engine import Router
    from router.store import quota_store_from_url
    from router.testing import ScoreLookupScorer, make_application

    router = Router(
        strategy_from_dict(race_strategy()),
        quota_store_from_url(url),
        scorers={"main": ScoreLookupScorer({}, default=0.2)},
    )
    out = []
    for app_id, who, amount in app_specs:
        d = router.decide(
            make_application(
                application_id=app_id,
                national_id=f"1101011990{who:08d}",
                requested_amount=amount,
                received_at=T0 + timedelta(seconds=who % 3600),
            )
        )
        out.append((app_id, type(d).__name__, getattr(d, "partner_id", None)))
    router.store.close()
    return out


def decide_variants(url: str, specs: list[tuple[str, int, int]], seed: int) -> list[tuple]:
    """Decide (application id, applicant number, amount) specs, shuffled by ``seed``; an
    id sent with content that differs from another caller's answers "conflict".
    Returns (id, amount, outcome, partner, reasons)."""
    import random

    from router.core.config import strategy_from_dict
    from router.core.errors import IdempotencyConflict, StoreError
    from router.decide.engine import Router
    from router.store import quota_store_from_url
    from router.testing import ScoreLookupScorer, make_application

    d = race_strategy()
    router = Router(
        strategy_from_dict(d),
        quota_store_from_url(url),
        scorers={"main": ScoreLookupScorer({}, default=0.2)},
    )
    specs = list(specs)
    if seed >= 0:  # (a negative seed: every process in the same order, in lockstep)
        random.Random(seed).shuffle(specs)
    out = []
    for app_id, who, amount in specs:
        app = make_application(
            application_id=app_id,
            national_id=f"1101011990{who:08d}",
            requested_amount=amount,
            consent="none" if who % 2 else "any",
            received_at=T0 + timedelta(seconds=who % 3600),
        )
        try:
            dec = router.decide(app)
            out.append(
                (
                    app_id,
                    amount,
                    type(dec).__name__,
                    getattr(dec, "partner_id", None),
                    dec.reasons,
                    dec.degraded,
                )
            )
        except IdempotencyConflict:
            out.append((app_id, amount, "conflict", None, (), False))
        except StoreError:
            out.append((app_id, amount, "store_error", None, (), False))
    router.store.close()
    return out
