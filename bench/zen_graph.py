"""A strategy's stateless decision as a GoRules ZEN decision graph (``zen-engine``).

The ``peer`` scenario (bench_peer.py) times the router's stateless decision — hard rules,
scoring, the coverage test of both policies, consent, partner filters and expected value,
the routing choice; no quotas — against the same logic run by ZEN, the open-source rules
engine lenders embed for this kind of decision. The graph is generated from the strategy
(bounds, economics and partner terms are its numbers), so the two cannot drift apart, and
the scenario checks that both decide every application alike before it times anything.

The graph is what a ZEN user would draw: expression nodes in ZEN's own language, one per
step, each passing its input through (features and PD, rules, keep, branch, partners,
decision). ZEN's expression language has no logarithm, so the two ``log1p`` features of
the default vector arrive precomputed in the input (``log_income``, ``log_amount``):
that work is counted on the router's side only. (A ZEN function node, JavaScript with
``Math.log1p``, could compute them, at about 0.7 ms an evaluation on this machine.)
ZEN's arithmetic is decimal; ``e ^ z`` stands for ``exp(z)``.

Supported: logistic scorecards without a calibration map (``logistic_json``), the
default features plus ``max_apr``, ``best_value`` and ``waterfall`` routing; anything
else raises ``ValueError`` (a weighted rotation is state, not the stateless part).
"""

from __future__ import annotations

import json
import math
from decimal import Decimal
from typing import Any

from router.core.config import Filters, Strategy
from router.core.rules import FILTER_BOUNDS, FUNDER_RULES, GLOBAL_RULES
from router.decide.partners import waterfall_order
from router.scoring.linear import LinearScorer

#: How each default feature (and ``max_apr``) is computed from the input, in ZEN's language.
FEATURE_EXPR = {
    "age": "age",
    "log_income": "log_income",
    "bureau_score": "bureau_score / 100",
    "inquiries_3m": "inquiries_3m",
    "open_loans": "open_loans",
    "dti": "dti",
    "dpd_months": "min([worst_dpd_12m, 180]) / 30",
    "log_amount": "log_amount",
    "term_years": "term_months / 12",
    "amount_to_income": "(requested_amount / 100) / (monthly_income / 100 + 100)",
    "ch_platform": "(channel == 'platform' ? 1 : 0)",
    "ch_api": "(channel == 'api_aggregator' ? 1 : 0)",
    "ch_h5": "(channel == 'h5_aggregator' ? 1 : 0)",
    "max_apr": "max_apr",
}

_OP = {"greater_equal": ">=", "less_equal": "<="}
_FIELD = {"pd": None}  # filter column -> input field (None: the policy's PD variable)


def num(x: float | int) -> str:
    """A number as a ZEN literal: plain decimal notation of its shortest repr."""
    if isinstance(x, bool):
        return "true" if x else "false"
    if isinstance(x, int):
        return str(x)
    if not math.isfinite(x):
        raise ValueError(f"not a finite number: {x!r}")
    return format(Decimal(repr(float(x))), "f")


def text(s: str) -> str:
    """A string literal (ids and codes: letters, digits, underscores, commas)."""
    if "'" in s or "\\" in s:
        raise ValueError(f"unsupported text {s!r}")
    return f"'{s}'"


def text_list(items: list[str]) -> str:
    return "[" + ", ".join(text(i) for i in items) + "]"


def filter_expr(f: Filters, pd: str) -> str:
    """A policy's or partner's eligibility filter as one boolean expression."""
    parts = []
    for attr, column, op in FILTER_BOUNDS:
        bound = getattr(f, attr)
        if bound is not None:
            field = pd if column == "pd" else column
            parts.append(f"{field} {_OP[op.__name__]} {num(bound)}")
    if f.regions:
        parts.append(f"some({text_list(list(f.regions))}, startsWith(region, #))")
    if f.channels:
        parts.append(f"channel in {text_list(list(f.channels))}")
    return " and ".join(parts) or "true"


def pd_expr(scorer: Any) -> str:
    """The linear score z of a logistic scorecard."""
    if not isinstance(scorer, LinearScorer) or scorer.calibration_ is not None:
        raise ValueError("the ZEN graph takes logistic scorecards without a calibration map")
    terms = [num(scorer.intercept_)]
    for name, c in zip(scorer.feature_names_, scorer._pairs):
        if name not in FEATURE_EXPR:
            raise ValueError(f"feature {name!r} is not in the ZEN graph")
        terms.append(f"{num(c)} * {FEATURE_EXPR[name]}")
    return " + ".join(terms)


def _node(nid: str, exprs: list[tuple[str, str]], pass_through: bool = True) -> dict:
    return {
        "id": nid,
        "type": "expressionNode",
        "name": nid,
        "position": {"x": 0, "y": 0},
        "content": {
            "expressions": [
                {"id": f"{nid}{i}", "key": k, "value": v} for i, (k, v) in enumerate(exprs)
            ],
            "passThrough": pass_through,
        },
    }


def _scoring(strategy: Strategy, scorers: dict[str, Any]) -> list[tuple[str, str]]:
    e = num(math.e)
    out = []
    used = [strategy.primary.scorer] + ([strategy.branch.scorer] if strategy.branch else [])
    for name in dict.fromkeys(used):
        z, pd = f"z_{name}", f"pd_{name}"
        out.append((z, pd_expr(scorers[name])))
        # The numerically stable logistic, as the router computes it.
        out.append(
            (pd, f"$.{z} >= 0 ? 1 / (1 + {e} ^ (0 - $.{z})) : {e} ^ $.{z} / (1 + {e} ^ $.{z})")
        )
    return out


def _rules(strategy: Strategy) -> list[tuple[str, str]]:
    r = strategy.rules
    dead = [f"(fraud_flag and {num(r.decline_fraud)})"]
    dead += [f"{x.field} {x.op} {num(getattr(r, x.bound))}" for x in GLOBAL_RULES]
    funder = ["not $.dead"]
    if r.licensed_regions:
        funder.append(f"some({text_list(list(r.licensed_regions))}, startsWith(region, #))")
    funder += [f"not ({x.field} {x.op} {num(getattr(r, x.bound))})" for x in FUNDER_RULES]
    return [("dead", " or ".join(dead)), ("funder_ok", " and ".join(funder))]


def _keep(strategy: Strategy) -> list[tuple[str, str]]:
    p, e = strategy.primary, strategy.economics
    pd = f"pd_{p.scorer}"
    hurdle = num(e.funding_cost + e.operating_cost + e.target_margin)
    lgd_ead = f"{num(e.lgd)} * {num(e.ead_factor)}"
    return [
        ("b", "(term_months + 1) / 24"),
        ("by", "requested_amount * (term_months + 1) / 24"),
        (
            "req",
            f"({hurdle} * $.b + {pd} * {lgd_ead}) / ($.b * (1 - min([{pd}, 0.999999])))",
        ),
        ("ach", f"min([{num(min(e.legal_apr_cap, e.own_apr_cap))}, max_apr])"),
        ("apr", f"min([$.ach, max([$.req, {num(e.min_apr)}])])"),
        ("margin", "$.ach - $.req"),
        (
            "profit",
            f"$.apr * $.by * (1 - {pd}) - {num(e.funding_cost + e.operating_cost)} * $.by"
            f" - {pd} * {lgd_ead} * requested_amount",
        ),
        (
            "keep_ok",
            f"funder_ok and {filter_expr(p.filters, pd)} and {pd} <= {num(p.max_pd)}"
            f" and $.margin >= 0 and $.profit >= {num(p.min_expected_profit)}",
        ),
    ]


def _branch(strategy: Strategy) -> list[tuple[str, str]]:
    b, e = strategy.branch, strategy.economics
    if b is None:
        return [("branch_ok", "false")]
    pd = f"pd_{b.scorer}"
    loss = f"{pd} * {num(e.lgd)} * {num(e.ead_factor)} * requested_amount"
    if b.return_model == "fixed":
        income = f"{num(b.fixed_return)} * by"
    else:
        income = f"{num(b.profit_share)} * $.bapr * by * (1 - {pd})"
    funding = e.funding_cost if b.funding_cost is None else b.funding_cost
    return [
        ("bapr", f"min([{num(min(b.apr_cap, e.legal_apr_cap))}, max_apr])"),
        (
            "bprofit",
            f"{income} - {num(funding + b.operating_cost)} * by - {num(b.funder_loss_share)}"
            f" * max([{loss} - {num(b.reserve_rate)} * requested_amount, 0])",
        ),
        ("bmargin", f"$.bprofit / by - {num(b.target_margin)}"),
        (
            "branch_ok",
            f"funder_ok and {filter_expr(b.filters, pd)} and {pd} <= {num(b.max_pd)}"
            f" and $.bmargin >= 0 and $.bprofit >= {num(b.min_expected_profit)}",
        ),
    ]


def _consent(strategy: Strategy, pid: str) -> str:
    """Whether the applicant's consent text and the channel allow partner ``pid``."""
    listed = "contains(split(consent, ','), " + text(pid) + ")"
    # Channels whose form names partners, and those that allow no referral at all.
    unnamed = [c for c, pol in strategy.channels.items()
               if pol.consent_partners is not None and pid not in pol.consent_partners]  # fmt: skip
    blocked = [c for c, pol in strategy.channels.items() if not pol.referral_allowed]
    any_ok = f"not (channel in {text_list(unnamed)})" if unnamed else "true"
    out = f"((consent == 'any' and {any_ok}) or (consent != 'any' and consent != 'none'"
    out += f" and {listed}))"
    if blocked:
        out += f" and not (channel in {text_list(blocked)})"
    return out


def _partners(strategy: Strategy, employer_tokens: list[frozenset[str]]) -> list[tuple[str, str]]:
    s = strategy
    pd = f"pd_{s.primary.scorer}"
    out: list[tuple[str, str]] = []
    for j, p in enumerate(s.partners):
        t = p.terms
        ok = [
            "not dead",
            _consent(s, p.id),
            num(p.whitelisted),
            filter_expr(p.filters, pd),
            f"max_apr >= {num(p.apr_min)}",
        ]
        if employer_tokens[j]:
            ok.append(f"not (employer in {text_list(sorted(employer_tokens[j]))})")
        acc = f"max([0, min([1, {num(p.acceptance)} - {num(p.acceptance_pd_slope)} * {pd}])])"
        out += [
            (f"ok{j}", " and ".join(ok)),
            (f"acc{j}", acc),
            (
                f"ev{j}",
                f"{num(t.fee_per_referral)} + $.acc{j} * ({num(t.fee_per_accepted)}"
                f" + {num(p.funded_rate)} * {num(t.fee_per_funded)})"
                f" + $.acc{j} * {num(p.funded_rate)} * {num(t.rev_share)}"
                f" * min([{num(p.apr_max)}, max_apr]) * by * (1 - {pd})",
            ),
            (f"val{j}", f"$.ok{j} and $.ev{j} >= {num(s.routing.min_expected_value)}"),
        ]
    n = len(s.partners)
    order = waterfall_order(s.partners)
    out.append(("any_val", " or ".join(f"$.val{j}" for j in range(n)) or "false"))
    if s.routing.method == "best_value":
        values = ", ".join(f"$.val{j} ? $.ev{j} : -1" for j in range(n))
        out.append(("best_ev", f"max([{values}])"))
        pick = [f"$.val{j} and $.ev{j} == $.best_ev" for j in order]
    elif s.routing.method == "waterfall":
        pick = [f"$.val{j}" for j in order]
    else:
        raise ValueError(f"routing {s.routing.method!r}: not a stateless choice")
    choice = "null"
    for j, cond in reversed(list(zip(order, pick))):
        choice = f"({cond} ? {text(s.partners[j].id)} : {choice})"
    out.append(("choice", choice))
    return out


def zen_graph(
    strategy: Strategy, scorers: dict[str, Any], employer_tokens: list[frozenset[str]]
) -> dict:
    """The stateless decision of ``strategy`` as a ZEN graph (JDM JSON): its output is
    ``{"outcome": "keep" | "branch" | "refer" | "decline", "partner": id or null}``."""
    steps = [
        ("score", _scoring(strategy, scorers)),
        ("rules", _rules(strategy)),
        ("keep", _keep(strategy)),
        ("branch", _branch(strategy)),
        ("partners", _partners(strategy, employer_tokens)),
    ]
    nodes = [{"id": "in", "type": "inputNode", "name": "request", "position": {"x": 0, "y": 0}}]
    nodes += [_node(name, exprs) for name, exprs in steps]
    nodes.append(
        _node(
            "decision",
            [
                (
                    "outcome",
                    "keep_ok ? 'keep' : branch_ok ? 'branch' : any_val ? 'refer' : 'decline'",
                ),
                ("partner", "keep_ok or branch_ok ? null : choice"),
            ],
            pass_through=False,
        )
    )
    nodes.append(
        {"id": "out", "type": "outputNode", "name": "response", "position": {"x": 0, "y": 0}}
    )
    edges = [
        {"id": f"e{i}", "sourceId": a["id"], "targetId": b["id"], "type": "edge"}
        for i, (a, b) in enumerate(zip(nodes, nodes[1:]))
    ]
    return {"nodes": nodes, "edges": edges}


def zen_input(r: Any, log_income: float, log_amount: float) -> dict:
    """A ZEN request for one application row (:class:`~router.core.columns.Row`)."""
    return {
        "age": r.age,
        "monthly_income": r.monthly_income,
        "bureau_score": r.bureau_score,
        "inquiries_3m": r.inquiries_3m,
        "open_loans": r.open_loans,
        "worst_dpd_12m": r.worst_dpd_12m,
        "requested_amount": r.requested_amount,
        "term_months": r.term_months,
        "dti": r.dti,
        "max_apr": r.max_apr,
        "region": r.region,
        "channel": r.channel,
        "employer": r.employer,
        "consent": r.consent,
        "fraud_flag": r.fraud_flag,
        "log_income": log_income,
        "log_amount": log_amount,
    }


def dumps(graph: dict) -> str:
    return json.dumps(graph, indent=1)
