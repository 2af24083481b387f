from __future__ import annotations

from pathlib import Path

import pytest

from router.config import strategy_from_dict
from router.engine import Router
from router.testing import ScoreLookupScorer, strategy_dict

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def make_router():
    """Build a Router over the small test strategy with PDs chosen by bureau score."""

    def build(pd_by_score=None, store=None, **overrides):
        s = strategy_from_dict(strategy_dict(**overrides))
        scorer = ScoreLookupScorer(pd_by_score or {700: 0.02}, default=0.5)
        return Router(s, store, scorers={"main": scorer})

    return build
