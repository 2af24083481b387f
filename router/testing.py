"""Test doubles and builders for users' own tests (like ``structlog.testing``).

* :class:`FixedPDScorer` and :class:`ScoreLookupScorer` — scorers with a PD you choose,
  so a test can put an application exactly where a rule or cut-off bites.
* :func:`make_application` — a valid application with overrides.
* :func:`strategy_dict` — a small valid strategy as plain data, to tweak and validate
  with :func:`router.core.config.strategy_from_dict`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from router.core.messages import Application, convert_application
from router.decide.features import FEATURES


class FixedPDScorer:
    """Every application gets the same PD."""

    def __init__(self, pd: float = 0.02):
        self.pd = pd
        self.feature_names_ = FEATURES

    def pd_one(self, x: Sequence[float]) -> float:
        """The fixed PD."""
        return self.pd

    def pd_batch(self, X: np.ndarray) -> np.ndarray:
        """The fixed PD for every row."""
        return np.full(len(X), self.pd, dtype=np.float64)


class ScoreLookupScorer:
    """PD looked up by bureau score (exact match, else ``default``): tests pick PDs via scores."""

    def __init__(self, pd_by_score: Mapping[int, float], default: float = 0.5):
        self.pd_by_score = dict(pd_by_score)
        self.default = default
        self.feature_names_ = FEATURES
        self._col = FEATURES.index("bureau_score")

    def pd_one(self, x: Sequence[float]) -> float:
        """PD for the row's bureau score."""
        return self.pd_by_score.get(int(round(x[self._col] * 100)), self.default)

    def pd_batch(self, X: np.ndarray) -> np.ndarray:
        """PD for every row's bureau score."""
        scores = np.rint(X[:, self._col] * 100).astype(int).tolist()
        return np.array([self.pd_by_score.get(s, self.default) for s in scores], dtype=np.float64)


_APP_DEFAULTS: dict[str, Any] = dict(
    application_id="app-1",
    received_at=datetime(2026, 11, 2, 2, 0, tzinfo=UTC),
    channel="own_app",
    national_id="110101199001011234",
    age=32,
    monthly_income=1_200_000,
    bureau_score=700,
    inquiries_3m=1,
    open_loans=1,
    dti=0.3,
    worst_dpd_12m=0,
    region="310000",
    employer="Company 001",
    requested_amount=3_000_000,
    term_months=12,
    max_apr=0.18,
    consent="any",
)


def make_application(**overrides: Any) -> Application:
    """A valid application (Shanghai, 32 years old, 30,000 yuan over 12 months) with overrides."""
    data = {**_APP_DEFAULTS, **overrides}
    if "applicant_token" in overrides:
        data.pop("national_id", None)
    return convert_application(data)


_STRATEGY: dict[str, Any] = {
    "version": "test-1",
    "identity": {"dev_key": "test-key-0123456789abcdef"},
    "economics": {
        "funding_cost": 0.04,
        "lgd": 0.6,
        "operating_cost": 0.02,
        "target_margin": 0.02,
        "legal_apr_cap": 0.24,
        "own_apr_cap": 0.20,
    },
    "rules": {
        "min_age": 18,
        "max_age": 60,
        "licensed_regions": ["31", "11"],
        "max_worst_dpd": 60,
        "max_inquiries_3m": 8,
        "max_open_loans": 5,
        "max_dti": 0.6,
    },
    "scorers": {"main": {"kind": "logistic_json", "path": "unused.json"}},
    "primary": {"scorer": "main", "max_pd": 0.05, "caps": [{"window": "day", "count": 1000}]},
    "branch": {
        "scorer": "main",
        "max_pd": 0.12,
        "apr_cap": 0.24,
        "reserve_rate": 0.03,
        "funder_loss_share": 0.3,
        "return_model": "fixed",
        "fixed_return": 0.09,
        "operating_cost": 0.005,
        "target_margin": 0.005,
        "caps": [{"window": "day", "count": 1000}],
    },
    "routing": {"method": "waterfall"},
    "partners": [
        {
            "id": "bank_a",
            "name": "Bank A",
            "whitelisted": True,
            "priority": 1,
            "weight": 1,
            "apr_min": 0.04,
            "apr_max": 0.12,
            "acceptance": 0.6,
            "dedupe_days": 30,
            "terms": {"fee_per_funded": 10_000, "rev_share": 0.2},
            "employer_names": ["Bank A Group"],
            "filters": {"max_pd": 0.08},
            "caps": [{"window": "day", "count": 100, "amount": 1_000_000_000}],
        },
        {
            "id": "plat_b",
            "name": "Platform B",
            "whitelisted": True,
            "priority": 2,
            "weight": 3,
            "apr_min": 0.15,
            "apr_max": 0.24,
            "acceptance": 0.5,
            "dedupe_days": 7,
            "terms": {"fee_per_referral": 500, "rev_share": 0.3},
            "filters": {"max_pd": 0.25},
            "caps": [{"window": "hour", "count": 50}, {"window": "day", "count": 200}],
        },
        {
            "id": "gray_c",
            "name": "Not whitelisted",
            "whitelisted": False,
            "priority": 0,
            "apr_min": 0.05,
            "apr_max": 0.24,
            "acceptance": 0.9,
            "terms": {"fee_per_referral": 100_000},
        },
    ],
}


def packed_in_time(lines: Sequence[bytes], every_ms: int = 1000) -> list[bytes]:
    """Application JSON lines (as ``router.traffic`` writes them) with their arrival times
    rewritten to follow the first line's, ``every_ms`` apart, in order: generated traffic
    spreads any number of rows over a whole day, and concurrent callers send in any order
    — one more than the late-event horizon (6 h) behind another would be refused as late."""
    import msgspec

    out: list[bytes] = []
    t0: datetime | None = None
    for i, line in enumerate(lines):
        raw = msgspec.json.decode(line)
        at = datetime.fromisoformat(raw["received_at"])
        t0 = at if t0 is None else t0
        raw["received_at"] = (t0 + timedelta(milliseconds=i * every_ms)).isoformat(
            timespec="milliseconds"
        )
        out.append(msgspec.json.encode(raw))
    return out


def strategy_dict(**overrides: Any) -> dict[str, Any]:
    """A deep copy of a small valid strategy as plain data; top-level keys overridden."""
    d = copy.deepcopy(_STRATEGY)
    d.update(copy.deepcopy(overrides))
    return d


# ---- conformance checks for users' own implementations ----------------------------------


def check_quota_store(target: str | Callable[[], Any], *, stop_on_failure: bool = False) -> int:
    """Run the quota-store contract (:mod:`router.store.contract`) on a backend, each check
    on a fresh store: ``target`` is a store URL (a shared store gets a key prefix of its
    own per check, so nothing else on the server is touched) or a factory returning an
    empty store. Returns the number of checks passed; raises :class:`AssertionError`
    naming every check that failed and why."""
    import uuid

    from router.store.contract import CHECKS
    from router.store.registry import store_kind

    if isinstance(target, str):
        kind, url = store_kind(target), target

        def make() -> Any:
            options = {"prefix": f"check-{uuid.uuid4().hex[:10]}:"} if kind.shared else {}
            return kind.make(url, **options)
    else:
        make = target
    failures: list[str] = []
    for check in CHECKS:
        store = make()
        try:
            check(store)
        except Exception as exc:  # every failure is reported, not only the first
            failures.append(f"{check.__name__}: {type(exc).__name__}: {exc}")
            if stop_on_failure:
                break
        finally:
            if isinstance(target, str):  # (a store built here: leave nothing behind)
                store.flush()
                store.discard()
            store.close()
    if failures:
        raise AssertionError(
            f"{len(failures)} of {len(CHECKS)} quota-store checks failed:\n  "
            + "\n  ".join(failures)
        )
    return len(CHECKS)


def check_scorer(scorer: Any, X: np.ndarray | None = None, *, reference: Any = None) -> None:
    """Check a scorer against the scorer contract (:class:`router.scoring.Scorer`): it has
    ``pd_one``, ``pd_batch`` and ``feature_names_`` (features the router computes, in the
    model's order);
    batch PDs are float64 in [0, 1], one per row, an empty batch gives an empty result;
    ``pd_one`` agrees with ``pd_batch`` to 1e-9; and, given ``reference`` (the fitted
    scikit-learn estimator it was compiled from), ``predict_proba`` agrees to 1e-9. ``X``
    defaults to the features of 3,000 generated applications. Raises
    :class:`AssertionError` naming what failed."""
    from router.scoring import Scorer

    if not isinstance(scorer, Scorer):
        raise AssertionError(
            f"{type(scorer).__name__} is not a scorer: it needs pd_one, pd_batch and feature_names_"
        )
    from router.core.errors import ModelError
    from router.decide.features import check_features

    try:
        check_features(tuple(scorer.feature_names_))
    except ModelError as exc:
        raise AssertionError(f"feature_names_: {exc}") from None
    if X is None:
        X = _sample_features(tuple(scorer.feature_names_))
    batch = scorer.pd_batch(X)
    if not (isinstance(batch, np.ndarray) and batch.shape == (len(X),)):
        raise AssertionError(
            f"pd_batch gave {getattr(batch, 'shape', type(batch))} for {len(X)} rows"
        )
    if batch.dtype != np.float64:
        raise AssertionError(f"pd_batch gave dtype {batch.dtype}, not float64")
    bad = np.flatnonzero(~((batch >= 0) & (batch <= 1)))
    if len(bad):
        raise AssertionError(f"pd_batch gave {batch[bad[0]]!r} (row {bad[0]}): not in [0, 1]")
    single = np.array([scorer.pd_one(row) for row in X.tolist()], dtype=np.float64)
    worst = int(np.argmax(np.abs(single - batch))) if len(X) else 0
    if len(X) and abs(single[worst] - batch[worst]) > 1e-9:
        raise AssertionError(
            f"pd_one and pd_batch disagree at row {worst}: {single[worst]!r} vs {batch[worst]!r}"
        )
    empty = scorer.pd_batch(X[:0])
    if getattr(empty, "shape", None) != (0,):
        raise AssertionError(f"pd_batch of no rows gave {empty!r}")
    if reference is not None:
        expected = reference.predict_proba(X)[:, 1]
        worst = int(np.argmax(np.abs(expected - batch)))
        if abs(expected[worst] - batch[worst]) > 1e-9:
            raise AssertionError(
                f"differs from the reference's predict_proba at row {worst}: "
                f"{batch[worst]!r} vs {expected[worst]!r}"
            )


def _sample_features(
    names: tuple[str, ...] = FEATURES, n: int = 3000, seed: int = 11
) -> np.ndarray:
    from router.core.columns import from_arrow
    from router.core.identity import Hasher
    from router.decide.features import FeatureSet
    from router.traffic import generate_batches

    cols = from_arrow(next(generate_batches(n, seed=seed)), Hasher(b"check-scorer-key-0000"))
    fs = FeatureSet(names)
    # Application features the router cannot compute: numbers in [0, 1) (a PD passes as
    # one), and for one-hot flags each named category or another one, drawn at random.
    rng = np.random.default_rng(seed)
    for name, kind in fs.app.items():
        if kind == "number":
            cols.extra[name] = rng.random(n)
        else:
            seen = [v for f in names if f.startswith(name + "=") for v in [f.split("=", 1)[1]]]
            cols.extra[name] = np.array(seen + ["(other)"], dtype=object)[
                rng.integers(0, len(seen) + 1, n)
            ]
    return fs.batch(cols)
