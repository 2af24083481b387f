"""The scalar one-application assessment equals the batch assessment, bit for bit."""

from dataclasses import fields

import numpy as np
import pytest

from router.core.columns import from_arrow
from router.core.config import strategy_from_dict
from router.decide.assess import assess
from router.decide.assess_one import assess_one
from router.decide.engine import Router
from router.testing import ScoreLookupScorer, strategy_dict
from router.traffic import generate_batches


def _compare(router, cols):
    for i in range(len(cols)):
        from router.core.columns import take

        one = take(cols, np.array([i]))
        a = assess(one, router.strategy, router.scorers, router._employers, router._table)
        b = assess_one(one, router.strategy, router.scorers, router._employers, router._table)
        for f in fields(a):
            x, y = getattr(a, f.name), getattr(b, f.name)
            if f.name == "keys":
                assert {z: {w: k.tolist() for w, k in v.items()} for z, v in x.items()} == {
                    z: {w: k.tolist() for w, k in v.items()} for z, v in y.items()
                }
            elif f.name == "ordered":
                continue
            else:
                assert x.dtype == y.dtype and x.shape == y.shape, f.name
                assert np.array_equal(x, y), (f.name, i, x, y)


@pytest.mark.parametrize("scorer", ["pd_logit", "pd_hgb", "pd_trees"])
def test_example_strategy_on_generated_traffic(scorer):
    import msgspec

    raw = msgspec.toml.decode(open("configs/strategy.toml", "rb").read())
    raw["partners"] = msgspec.toml.decode(open("configs/partners.toml", "rb").read())["partners"]
    raw.pop("partner_book")
    raw["base_dir"] = "configs"
    raw["primary"]["scorer"] = scorer
    router = Router(strategy_from_dict(raw))
    batch = next(generate_batches(1500, seed=44))
    _compare(router, from_arrow(batch, router.hasher))


def test_test_strategy_edge_cases():
    from router.core.columns import from_applications
    from router.testing import make_application

    router = Router(
        strategy_from_dict(strategy_dict(routing={"method": "best_value"})),
        scorers={"main": ScoreLookupScorer({700: 0.02, 650: 0.08, 600: 0.2})},
    )
    apps = [
        make_application(application_id=f"e{i}", **kw)
        for i, kw in enumerate(
            [
                {},
                {"fraud_flag": True},
                {"age": 17},
                {"age": 61},
                {"region": "440300"},
                {"worst_dpd_12m": 90},
                {"inquiries_3m": 9},
                {"dti": 0.7},
                {"consent": "none"},
                {"consent": ["gray_c"]},
                {"employer": "Bank A Group", "region": "440300"},
                {"bureau_score": 600},
                {"bureau_score": 650},
                {"bureau_score": 550},
                {"max_apr": 0.05},
                {"max_apr": 0.3},
                {"term_months": 36},
                {"requested_amount": 1},
            ]
        )
    ]
    _compare(router, from_applications(apps, router.hasher))


@pytest.mark.parametrize("method", ["waterfall", "weighted"])
def test_other_books(method):
    from router.core.columns import from_applications
    from router.testing import make_application

    for partners in ([], None):
        d = strategy_dict(routing={"method": method})
        if partners is not None:
            d["partners"] = partners
            d["branch"] = None
        router = Router(
            strategy_from_dict(d), scorers={"main": ScoreLookupScorer({700: 0.02, 600: 0.2})}
        )
        apps = [
            make_application(application_id=f"o{i}", bureau_score=s, region=r)
            for i, (s, r) in enumerate([(700, "310000"), (600, "440300"), (550, "110000")])
        ]
        _compare(router, from_applications(apps, router.hasher))
