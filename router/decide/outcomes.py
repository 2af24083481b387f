"""Decisions of a batch in columnar form, and their conversion to Decision messages.

The allocation step fills :class:`Outcomes` (one array per field); replay writes and
aggregates those columns directly, the embedded API turns rows into
:class:`~router.core.messages.Decision` objects with :func:`to_decisions`. A decision is
remembered for idempotency as a compact :data:`Record` tuple, from which the same
Decision is rebuilt.
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, SupportsFloat

import numpy as np

from router.core import reasons
from router.core.messages import Branch, Decision, Decline, Keep, Refer

if TYPE_CHECKING:
    from router.decide.assess import Assessment

KEEP, BRANCH, REFER, DECLINE = 0, 1, 2, 3
LABELS = ("keep", "branch", "refer", "decline")

#: The idempotency record of one decision, packed as bytes (not a tuple: bytes are not
#: tracked by Python's cycle collector, and a day of records stays compact).
RECORD_DTYPE = np.dtype(
    [
        ("kind", "i1"),
        ("bits", "<u8"),
        ("value", "<i8"),
        ("apr", "<f8"),
        ("margin", "<f8"),
        ("pd", "<f8"),
        ("partner", "S32"),
        ("end", "u1"),
    ]
)  # non-zero last byte: numpy keeps trailing NULs


_RECORD = struct.Struct("<bQqddd32sB")

#: The funder's own budgets as store buckets (partners' buckets are their ids).
KEEP_BUCKET = "__keep__"
BRANCH_BUCKET = "__branch__"


def record_bucket(record: bytes) -> str | None:
    """The store bucket whose grant a decision record stands for (None: a decline)."""
    kind = record[0]
    if kind == KEEP:
        return KEEP_BUCKET
    if kind == BRANCH:
        return BRANCH_BUCKET
    if kind == REFER:
        return record[41:73].rstrip(b"\0").decode()
    return None


assert _RECORD.size == RECORD_DTYPE.itemsize


def pack_record(
    kind: int,
    bits: int,
    value: SupportsFloat,
    apr: SupportsFloat,
    margin: SupportsFloat,
    pd: SupportsFloat,
    partner: str,
) -> bytes:
    """One record, byte-identical to a row of :meth:`Outcomes.records` (value rounded half
    to even, as the columns are)."""
    return _RECORD.pack(
        kind,
        bits,
        int(round(float(value))),
        float(apr),
        float(margin),
        float(pd),
        partner.encode(),
        1,
    )


@dataclass(slots=True)
class Outcomes:
    """One entry per application of a batch."""

    kind: np.ndarray  # int8: KEEP / BRANCH / REFER / DECLINE
    partner: list[str]  # partner id for REFER, "" otherwise
    bits: np.ndarray  # uint64 reason bits
    value: np.ndarray  # int64: expected profit (keep/branch) or referral value (refer), 0 else
    apr: np.ndarray  # float64, NaN for decline
    margin: np.ndarray  # float64 coverage margin (NaN when unknown)
    pd: np.ndarray  # float64
    degraded: np.ndarray  # bool: decided without the quota store

    def records(self) -> list[bytes]:
        """Every row's idempotency record (see :data:`RECORD_DTYPE`)."""
        if len(self.kind) == 1:  # one live decision: struct beats a structured array
            return [
                pack_record(
                    int(self.kind[0]),
                    int(self.bits[0]),
                    float(self.value[0]),
                    float(self.apr[0]),
                    float(self.margin[0]),
                    float(self.pd[0]),
                    self.partner[0],
                )
            ]
        return self.record_array().view(f"S{RECORD_DTYPE.itemsize}").tolist()

    def record_array(self, rows: np.ndarray | None = None) -> np.ndarray:
        """Every row's record (or those of ``rows``) as one :data:`RECORD_DTYPE` array
        (row ``i``'s bytes are ``record_array()[i].tobytes()``)."""
        every: slice | np.ndarray = slice(None)
        partner = self.partner
        if rows is not None:
            every, partner = rows, [self.partner[i] for i in rows.tolist()]
        rec = np.empty(len(self.kind[every]), dtype=RECORD_DTYPE)
        rec["kind"], rec["bits"] = self.kind[every], self.bits[every]
        rec["value"], rec["apr"] = self.value[every], self.apr[every]
        rec["margin"], rec["pd"] = self.margin[every], self.pd[every]
        rec["partner"] = np.asarray(partner, dtype="S32")
        rec["end"] = 1
        return rec

    def set_record(self, i: int, record: bytes) -> None:
        """Overwrite row ``i`` with a remembered record."""
        r = np.frombuffer(record, dtype=RECORD_DTYPE)[0]
        self.kind[i], self.bits[i], self.value[i] = r["kind"], r["bits"], r["value"]
        self.apr[i], self.margin[i], self.pd[i] = r["apr"], r["margin"], r["pd"]
        self.partner[i] = r["partner"].decode()
        self.degraded[i] = False


_LAST_ID: tuple[str, str, str] = ("", "", "")


def decision_id(version: str, application_id: str) -> str:
    """Deterministic decision id: the same strategy and application give the same id."""
    global _LAST_ID
    v, a, did = _LAST_ID  # one entry: a referral asks twice (ledger entry, then decision)
    if a == application_id and v == version:
        return did
    digest = hashlib.blake2b(f"{version}\x1f{application_id}".encode(), digest_size=10)
    did = "d_" + digest.hexdigest()
    _LAST_ID = (version, application_id, did)
    return did


def _opt(x: float) -> float | None:
    return None if math.isnan(x) else x


def to_decisions(out: Outcomes, application_ids: Sequence[str], version: str) -> list[Decision]:
    """Decision messages for every row."""
    result: list[Decision] = []
    kinds, bits, values = out.kind.tolist(), out.bits.tolist(), out.value.tolist()
    aprs, margins, pds = out.apr.tolist(), out.margin.tolist(), out.pd.tolist()
    for i, app_id in enumerate(application_ids):
        common = dict(
            decision_id=decision_id(version, app_id),
            application_id=app_id,
            strategy_version=version,
            pd=pds[i],
            apr=_opt(aprs[i]),
            coverage_margin=_opt(margins[i]),
            reasons=reasons.names(bits[i]),
            degraded=bool(out.degraded[i]),
        )
        k = kinds[i]
        if k == KEEP:
            result.append(Keep(**common, expected_profit=values[i]))
        elif k == BRANCH:
            result.append(Branch(**common, expected_profit=values[i]))
        elif k == REFER:
            result.append(Refer(**common, partner_id=out.partner[i], expected_value=values[i]))
        else:
            result.append(Decline(**common))
    return result


def decision_from_record(
    record: bytes, application_id: str, version: str, degraded: bool = False
) -> Decision:
    """The Decision message a record stands for (as :func:`to_decisions` builds it)."""
    kind, bits, value, apr, margin, pd, partner, _ = _RECORD.unpack(record)
    did = decision_id(version, application_id)
    apr = None if apr != apr else apr  # NaN: not applicable
    margin = None if margin != margin else margin
    names = reasons.names(bits)
    if kind == REFER:
        return Refer(
            decision_id=did,
            application_id=application_id,
            strategy_version=version,
            pd=pd,
            apr=apr,
            coverage_margin=margin,
            reasons=names,
            degraded=degraded,
            partner_id=partner.rstrip(b"\0").decode(),
            expected_value=value,
        )
    if kind == DECLINE:
        return Decline(
            decision_id=did,
            application_id=application_id,
            strategy_version=version,
            pd=pd,
            apr=apr,
            coverage_margin=margin,
            reasons=names,
            degraded=degraded,
        )
    return (Keep if kind == KEEP else Branch)(
        decision_id=did,
        application_id=application_id,
        strategy_version=version,
        pd=pd,
        apr=apr,
        coverage_margin=margin,
        reasons=names,
        degraded=degraded,
        expected_profit=value,
    )


def reason_strings(bits: np.ndarray, sep: str = "|") -> list[str]:
    """Reason codes joined per row (each distinct bit pattern decoded once)."""
    uniq, inv = np.unique(bits, return_inverse=True)
    table = [sep.join(reasons.names(int(b))) for b in uniq.tolist()]
    return [table[k] for k in inv.tolist()]


def fill_outcomes(
    a: Assessment,
    kind: np.ndarray,
    chosen: Sequence[int] | np.ndarray,
    bits: np.ndarray,
    partner_ids: list[str],
    degraded: np.ndarray,
) -> Outcomes:
    """Vectorised outcome columns from the chosen paths (``chosen``: the partner index
    of each row, -1 for none)."""
    n = len(kind)
    if n == 1:
        return _fill_one(a, int(kind[0]), int(chosen[0]), bits, partner_ids, degraded)
    is_keep, is_branch, is_refer = kind == KEEP, kind == BRANCH, kind == REFER
    ch = np.asarray(chosen, dtype=np.int64)
    apr = np.full(n, np.nan)
    value = np.zeros(n)
    pd = a.pd.copy()
    margin = a.keep_margin.copy()
    apr[is_keep] = a.keep_apr[is_keep]
    value[is_keep] = a.keep_profit[is_keep]
    apr[is_branch] = a.branch_apr[is_branch]
    value[is_branch] = a.branch_profit[is_branch]
    pd[is_branch] = a.branch_pd[is_branch]
    margin[is_branch] = a.branch_margin[is_branch]
    if a.ev.shape[1]:
        r = np.flatnonzero(is_refer)
        apr[r] = a.partner_apr[r, ch[r]]
        value[r] = a.ev[r, ch[r]]
    # (-1, no partner, indexes the "" put last)
    partner = np.array([*partner_ids, ""], dtype=object)[ch].tolist()
    return Outcomes(
        kind=kind,
        partner=partner,
        bits=bits,
        value=np.rint(value).astype(np.int64),
        apr=apr,
        margin=margin,
        pd=pd,
        degraded=degraded,
    )


def _fill_one(
    a: Assessment, kind: int, j: int, bits: np.ndarray, partner_ids: list[str], degraded: np.ndarray
) -> Outcomes:
    """:func:`fill_outcomes` for one row, on scalars (same values)."""
    pd, margin, apr, value = float(a.pd[0]), float(a.keep_margin[0]), float("nan"), 0.0
    if kind == KEEP:
        apr, value = float(a.keep_apr[0]), float(a.keep_profit[0])
    elif kind == BRANCH:
        apr, value = float(a.branch_apr[0]), float(a.branch_profit[0])
        pd, margin = float(a.branch_pd[0]), float(a.branch_margin[0])
    elif kind == REFER:
        apr, value = float(a.partner_apr[0, j]), float(a.ev[0, j])
    return Outcomes(
        kind=np.array([kind], dtype=np.int8),
        partner=[partner_ids[j] if kind == REFER else ""],
        bits=bits,
        value=np.rint(np.array([value])).astype(np.int64),
        apr=np.array([apr]),
        margin=np.array([margin]),
        pd=np.array([pd]),
        degraded=degraded,
    )
