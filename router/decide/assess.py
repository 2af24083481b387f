"""The vectorised half of the decision: rules, scores, economics, partner eligibility.

:func:`assess` turns a column batch into per-application arrays. It never touches the
quota store; :mod:`router.decide.engine` then walks the batch in arrival order and reserves.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, NamedTuple, TypeVar

import msgspec
import numpy as np

from router.core import economics as eco
from router.core.columns import AppColumns, batch_window_keys, coded_column
from router.core.config import Filters, Strategy
from router.core.errors import InputError
from router.core.reasons import BIT
from router.core.rules import FUNDER_RULES, GLOBAL_RULES
from router.decide.features import FEATURES, FeatureSet, features_batch
from router.decide.partners import (
    PartnerTable,
    filter_mask,
    isin_small,
    region_match,
    rows_any,
)

#: One application's value of a field (a Python scalar), or the batch's column of them.
Col = TypeVar("Col")
#: A value per partner: a list for one application, an (n × partners) array for a batch.
PerPartner = TypeVar("PerPartner")
#: Window keys: (hour, day, month) per time zone for one application; for a batch, per
#: time zone and window, a column.
Keys = TypeVar("Keys")


@dataclass(slots=True)
class Assessment(Generic[Col, PerPartner, Keys]):
    """Everything the allocation step needs, one value per application: the same shape
    for a batch (columns: :func:`assess`) and for one application (Python scalars:
    :class:`router.decide.assess_one.OneAssessor`, the live path — numpy's per-call
    overhead would be most of a decision)."""

    bits: Col  # uint64 reason bits gathered so far
    dead: Col  # declined outright (global rule)
    pd: Col
    keep_ok: Col
    keep_apr: Col
    keep_margin: Col
    keep_profit: Col
    branch_ok: Col
    branch_pd: Col
    branch_apr: Col
    branch_margin: Col
    branch_profit: Col
    eligible: PerPartner  # eligible and valuable enough, per partner
    ev: PerPartner  # expected referral value, minor units
    partner_apr: PerPartner
    keys: Keys
    ordered: dict[tuple[str, str], bool] = field(default_factory=dict)  # keys non-decreasing?


#: A batch's assessment (what :func:`assess` returns).
BatchAssessment = Assessment[np.ndarray, np.ndarray, dict[str, dict[str, np.ndarray]]]


def _set(bits: np.ndarray, mask: np.ndarray | np.bool_, code: str) -> None:
    # (a multiply, not a masked or indexed write: several times faster on a batch)
    np.bitwise_or(bits, mask * np.uint64(BIT[code]), out=bits)


def consent_row(consent: str, channel: str, strategy: Strategy, row: int) -> np.ndarray:
    """Which partners (a bool per partner) a consent text and a channel allow; an unknown
    partner in the consent is an :class:`InputError` naming ``row``."""
    ids = [p.id for p in strategy.partners]
    index = {pid: j for j, pid in enumerate(ids)}
    out = np.zeros(len(ids), dtype=bool)
    pol = strategy.channels.get(channel)
    if consent == "any":
        allowed = pol.consent_partners if pol and pol.consent_partners is not None else ids
        out[[index[p] for p in allowed]] = True
    elif consent != "none":
        for pid in consent.split(","):
            if pid not in index:
                raise InputError(
                    f"field `consent`: unknown partner (value: {pid!r})", field="consent", row=row
                )
            out[index[pid]] = True
    if pol is not None and not pol.referral_allowed:
        out[:] = False
    return out


def consent_matrix(
    cols: AppColumns, strategy: Strategy, cache: dict[tuple[str, str], np.ndarray] | None = None
) -> np.ndarray:
    """(n × partners) True where the applicant's consent and the channel allow the partner."""
    cache = {} if cache is None else cache
    if len(cols) == 1:
        key = (cols.consent.values[cols.consent.codes[0]], str(cols.channel[0]))
        row = cache.get(key)
        if row is None:
            row = consent_row(*key, strategy, 0)
            if len(cache) < 10_000:
                cache[key] = row
        return row[None, :]
    # Distinct (consent, channel) pairs are few: evaluate each once, then broadcast.
    ch = coded_column(cols, "channel")
    pair = cols.consent.codes * len(ch.values) + ch.codes
    uniq, inv = np.unique(pair, return_inverse=True)
    table = np.zeros((len(uniq), len(strategy.partners)), dtype=bool)
    for u, code in enumerate(uniq.tolist()):
        key = (cols.consent.values[code // len(ch.values)], ch.values[code % len(ch.values)])
        row = cache.get(key)
        if row is None:
            row = consent_row(*key, strategy, int(np.flatnonzero(inv == u)[0]))
            if len(cache) < 10_000:
                cache[key] = row
        table[u] = row
    return table[inv]


class _Inputs(NamedTuple):
    """What every step of :func:`assess` reads; ``bits`` is filled in place."""

    cols: AppColumns
    strategy: Strategy
    pd: np.ndarray
    amount: np.ndarray  # float64
    term: np.ndarray  # float64
    bits: np.ndarray  # uint64 reason bits


def scorer_pds(scorer: Any, cols: AppColumns, X: np.ndarray | None = None) -> np.ndarray:
    """The scorer's PD of every row, over the features it names (``X``: the batch's
    default feature matrix, if already computed)."""
    names = tuple(getattr(scorer, "feature_names_", FEATURES))
    if names != FEATURES:
        X = FeatureSet(names).batch(cols, X)
    elif X is None:
        X = features_batch(cols)
    return scorer.pd_batch(X)


def _pds(scorer: Any, cols: AppColumns, X: list[np.ndarray]) -> np.ndarray:
    """:func:`scorer_pds`, kept in the batch's memo: a batch replayed again (every tuning
    candidate replays the same cached batches) is not scored again. Keyed by the scorer
    object itself, so a memo never outlives the model it came from."""
    try:
        got = cols.memo.get(("pd", scorer))
    except TypeError:  # (a scorer that cannot be a key: scored every time)
        got, scorer_key = None, None
    else:
        scorer_key = ("pd", scorer)
    if got is None:
        if not X:
            X.append(features_batch(cols))
        got = scorer_pds(scorer, cols, X[0])
        if scorer_key is not None:
            got.flags.writeable = False  # (shared by every replay of the batch)
            cols.memo[scorer_key] = got
    return got


def assess(
    cols: AppColumns,
    strategy: Strategy,
    scorers: dict[str, Any],
    employer_tokens: list[frozenset[str]],
    table: PartnerTable | None = None,
) -> BatchAssessment:
    """Score and evaluate a batch; see :class:`Assessment`.

    ``table`` is the strategy's partner book as arrays (built here if not given; a
    :class:`~router.decide.engine.Router` builds it once).
    """
    n, s = len(cols), strategy
    X: list[np.ndarray] = []  # the default features, computed once if a PD needs them
    inp = _Inputs(
        cols,
        s,
        _pds(scorers[s.primary.scorer], cols, X),
        cols.requested_amount.astype(np.float64),
        cols.term_months.astype(np.float64),
        np.zeros(n, dtype=np.uint64),
    )
    dead, funder_ok = _rules(inp)
    keep_ok, keep_apr, keep_margin, keep_profit = _primary(inp, funder_ok)
    if s.branch is not None:
        b = s.branch
        bpd = inp.pd if b.scorer == s.primary.scorer else _pds(scorers[b.scorer], cols, X)
        branch_ok, bapr, bmargin, bprofit = _branch(inp, bpd, funder_ok, keep_ok)
    else:
        bpd = bapr = bprofit = bmargin = np.zeros(n)
        branch_ok = np.zeros(n, dtype=bool)
    table = table if table is not None else PartnerTable(s.partners)
    valuable, ev, papr = _partners(inp, dead, table, employer_tokens)
    zones = {s.timezone, *(pt.timezone for pt in s.partners)}
    return Assessment(
        bits=inp.bits,
        dead=dead,
        pd=inp.pd,
        keep_ok=keep_ok,
        keep_apr=keep_apr,
        keep_margin=keep_margin,
        keep_profit=keep_profit,
        branch_ok=branch_ok,
        branch_pd=np.asarray(bpd),
        branch_apr=np.asarray(bapr),
        branch_margin=np.asarray(bmargin),
        branch_profit=np.asarray(bprofit),
        eligible=valuable,
        ev=ev,
        partner_apr=papr,
        keys={z: batch_window_keys(cols, z) for z in zones},
    )


def _rules(inp: _Inputs) -> tuple[np.ndarray, np.ndarray]:
    """(declined outright, the funder may lend): fraud and the global rules decline; the
    funder rules (and licensed regions) remove keep and branch only (router.core.rules)."""
    cols, r, bits = inp.cols, inp.strategy.rules, inp.bits
    dead = cols.fraud_flag & r.decline_fraud
    _set(bits, dead, "FRAUD_FLAG")
    for rule in GLOBAL_RULES:
        bad = rule.broken(getattr(cols, rule.field), r)
        _set(bits, bad, rule.code)
        dead = dead | bad
    funder_ok = ~dead
    region_bad = ~region_match(coded_column(cols, "region"), r.licensed_regions)
    for code, bad in (
        ("REGION_UNLICENSED", region_bad),
        *((rule.code, rule.broken(getattr(cols, rule.field), r)) for rule in FUNDER_RULES),
    ):
        _set(bits, bad & ~dead, code)
        funder_ok &= ~bad
    return dead, funder_ok


def _primary(inp: _Inputs, funder_ok: np.ndarray) -> tuple[np.ndarray, ...]:
    """The primary policy: (keep allowed, offered APR, coverage margin, expected profit)."""
    cols, pd, e, p = inp.cols, inp.pd, inp.strategy.economics, inp.strategy.primary

    def priced() -> tuple[np.ndarray, ...]:
        req = eco.required_apr(pd, inp.term, e)
        ach = eco.achievable_apr(cols.max_apr, e)
        keep_apr = eco.offered_apr(req, ach, e)
        return keep_apr, ach - req, eco.keep_profit(inp.amount, inp.term, pd, keep_apr, e)

    keep_apr, keep_margin, keep_profit = _batch_memo(cols, "keep_price", e, pd, priced)
    checks = (
        ("KEEP_FILTER", filter_mask(p.filters, cols, pd)),
        ("KEEP_PD_ABOVE_CUTOFF", pd <= p.max_pd),
        ("KEEP_NOT_COVERED", keep_margin >= 0),
        ("KEEP_LOW_PROFIT", keep_profit >= p.min_expected_profit),
    )
    keep_ok = funder_ok.copy()
    for code, ok in checks:
        _set(inp.bits, funder_ok & ~ok, code)
        keep_ok &= ok
    return keep_ok, keep_apr, keep_margin, keep_profit


def _branch(
    inp: _Inputs, bpd: np.ndarray, funder_ok: np.ndarray, keep_ok: np.ndarray
) -> tuple[np.ndarray, ...]:
    """The second branch (its reasons explain rows the primary refused): (branch allowed,
    APR, margin, expected profit)."""
    b, e = inp.strategy.branch, inp.strategy.economics
    assert b is not None

    def priced() -> tuple[np.ndarray, ...]:
        bapr = eco.branch_apr(inp.cols.max_apr, b, e)
        bprofit = eco.branch_profit(inp.amount, inp.term, bpd, bapr, b, e)
        return bapr, eco.branch_margin(inp.amount, inp.term, bprofit, b), bprofit

    # (keyed by the branch's terms and the economics, not its cut-offs, filters and caps)
    terms = msgspec.structs.replace(
        b, max_pd=0.0, min_expected_profit=0, filters=Filters(), caps=[]
    )
    bapr, bmargin, bprofit = _batch_memo(inp.cols, "branch_price", (terms, e), bpd, priced)
    checks = (
        ("BRANCH_FILTER", filter_mask(b.filters, inp.cols, bpd)),
        ("BRANCH_PD_ABOVE_CUTOFF", bpd <= b.max_pd),
        ("BRANCH_NOT_COVERED", bmargin >= 0),
        ("BRANCH_LOW_PROFIT", bprofit >= b.min_expected_profit),
    )
    branch_ok = funder_ok.copy()
    for code, ok in checks:
        _set(inp.bits, funder_ok & ~keep_ok & ~ok, code)
        branch_ok &= ok
    return branch_ok, bapr, bmargin, bprofit


def _partners(
    inp: _Inputs, dead: np.ndarray, table: PartnerTable, employer_tokens: list[frozenset[str]]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Consent, eligibility and value of every partner: (eligible and valuable enough,
    expected value, partner APR), each (n × partners)."""
    base = _partner_base(inp, dead, table, employer_tokens)
    np.bitwise_or(inp.bits, base.bits, out=inp.bits)
    valuable = base.eligible & (base.ev >= inp.strategy.routing.min_expected_value)
    _set(inp.bits, rows_any(base.eligible) & ~rows_any(valuable), "LOW_REFERRAL_VALUE")
    return valuable, base.ev, base.papr


class _PartnerBase(NamedTuple):
    """What the partner step finds before the referral-value floor: eligible (consent,
    whitelist, filters, employees), expected value, partner APR, and the reason bits."""

    eligible: np.ndarray
    ev: np.ndarray
    papr: np.ndarray
    bits: np.ndarray


def _partner_base(
    inp: _Inputs, dead: np.ndarray, table: PartnerTable, employer_tokens: list[frozenset[str]]
) -> _PartnerBase:
    """:class:`_PartnerBase`, kept by :func:`_batch_memo` (tuning replays the same cached
    batches with candidates that mostly change cut-offs, caps and routing): keyed by all
    it reads from the strategy — the partner book without its caps, the channels and the
    rules."""
    s = inp.strategy
    return _PartnerBase(
        *_batch_memo(
            inp.cols,
            "partner_base",
            ([msgspec.structs.replace(p, caps=[]) for p in s.partners], s.channels, s.rules),
            inp.pd,
            lambda: _compute_partner_base(inp, dead, table, employer_tokens),
        )
    )


def _batch_memo(
    cols: AppColumns, name: str, config: Any, pd: np.ndarray, compute: Callable[[], tuple]
) -> tuple:
    """``compute()`` — arrays that depend on the batch, its PDs ``pd`` and ``config``
    only — kept in the batch's memo while ``pd`` is (a cached batch that tuning
    replays with candidate after candidate); read-only, as every replay shares them.
    Computed afresh when the PDs are this call's own."""
    if pd.flags.writeable:
        return compute()
    key = (name, msgspec.json.encode(config))
    got = cols.memo.get(key)
    if got is None or got[0] is not pd:
        arrays = compute()
        for x in arrays:
            x.flags.writeable = False
        got = cols.memo[key] = (pd, arrays)
    return got[1]


def _compute_partner_base(
    inp: _Inputs, dead: np.ndarray, table: PartnerTable, employer_tokens: list[frozenset[str]]
) -> _PartnerBase:
    cols, s, pd = inp.cols, inp.strategy, inp.pd
    bits = np.zeros(len(cols), dtype=np.uint64)
    n, P = len(cols), len(s.partners)
    consent = consent_matrix(cols, s, table.consent_rows) if P else np.zeros((n, 0), dtype=bool)
    none_codes = [k for k, v in enumerate(cols.consent.values) if v == "none"]
    no_consent = isin_small(cols.consent.codes, none_codes)
    live = ~dead
    _set(bits, live & no_consent, "NO_CONSENT")
    _set(bits, live & ~no_consent & ~rows_any(consent), "CHANNEL_NO_REFERRAL")
    eligible = live[:, None] & consent & table.whitelisted[None, :]
    eligible &= table.filter_matrix(cols, pd) & (cols.max_apr[:, None] >= table.apr_min[None, :])
    employee_any = np.zeros(n, dtype=bool)
    for j in range(P):
        if employer_tokens[j]:
            codes = [k for k, t in enumerate(cols.employer.values) if t in employer_tokens[j]]
            if not codes:
                continue
            employee = isin_small(cols.employer.codes, codes)
            employee_any |= employee & eligible[:, j]
            eligible[:, j] &= ~employee
    ev = eco.referral_value(
        inp.amount[:, None], inp.term[:, None], pd[:, None], cols.max_apr[:, None], table.econ
    )
    papr = eco.partner_apr(cols.max_apr[:, None], table.econ)
    if P == 0:
        ev = ev.reshape(n, 0)
        papr = papr.reshape(n, 0)
    _set(bits, employee_any, "PARTNER_EMPLOYEE")
    consented = live & rows_any(consent)
    _set(bits, consented & ~rows_any(eligible), "NO_ELIGIBLE_PARTNER")
    return _PartnerBase(eligible, ev, papr, bits)
