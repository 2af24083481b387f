"""The assessment of a single application, on Python scalars.

numpy's per-call overhead dominates a batch of one, so a live decision would spend most of
its time there. This module computes exactly what :func:`router.assess.assess` computes
for one row — the same rules in the same order and the same economics functions, called
on floats instead of arrays (IEEE arithmetic gives the same bits) — and returns the same
:class:`~router.assess.Assessment`. ``tests/test_assess_one.py`` checks every field for
bit equality with the batch path over thousands of applications and several strategies.
Scores still come from the scorer's batch method on a one-row matrix, so PDs are the
batch path's own.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from router import economics as eco
from router.assess import Assessment
from router.columns import AppColumns
from router.config import Filters, Strategy
from router.features import features_batch
from router.partners import _BOUNDS, PartnerTable
from router.reasons import BIT
from router.windows import window_keys


def _in_regions(code: int, prefixes: list[str]) -> bool:
    return not prefixes or any(code // 10 ** (6 - len(p)) == int(p) for p in prefixes)


def _passes(f: Filters, row: dict[str, Any], pd: float) -> bool:
    for attr, column, passes in _BOUNDS:
        bound = getattr(f, attr)
        if bound is not None and not passes(pd if column == "pd" else row[column], bound):
            return False
    if f.regions and not _in_regions(row["region_code"], f.regions):
        return False
    return not f.channels or row["channel"] in f.channels


def assess_one(cols: AppColumns, strategy: Strategy, scorers: dict[str, Any],
               employer_tokens: list[frozenset[str]], table: PartnerTable) -> Assessment:
    """:func:`router.assess.assess` for a batch of exactly one application."""
    from router.assess import consent_matrix

    s, r, e = strategy, strategy.rules, strategy.economics
    X = features_batch(cols)
    pd_arr = scorers[s.primary.scorer].pd_batch(X)
    pd = float(pd_arr[0])
    row = {name: getattr(cols, name)[0].item() for name in (
        "age", "bureau_score", "requested_amount", "term_months", "inquiries_3m",
        "open_loans", "dti", "worst_dpd_12m", "max_apr")}
    row["channel"] = str(cols.channel[0])
    row["region_code"] = int(cols.region[0])
    amount, term = float(row["requested_amount"]), float(row["term_months"])
    max_apr = row["max_apr"]
    bits = 0

    fraud = bool(cols.fraud_flag[0]) and r.decline_fraud
    age_bad = row["age"] < r.min_age or row["age"] > r.max_age
    bits |= BIT["FRAUD_FLAG"] if fraud else 0
    bits |= BIT["AGE_OUT_OF_RANGE"] if age_bad else 0
    dead = fraud or age_bad
    funder_ok = not dead
    for code, bad in (
        ("REGION_UNLICENSED", not _in_regions(row["region_code"], r.licensed_regions)),
        ("SEVERE_DELINQUENCY", row["worst_dpd_12m"] > r.max_worst_dpd),
        ("MULTI_LENDING", row["inquiries_3m"] > r.max_inquiries_3m
         or row["open_loans"] > r.max_open_loans),
        ("HIGH_DEBT_BURDEN", row["dti"] > r.max_dti),
    ):
        if bad and not dead:
            bits |= BIT[code]
        funder_ok = funder_ok and not bad

    p = s.primary
    req = eco.required_apr(pd, term, e)
    ach = eco.achievable_apr(max_apr, e)
    keep_apr = eco.offered_apr(req, ach, e)
    keep_margin = ach - req
    keep_profit = eco.keep_profit(amount, term, pd, keep_apr, e)
    keep_ok = funder_ok
    for code, ok in (("KEEP_FILTER", _passes(p.filters, row, pd)),
                     ("KEEP_PD_ABOVE_CUTOFF", pd <= p.max_pd),
                     ("KEEP_NOT_COVERED", keep_margin >= 0),
                     ("KEEP_LOW_PROFIT", keep_profit >= p.min_expected_profit)):
        if funder_ok and not ok:
            bits |= BIT[code]
        keep_ok = keep_ok and ok

    b = s.branch
    if b is not None:
        bpd = pd if b.scorer == p.scorer else float(scorers[b.scorer].pd_batch(X)[0])
        bapr = eco.branch_apr(max_apr, b, e)
        bprofit = eco.branch_profit(amount, term, bpd, bapr, b, e)
        bmargin = eco.branch_margin(amount, term, bprofit, b)
        branch_ok = funder_ok
        for code, ok in (("BRANCH_FILTER", _passes(b.filters, row, bpd)),
                         ("BRANCH_PD_ABOVE_CUTOFF", bpd <= b.max_pd),
                         ("BRANCH_NOT_COVERED", bmargin >= 0),
                         ("BRANCH_LOW_PROFIT", bprofit >= b.min_expected_profit)):
            if funder_ok and not keep_ok and not ok:
                bits |= BIT[code]
            branch_ok = branch_ok and ok
    else:
        bpd = bapr = bprofit = bmargin = 0.0
        branch_ok = False

    partners = s.partners
    P = len(partners)
    consent = consent_matrix(cols, s, table.consent_rows)[0] if P else np.zeros(0, dtype=bool)
    no_consent = cols.consent.values[cols.consent.codes[0]] == "none"
    live = not dead
    if live and no_consent:
        bits |= BIT["NO_CONSENT"]
    if live and not no_consent and not consent.any():
        bits |= BIT["CHANNEL_NO_REFERRAL"]
    employer = cols.employer.values[cols.employer.codes[0]]
    eligible = [False] * P
    ev = [0.0] * P
    papr = [0.0] * P
    employee_any = False
    for j, partner in enumerate(partners):
        ok = live and bool(consent[j]) and partner.whitelisted and \
            _passes(partner.filters, row, pd) and max_apr >= partner.apr_min
        if ok and employer_tokens[j] and employer in employer_tokens[j]:
            employee_any = True
            ok = False
        eligible[j] = ok
        ev[j] = eco.referral_value(amount, term, pd, max_apr, partner)
        papr[j] = eco.partner_apr(max_apr, partner)
    if employee_any:
        bits |= BIT["PARTNER_EMPLOYEE"]
    if live and consent.any() and not any(eligible):
        bits |= BIT["NO_ELIGIBLE_PARTNER"]
    valuable = [el and v >= s.routing.min_expected_value for el, v in zip(eligible, ev)]
    if any(eligible) and not any(valuable):
        bits |= BIT["LOW_REFERRAL_VALUE"]

    zones = {s.timezone, *(pt.timezone for pt in partners)}
    keys = {z: window_keys(cols.event_ms, z) for z in zones}

    def f1(x: float) -> np.ndarray:
        return np.array([x], dtype=np.float64)

    def b1(x: bool) -> np.ndarray:
        return np.array([x], dtype=bool)

    return Assessment(bits=np.array([bits], dtype=np.uint64), dead=b1(dead), pd=pd_arr,
                      keep_ok=b1(keep_ok), keep_apr=f1(keep_apr), keep_margin=f1(keep_margin),
                      keep_profit=f1(keep_profit), branch_ok=b1(branch_ok), branch_pd=f1(bpd),
                      branch_apr=f1(bapr), branch_margin=f1(bmargin),
                      branch_profit=f1(bprofit),
                      eligible=np.array([valuable], dtype=bool).reshape(1, P),
                      ev=np.array([ev], dtype=np.float64).reshape(1, P),
                      partner_apr=np.array([papr], dtype=np.float64).reshape(1, P), keys=keys)
