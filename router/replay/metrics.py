"""What a replay reports: running totals over decided batches, then ``summary.json``.

Everything is accumulated per batch with numpy (bincounts and masked sums), so the cost
is a few passes over each batch whatever its size. Definitions (money in minor units):

* expected bad rate of kept loans: mean PD; realised: share of kept loans with a known
  outcome that defaulted. Expected loss: Σ PD·LGD·EAD·amount; realised: Σ over defaulted.
* referral value per partner, expected: the fee / rev-share split of
  :func:`router.core.economics.referral_value_parts`. Realised (rows carrying the partner's
  result): fee per referral + fee per accepted if accepted + fee per funded if funded, and
  rev-share = rev_share · partner APR · balance-years of the funded amount, for a funded
  loan that did not default (or weighted by 1 − PD when its default is unknown).
  When the file names the partner the results are from (``referred_partner``), only rows
  referred to that same partner count as realised (the others are "unmatched").
* coverage failures: referred applications the funder could not keep because its funding
  cost was not covered at an APR the applicant accepts (reason ``KEEP_NOT_COVERED``).
* quota utilisation: per partner (and the funder's budgets), per cap window, how much of
  the cap each calendar window used, and when a cap first refused (ran out).
* population stability (PSI) of the PD against a reference file, over the reference's
  PD deciles.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np

from router.core import economics as eco
from router.core.columns import AppColumns, batch_window_keys, coded_column
from router.core.config import Cap, Strategy
from router.core.economics import keep_profit
from router.core.reasons import BIT, CODES
from router.core.windows import WINDOWS
from router.decide.outcomes import (
    BRANCH,
    BRANCH_BUCKET,
    DECLINE,
    KEEP,
    KEEP_BUCKET,
    LABELS,
    REFER,
    Outcomes,
)
from router.replay.calibration import Calibration

_NOT_COVERED = np.uint64(BIT["KEEP_NOT_COVERED"])
PD_BINS = np.linspace(0.0, 1.0, 41)


def iso(ms: int, tz: str) -> str:
    """Local ISO time (seconds) of epoch milliseconds."""
    return datetime.fromtimestamp(ms / 1000, ZoneInfo(tz)).isoformat(timespec="seconds")


def window_label(window: str, key: int) -> str:
    """Readable window: 2026-11-02T13 (hour; ``b`` marks a repeated DST hour), 2026-11-02,
    2026-11."""
    if window == "hour":
        fold, k = key % 10, key // 10
        return f"{k // 1000000:04d}-{k // 10000 % 100:02d}-{k // 100 % 100:02d}T{k % 100:02d}" + (
            "b" if fold else ""
        )
    if window == "day":
        return f"{key // 10000:04d}-{key // 100 % 100:02d}-{key % 100:02d}"
    return f"{key // 100:04d}-{key % 100:02d}"


class _Money:
    """Sums for one population of loans (kept or branched)."""

    def __init__(self) -> None:
        self.n = 0
        self.amount = 0
        self.value = 0
        self.pd_sum = 0.0
        self.expected_loss = 0.0
        self.known = 0
        self.defaulted = 0
        self.realised_loss = 0.0

    def add(
        self,
        idx: np.ndarray,
        out: Outcomes,
        cols: AppColumns,
        loss_rate: float,
        defaulted: np.ndarray | None,
    ) -> None:
        amount = cols.requested_amount[idx].astype(np.float64)
        self.n += len(idx)
        self.amount += int(cols.requested_amount[idx].sum())
        self.value += int(out.value[idx].sum())
        self.pd_sum += float(out.pd[idx].sum())
        self.expected_loss += float((out.pd[idx] * loss_rate * amount).sum())
        if defaulted is not None:
            d = defaulted[idx]
            known, hit = d >= 0, d == 1
            self.known += int(known.sum())
            self.defaulted += int(hit.sum())
            self.realised_loss += float((loss_rate * amount[hit]).sum())

    def to_dict(self) -> dict[str, Any]:
        return {
            "loans": self.n,
            "amount": self.amount,
            "expected_profit": self.value,
            "expected_bad_rate": self.pd_sum / self.n if self.n else None,
            "expected_loss": int(round(self.expected_loss)),
            "with_outcome": self.known,
            "realised_bad_rate": self.defaulted / self.known if self.known else None,
            "realised_loss": int(round(self.realised_loss)) if self.known else None,
        }


class _PartnerSums:
    def __init__(self) -> None:
        self.referred = 0
        self.amount = 0
        self.expected_value = 0
        self.expected_fee = 0.0
        self.expected_rev_share = 0.0
        self.with_outcome = 0
        self.unmatched = 0
        self.accepted = 0
        self.funded = 0
        self.funded_amount = 0
        self.realised_fee = 0.0
        self.realised_rev_share = 0.0


class Metrics:
    """Running totals of a replay (see the module docstring for the definitions)."""

    def __init__(self, strategy: Strategy, reference_pd: np.ndarray | None = None):
        self.s = strategy
        self.counts = np.zeros(4, dtype=np.int64)
        self.amounts = np.zeros(4, dtype=np.int64)
        self.by_channel: dict[str, np.ndarray] = {}
        self.by_hour = np.zeros((24, 4), dtype=np.int64)
        self.keep, self.branch = _Money(), _Money()
        self.calibration = Calibration()
        #: Σ over kept loans with an outcome of the profit the loan made (the expected-profit
        #: formula with its default indicator in place of its PD: it is linear in the PD).
        self.keep_realised_profit = 0.0
        self.keep_promised = [0.0, 0.0]  # expected profit and its variance, same loans
        self.partners = {p.id: _PartnerSums() for p in strategy.partners}
        self.reasons = np.zeros(len(CODES), dtype=np.int64)
        self.coverage_failures = 0
        self.degraded = 0
        # bucket -> window -> key -> [count, amount] granted in that window
        self.usage: dict[str, dict[str, dict[int, list[int]]]] = {}
        # bucket -> window -> key -> local time the cap first refused
        self.ran_out: dict[str, dict[str, dict[int, str]]] = {}
        # partner -> local day -> referrals per local hour (cumulative-use chart)
        self.timeline: dict[str, dict[str, np.ndarray]] = {}
        self.pd_hist = {
            k: np.zeros(len(PD_BINS) - 1, dtype=np.int64)
            for k in ("defaulted", "repaid", "unknown")
        }
        self.psi_edges: np.ndarray | None = None
        self.psi_expected: np.ndarray | None = None
        if reference_pd is not None and len(reference_pd):
            edges = np.unique(np.quantile(reference_pd, np.linspace(0, 1, 11)))
            edges[0], edges[-1] = -np.inf, np.inf
            self.psi_edges = edges
            self.psi_expected = np.histogram(reference_pd, edges)[0] / len(reference_pd)
            self.psi_actual = np.zeros(len(edges) - 1, dtype=np.int64)
        self.caps: dict[str, list[Cap]] = {
            KEEP_BUCKET: list(strategy.primary.caps),
            BRANCH_BUCKET: list(strategy.branch.caps) if strategy.branch else [],
        }
        self.tz: dict[str, str] = {KEEP_BUCKET: strategy.timezone, BRANCH_BUCKET: strategy.timezone}
        for p in strategy.partners:
            self.caps[p.id], self.tz[p.id] = list(p.caps), p.timezone

    # ---- accumulation ------------------------------------------------------------

    def on_cap(self, bucket: str, window: str, key: int, event_ms: int) -> None:
        """Router callback: a cap refused for the first time in a window (it ran out)."""
        self.ran_out.setdefault(bucket, {}).setdefault(window, {}).setdefault(
            key, iso(event_ms, self.tz[bucket])
        )

    def add(self, out: Outcomes, cols: AppColumns, outcomes: dict[str, np.ndarray]) -> None:
        """Account one decided batch (``outcomes``: the batch's outcome columns)."""
        kind = out.kind.astype(np.int64)
        amount = cols.requested_amount
        self.counts += np.bincount(kind, minlength=4)
        self.amounts += np.bincount(kind, weights=amount, minlength=4).astype(np.int64)
        # (over the channel's codes: one bincount, no string comparisons)
        ch = coded_column(cols, "channel")
        per_code = np.bincount(
            ch.codes.astype(np.int64) * 4 + kind, minlength=4 * len(ch.values)
        ).reshape(-1, 4)
        for value, per in zip(ch.values, per_code):
            if per.any():
                self.by_channel.setdefault(value, np.zeros(4, dtype=np.int64))
                self.by_channel[value] += per
        hours = batch_window_keys(cols, self.s.timezone)["hour"] // 10 % 100
        self.by_hour += np.bincount(hours * 4 + kind, minlength=96).reshape(24, 4)
        for b in range(len(CODES)):
            self.reasons[b] += int(np.count_nonzero(out.bits & np.uint64(1 << b)))
        self.degraded += int(out.degraded.sum())
        e = self.s.economics
        loss_rate = e.lgd * e.ead_factor
        defaulted = outcomes.get("defaulted")
        is_keep, is_branch = np.flatnonzero(kind == KEEP), np.flatnonzero(kind == BRANCH)
        self.keep.add(is_keep, out, cols, loss_rate, defaulted)
        self.calibration.add(kind, out.pd, amount, defaulted, loss_rate)
        if defaulted is not None and len(is_keep):
            self._keep_realised(is_keep, out, cols, defaulted)
        self.branch.add(is_branch, out, cols, loss_rate, defaulted)
        self._usage(KEEP_BUCKET, is_keep, cols)
        self._usage(BRANCH_BUCKET, is_branch, cols)
        refer = np.flatnonzero(kind == REFER)
        self.coverage_failures += int(np.count_nonzero(out.bits[refer] & _NOT_COVERED))
        if len(refer):
            pids = [out.partner[i] for i in refer.tolist()]
            index = {pid: k for k, pid in enumerate(sorted(set(pids)))}
            of = np.fromiter(map(index.__getitem__, pids), dtype=np.int64, count=len(pids))
            for pid, which in index.items():
                self._partner(pid, refer[of == which], out, cols, outcomes)
        self._pd_histograms(out, defaulted, len(kind))

    def _keep_realised(
        self, is_keep: np.ndarray, out: Outcomes, cols: AppColumns, defaulted: np.ndarray
    ) -> None:
        """The kept loans with an outcome: their realised profit, and the mean and
        variance of the profit their PDs promise."""
        e = self.s.economics
        amount = cols.requested_amount
        k = is_keep[defaulted[is_keep] >= 0]
        amt, term = amount[k].astype(np.float64), cols.term_months[k].astype(np.float64)
        self.keep_realised_profit += float(
            keep_profit(amt, term, (defaulted[k] == 1).astype(np.float64), out.apr[k], e).sum()
        )
        # What the PDs promise for those loans: each repays (profit if repaid) or
        # defaults (profit if defaulted) with its PD — the mean and variance of the sum.
        repaid = keep_profit(amt, term, np.zeros(len(k)), out.apr[k], e)
        lost = keep_profit(amt, term, np.ones(len(k)), out.apr[k], e)
        p = out.pd[k]
        self.keep_promised[0] += float(np.sum(repaid + p * (lost - repaid)))
        self.keep_promised[1] += float(np.sum(p * (1 - p) * (repaid - lost) ** 2))

    def _pd_histograms(self, out: Outcomes, defaulted: np.ndarray | None, n: int) -> None:
        """PD by outcome (all applications: 0 repaid, 1 defaulted, 2 unknown) and the PSI
        histogram."""
        d = np.where(defaulted < 0, 2, defaulted) if defaulted is not None else np.full(n, 2)
        for code, name in enumerate(("repaid", "defaulted", "unknown")):
            m = d == code
            if m.any():
                # (equal bins given by count and range: numpy bins without sorting)
                self.pd_hist[name] += np.histogram(out.pd[m], len(PD_BINS) - 1, (0.0, 1.0))[0]
        if self.psi_edges is not None:
            self.psi_actual += np.histogram(out.pd, self.psi_edges)[0]

    def _usage(self, bucket: str, idx: np.ndarray, cols: AppColumns) -> None:
        caps = self.caps[bucket]
        if not len(idx) or not caps:
            return
        every = batch_window_keys(cols, self.tz[bucket])
        amount = cols.requested_amount[idx]
        per = self.usage.setdefault(bucket, {})
        for window in {c.window for c in caps}:
            uk, inv = np.unique(every[window][idx], return_inverse=True)
            counts = np.bincount(inv)
            sums = np.bincount(inv, weights=amount)
            slot = per.setdefault(window, {})
            for k, c, a in zip(uk.tolist(), counts.tolist(), sums.tolist()):
                u = slot.setdefault(k, [0, 0])
                u[0] += c
                u[1] += int(a)

    def _partner(
        self,
        pid: str,
        idx: np.ndarray,
        out: Outcomes,
        cols: AppColumns,
        outcomes: dict[str, np.ndarray],
    ) -> None:
        p = self.s.partner(pid)
        t = self.partners[pid]
        amount = cols.requested_amount[idx].astype(np.float64)
        term = cols.term_months[idx].astype(np.float64)
        t.referred += len(idx)
        t.amount += int(cols.requested_amount[idx].sum())
        t.expected_value += int(out.value[idx].sum())
        fees, share = eco.referral_value_parts(amount, term, out.pd[idx], cols.max_apr[idx], p)
        t.expected_fee += float(np.sum(fees))
        t.expected_rev_share += float(np.sum(share))
        self._usage(pid, idx, cols)
        # The timeline of the cumulative-use chart: referrals per local day and hour.
        every = batch_window_keys(cols, p.timezone)
        day, hour = every["day"][idx], every["hour"][idx] // 10 % 100
        for d in np.unique(day).tolist():
            slot = self.timeline.setdefault(pid, {}).setdefault(
                window_label("day", d), np.zeros(24, dtype=np.int64)
            )
            slot += np.bincount(hour[day == d], minlength=24)
        acc = outcomes.get("partner_accepted")
        if acc is None:
            return
        acc = acc[idx]
        known = acc >= 0
        ref = outcomes.get("referred_partner")
        if ref is not None:
            same = np.array([v is None or v == pid for v in ref[idx]], dtype=bool)
            t.unmatched += int((known & ~same).sum())
            known &= same
        if not known.any():
            return
        k = np.flatnonzero(known)
        accepted = acc[k] == 1
        funded_col = outcomes.get("partner_funded")
        funded = funded_col[idx][k] == 1 if funded_col is not None else accepted
        famount_col = outcomes.get("funded_amount")
        famount = np.nan_to_num(famount_col[idx][k]) if famount_col is not None else amount[k]
        famount = np.where(funded, famount, 0.0)
        dcol = outcomes.get("defaulted")
        pd_k = out.pd[idx][k]
        if dcol is not None:
            dv = dcol[idx][k]
            performing = np.where(dv == 1, 0.0, np.where(dv == 0, 1.0, 1.0 - pd_k))
        else:
            performing = 1.0 - pd_k
        tr = p.terms
        t.with_outcome += len(k)
        t.accepted += int(accepted.sum())
        t.funded += int(funded.sum())
        t.funded_amount += int(famount.sum())
        t.realised_fee += float(
            len(k) * tr.fee_per_referral
            + accepted.sum() * tr.fee_per_accepted
            + funded.sum() * tr.fee_per_funded
        )
        papr = eco.partner_apr(cols.max_apr[idx][k], p)
        t.realised_rev_share += float(
            np.sum(tr.rev_share * papr * eco.balance_years(famount, term[k]) * performing)
        )

    # ---- the summary ---------------------------------------------------------------

    def _promised(self) -> dict[str, Any]:
        mean, var = self.keep_promised
        half = 1.959963984540054 * math.sqrt(var)
        realised = int(round(self.keep_realised_profit))
        lo, hi = int(round(mean - half)), int(round(mean + half))
        return {
            "expected": int(round(mean)),
            "range95": [lo, hi],
            "came_true": lo <= realised <= hi,
        }

    def psi(self) -> float | None:
        """Population stability index of the PD versus the reference (None without one)."""
        if self.psi_edges is None or self.psi_actual.sum() == 0:
            return None
        a = self.psi_actual / self.psi_actual.sum()
        e = self.psi_expected
        eps = 1e-6
        a, e = np.maximum(a, eps), np.maximum(np.asarray(e), eps)
        return float(np.sum((a - e) * np.log(a / e)))

    def summary(self) -> dict[str, Any]:
        """The metrics as plain data (the body of ``summary.json``)."""
        n = int(self.counts.sum())

        def split(c: np.ndarray) -> dict[str, int]:
            return {LABELS[k]: int(c[k]) for k in range(4)}

        partners = self._partners_summary()
        keep = self.keep.to_dict()
        referral_value = sum(t.expected_value for t in self.partners.values())
        realised_ref = [
            p["realised_fee"] + p["realised_rev_share"]
            for p in partners.values()
            if p["realised_fee"] is not None
        ]
        return {
            "applications": n,
            "decisions": split(self.counts),
            "shares": {LABELS[k]: (int(self.counts[k]) / n if n else 0.0) for k in range(4)},
            "amounts": split(self.amounts),
            "keep_rate": int(self.counts[KEEP]) / n if n else 0.0,
            "by_channel": {ch: split(c) for ch, c in sorted(self.by_channel.items())},
            "by_hour": {f"{h:02d}": split(self.by_hour[h]) for h in range(24)},
            "kept": keep,
            "branched": self.branch.to_dict(),
            "expected_bad_rate": keep["expected_bad_rate"],
            "realised_bad_rate": keep["realised_bad_rate"],
            "expected_profit": {
                "keep": self.keep.value,
                "branch": self.branch.value,
                "referral_value": referral_value,
                "total": self.keep.value + self.branch.value + referral_value,
            },
            "realised_referral_value": sum(realised_ref) if realised_ref else None,
            # On the kept loans whose outcome the traffic has (``kept.with_outcome``).
            "realised_keep_profit": (
                int(round(self.keep_realised_profit)) if self.keep.known else None
            ),
            # Where it falls 95% of the time were every PD right (and its centre).
            "keep_profit_promised": self._promised() if self.keep.known else None,
            "calibration": self.calibration.table(),
            "partners": partners,
            "quota": self._quota(),
            "coverage_failures": self.coverage_failures,
            "declined": int(self.counts[DECLINE]),
            "degraded": self.degraded,
            "reason_counts": {
                c: int(self.reasons[i]) for i, c in enumerate(CODES) if self.reasons[i]
            },
            "pd_histogram": {
                "edges": PD_BINS.tolist(),
                **{k: v.tolist() for k, v in self.pd_hist.items()},
            },
            "psi": self.psi(),
            "timeline": {
                pid: {d: v.tolist() for d, v in sorted(days.items())}
                for pid, days in sorted(self.timeline.items())
            },
        }

    def _partners_summary(self) -> dict[str, dict[str, Any]]:
        """Per partner: referrals, their expected and (with outcomes) realised money."""
        return {
            pid: {
                "referred": t.referred,
                "amount": t.amount,
                "expected_value": t.expected_value,
                "expected_fee": int(round(t.expected_fee)),
                "expected_rev_share": int(round(t.expected_rev_share)),
                "with_outcome": t.with_outcome,
                "outcome_unmatched": t.unmatched,
                "accepted": t.accepted,
                "funded": t.funded,
                "funded_amount": t.funded_amount,
                "realised_fee": int(round(t.realised_fee)) if t.with_outcome else None,
                "realised_rev_share": int(round(t.realised_rev_share)) if t.with_outcome else None,
            }
            for pid, t in self.partners.items()
        }

    def _quota(self) -> dict[str, Any]:
        """Per bucket and cap: each window's use against the cap, and when it ran out."""
        out: dict[str, Any] = {}
        for bucket, caps in self.caps.items():
            name = bucket.strip("_")
            entry: dict[str, Any] = {}
            for cap in caps:
                used = self.usage.get(bucket, {}).get(cap.window, {})
                ran = self.ran_out.get(bucket, {}).get(cap.window, {})
                windows: list[dict[str, Any]] = []
                for key in sorted(set(used) | set(ran)):
                    c, a = used.get(key, [0, 0])
                    windows.append(
                        {
                            "window": window_label(cap.window, key),
                            "count": c,
                            "amount": a,
                            "count_utilisation": c / cap.count if cap.count else None,
                            "amount_utilisation": a / cap.amount if cap.amount else None,
                            "ran_out_at": ran.get(key),
                        }
                    )
                util = [
                    max(w["count_utilisation"] or 0.0, w["amount_utilisation"] or 0.0)
                    for w in windows
                ]
                entry[cap.window] = {
                    "cap_count": cap.count,
                    "cap_amount": cap.amount,
                    "windows_used": len(windows),
                    "windows_ran_out": sum(w["ran_out_at"] is not None for w in windows),
                    "max_utilisation": max(util) if util else 0.0,
                    "mean_utilisation": float(np.mean(util)) if util else 0.0,
                    # Hours are many: their detail is left out, the stats above stay.
                    **({"by_window": windows} if cap.window != "hour" else {}),
                }
            out[name] = entry
        return out


__all__ = ["Metrics", "PD_BINS", "iso", "window_label", "WINDOWS"]
