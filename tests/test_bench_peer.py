"""The `peer` bench scenario compares like with like: the ZEN graph generated from a
strategy decides every application as the router does (bench/zen_graph.py), for the
shipped strategy and for variants that exercise the other branches of the generator."""

from __future__ import annotations

import sys
from pathlib import Path

import msgspec
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

pytest.importorskip("zen")

from bench_peer import Peer, peer_strategy
from zen_graph import num, zen_graph

from router.core.config import ChannelPolicy

replace = msgspec.structs.replace


def _variants():
    s = peer_strategy()
    yield "shipped", s
    yield "waterfall", replace(s, routing=replace(s.routing, method="waterfall"))
    assert s.branch is not None
    yield (
        "share, blocked channel, regions",
        replace(
            s,
            branch=replace(s.branch, return_model="share", profit_share=0.4, fixed_return=0.0),
            channels={**s.channels, "api_aggregator": ChannelPolicy(referral_allowed=False)},
            primary=replace(
                s.primary, filters=replace(s.primary.filters, regions=["11", "44"], channels=[])
            ),
        ),
    )


@pytest.mark.parametrize(
    "name,strategy", list(_variants()), ids=lambda v: v if isinstance(v, str) else ""
)
def test_zen_graph_decides_as_the_router(name, strategy):
    peer = Peer(strategy, 600, seed=11)
    try:
        bad = peer.disagreements()
    finally:
        peer.router.close()
    assert bad == {"batch": [], "zen": [], "zen batch": [], "router": []}
    outcomes = {o for o, _ in map(peer.ours.one, peer.rows)}
    assert outcomes == {"keep", "branch", "refer", "decline"}, outcomes


def test_unsupported_strategies_are_refused():
    from router.decide.engine import Router

    s = peer_strategy()

    with Router(s) as r:
        with pytest.raises(ValueError, match="not a stateless choice"):
            zen_graph(replace(s, routing=replace(s.routing, method="weighted")), r.scorers,
                      r._employers)  # fmt: skip
        trees = replace(s, primary=replace(s.primary, scorer="pd_trees"))
    with Router(trees) as r:
        with pytest.raises(ValueError, match="logistic scorecards"):
            zen_graph(trees, r.scorers, r._employers)


def test_numbers_are_plain_decimal_literals():
    assert num(1e-06) == "0.000001"
    assert num(0.1) == "0.1"
    assert num(12_000) == "12000"
    assert num(True) == "true"
    with pytest.raises(ValueError):
        num(float("nan"))
