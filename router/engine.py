"""The decision pipeline: :class:`Router`.

``decide`` / ``decide_batch`` / ``decide_columns`` all run the same two steps:
:func:`router.assess.assess` (vectorised: rules, scores, economics, partner eligibility)
then :meth:`Router._allocate` (sequential, in arrival order: idempotency, the funder's
budgets, partner ranking, atomic quota reservation with the ledger entry, the decision).
The core reads no clock and imports no Redis: the store and, optionally, a clock are
passed in.
"""

from __future__ import annotations

import hashlib
from typing import Any, Callable, Sequence

import numpy as np

from router import reasons
from router.assess import Assessment, assess
from router.columns import AppColumns, from_applications
from router.config import Cap, Strategy
from router.economics import to_minor
from router.identity import Hasher
from router.messages import Application, Branch, CommercialTerms, Decision, Decline, Keep, \
    ReferralEntry, Refer
from router.partners import SmoothWeightedRotation, waterfall_order
from router.scoring import Scorer, load_scorer
from router.store import (CAP_HIT, DEDUPED, GRANTED, Bucket, CapLimit, MemoryQuotaStore,
                          QuotaStore, cap_full, cap_index)

KEEP_BUCKET = "__keep__"
BRANCH_BUCKET = "__branch__"
_BIT = reasons.BIT


def _bucket(bid: str, caps: Sequence[Cap], tz: str, dedupe_days: int = 0) -> Bucket:
    return Bucket(id=bid, caps=tuple(CapLimit(c.window, c.count, c.amount) for c in caps),
                  timezone=tz, dedupe_ms=dedupe_days * 86_400_000)


def _hex_id(prefix: str, *parts: str) -> str:
    return prefix + hashlib.blake2b("\x1f".join(parts).encode(), digest_size=10).hexdigest()


class Router:
    """Decides keep / branch / refer / decline for applications.

    ``store`` defaults to a fresh :class:`MemoryQuotaStore`. ``scorers`` maps the
    strategy's scorer names to scorer objects (default: loaded from the strategy's files).
    ``clock`` — a callable returning epoch milliseconds — makes quota windows follow the
    caller's clock instead of each application's ``received_at`` (a live service that
    does not trust client timestamps); replay leaves it unset.
    ``on_cap`` is called as ``on_cap(bucket_id, window, window_key, event_ms)`` whenever a
    reservation is refused by a cap.
    """

    def __init__(self, strategy: Strategy, store: QuotaStore | None = None, *,
                 clock: Callable[[], int] | None = None,
                 scorers: dict[str, Scorer] | None = None, hasher: Hasher | None = None,
                 on_cap: Callable[[str, str, int, int], None] | None = None):
        self.strategy = strategy
        self.store = store if store is not None else MemoryQuotaStore(
            idempotency_ttl_ms=strategy.idempotency_ttl_hours * 3600_000)
        self.clock = clock
        self.on_cap = on_cap
        self.hasher = hasher or Hasher.from_config(strategy.identity)
        if scorers is None:
            scorers = {name: load_scorer(ref.kind, ref.path, strategy.base_dir)
                       for name, ref in strategy.scorers.items()}
        self.scorers = scorers
        s = strategy
        self._keep_bucket = _bucket(KEEP_BUCKET, s.primary.caps, s.timezone)
        self._branch_bucket = _bucket(BRANCH_BUCKET, s.branch.caps if s.branch else [], s.timezone)
        self._partner_buckets = [_bucket(p.id, p.caps, p.timezone, p.dedupe_days)
                                 for p in s.partners]
        self._employers = [frozenset(self.hasher.token(name, "employer")
                                     for name in p.employer_names) for p in s.partners]
        self._waterfall = waterfall_order(s.partners)
        rank = [0] * len(s.partners)
        for r, j in enumerate(self._waterfall):
            rank[j] = r
        self._rank = rank
        self._rotation = SmoothWeightedRotation([p.weight for p in s.partners], rank)
        # (bucket, cap index, window key) whose count cap was reported full.
        self._full: set[tuple[str, int, int]] = set()

    # ---- public API ------------------------------------------------------------------

    def decide(self, app: Application) -> Decision:
        """Decide one application."""
        return self.decide_batch([app])[0]

    def decide_batch(self, apps: Sequence[Application]) -> list[Decision]:
        """Decide several applications: scored together, reserved in the given order."""
        if not apps:
            return []
        return self.decide_columns(from_applications(apps, self.hasher))

    async def adecide(self, app: Application) -> Decision:
        """Async variant of :meth:`decide` for event-loop callers (the core never blocks on I/O
        with the in-memory store; a network store brings its own async client)."""
        return self.decide(app)

    def decide_columns(self, cols: AppColumns) -> list[Decision]:
        """Decide a column batch (the replay path). Returns one decision per row."""
        if self.clock is not None:
            # The caller's clock, read once per application, replaces event time everywhere.
            cols.event_ms = np.array([self.clock() for _ in range(len(cols))], dtype=np.int64)
        a = assess(cols, self.strategy, self.scorers, self._employers)
        return self._allocate(cols, a)

    # ---- sequential allocation --------------------------------------------------------

    def _reserve(self, bucket: Bucket, keys: tuple[int, ...], amount: int,
                 applicant: str | None, t: int, entry: ReferralEntry | None = None) -> int:
        full = self._full
        r = -1
        if full:
            for k in range(len(keys)):
                if (bucket.id, k, keys[k]) in full:
                    r = CAP_HIT + 2 * k + 1  # known full for this window: no store call
                    break
        if r < 0:
            r = self.store.try_reserve(bucket, keys, amount, applicant, t, entry)
        if r >= CAP_HIT:
            k = cap_index(r)
            if cap_full(r):
                if len(full) > 10_000:
                    full.clear()  # old windows; correctness never depends on this cache
                full.add((bucket.id, k, keys[k]))
            if self.on_cap is not None:
                self.on_cap(bucket.id, bucket.caps[k].window, keys[k], t)
        return r

    def _allocate(self, cols: AppColumns, a: Assessment) -> list[Decision]:
        s = self.strategy
        version = s.version
        store = self.store
        partners = s.partners
        method = s.routing.method
        out: list[Decision] = []
        ids, fps = cols.application_id, cols.fingerprint
        event_ms = cols.event_ms.tolist()
        amounts = cols.requested_amount.tolist()
        terms = cols.term_months.tolist()
        bits_all = a.bits.tolist()
        dead, keep_ok, branch_ok = a.dead.tolist(), a.keep_ok.tolist(), a.branch_ok.tolist()
        pds = a.pd.tolist()
        # Eligible partners per row as a bitmask; each distinct mask decoded once.
        if partners:
            masks = (a.eligible.astype(np.int64) << np.arange(len(partners))).sum(axis=1).tolist()
        else:
            masks = [0] * len(ids)
        decode: dict[int, list[int]] = {0: []}
        key_rows = _KeyRows(a)
        for i, app_id in enumerate(ids):
            fp = fps[i]
            prev = store.recall(app_id, fp)
            if prev is not None:
                out.append(prev)
                continue
            t = event_ms[i]
            bits = bits_all[i]
            amount = amounts[i]
            did = _hex_id("d_", version, app_id)
            mask = masks[i]
            common = dict(decision_id=did, application_id=app_id, strategy_version=version)
            decision: Decision | None = None
            if not dead[i]:
                if keep_ok[i]:
                    kb = self._keep_bucket
                    if self._reserve(kb, key_rows.get(kb)[i], amount, None, t) == GRANTED:
                        decision = Keep(**common, pd=pds[i], apr=float(a.keep_apr[i]),
                                        coverage_margin=float(a.keep_margin[i]),
                                        expected_profit=to_minor(float(a.keep_profit[i])),
                                        reasons=reasons.names(bits))
                    else:
                        bits |= _BIT["KEEP_BUDGET_EXHAUSTED"]
                if decision is None and branch_ok[i]:
                    bb = self._branch_bucket
                    if self._reserve(bb, key_rows.get(bb)[i], amount, None, t) == GRANTED:
                        decision = Branch(**common, pd=float(a.branch_pd[i]),
                                          apr=float(a.branch_apr[i]),
                                          coverage_margin=float(a.branch_margin[i]),
                                          expected_profit=to_minor(float(a.branch_profit[i])),
                                          reasons=reasons.names(bits))
                    else:
                        bits |= _BIT["BRANCH_BUDGET_EXHAUSTED"]
                if decision is None and mask:
                    eligible = decode.get(mask)
                    if eligible is None:
                        eligible = decode[mask] = [j for j in range(len(partners)) if mask >> j & 1]
                    decision, bits = self._refer(a, cols, i, eligible, method, common, bits, t,
                                                 amount, terms[i], pds[i], key_rows)
            if decision is None:
                decision = Decline(**common, pd=pds[i], apr=None,
                                   coverage_margin=float(a.keep_margin[i]),
                                   reasons=reasons.names(bits))
            store.remember(app_id, fp, decision, t)
            out.append(decision)
        return out

    def _refer(self, a: Assessment, cols: AppColumns, i: int, eligible: list[int], method: str,
               common: dict[str, Any], bits: int, t: int, amount: int, term: int,
               pd: float, key_rows: "_KeyRows") -> tuple[Decision | None, int]:
        if method == "waterfall":
            order = [j for j in self._waterfall if j in eligible]
        elif method == "best_value":
            evs = a.ev[i]
            order = sorted(eligible, key=lambda j: (-evs[j], self._rank[j]))
        else:
            order = self._rotation.order(eligible)
        applicant = cols.applicant[i]
        partners = self.strategy.partners
        referral_id = "r_" + common["decision_id"][2:]  # one referral per application
        for j in order:
            p = partners[j]
            ev = to_minor(float(a.ev[i, j]))
            entry = ReferralEntry(
                referral_id=referral_id,
                decision_id=common["decision_id"], application_id=common["application_id"],
                partner_id=p.id, event_time_ms=t, amount=amount, term_months=term,
                applicant_hash=applicant, terms=p.terms, expected_value=ev,
                strategy_version=common["strategy_version"])
            pb = self._partner_buckets[j]
            r = self._reserve(pb, key_rows.get(pb)[i], amount, applicant, t, entry)
            if r == GRANTED:
                if method == "weighted":
                    self._rotation.granted(j, eligible)
                return Refer(**common, pd=pd, apr=float(a.partner_apr[i, j]),
                             coverage_margin=float(a.keep_margin[i]), partner_id=p.id,
                             expected_value=ev, reasons=reasons.names(bits)), bits
            bits |= _BIT["PARTNER_DEDUPE"] if r == DEDUPED else _BIT["PARTNER_QUOTA_EXHAUSTED"]
        return None, bits


class _KeyRows:
    """Per-row window-key tuples of each bucket for one batch, built on first use."""

    def __init__(self, a: Assessment):
        self._zones = a.keys
        self._rows: dict[str, list[tuple[int, ...]]] = {}

    def get(self, bucket: Bucket) -> list[tuple[int, ...]]:
        rows = self._rows.get(bucket.id)
        if rows is None:
            zk = self._zones[bucket.timezone]
            cols = [zk[c.window].tolist() for c in bucket.caps]
            n = len(next(iter(zk.values())))
            rows = self._rows[bucket.id] = list(zip(*cols)) if cols else [()] * n
        return rows


__all__ = ["Router", "KEEP_BUCKET", "BRANCH_BUCKET", "CommercialTerms"]
