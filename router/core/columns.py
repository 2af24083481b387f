"""Columnar application batches: the form the decision core works on.

:class:`AppColumns` holds one array per field. It is built from validated
:class:`~router.core.messages.Application` objects (live path) or straight from an Arrow
record batch (replay path). The Arrow path validates with the constraints declared on
``Application`` itself — read through ``msgspec.inspect`` — so both paths accept and
reject exactly the same values without a second schema to keep in sync.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from router.core.errors import InputError
from router.core.fingerprint import (
    _MASK,
    _SEED_INT,
    _W,
    _mix,
    as_u64,
    combine,
    float_bits,
    hash_string_py,
    hash_strings,
    mix_py,
)
from router.core.identity import Hasher, Tokens
from router.core.messages import Application
from router.core.windows import window_keys

INT_FIELDS = (
    "age",
    "monthly_income",
    "bureau_score",
    "inquiries_3m",
    "open_loans",
    "worst_dpd_12m",
    "requested_amount",
    "term_months",
)
FLOAT_FIELDS = ("dti", "max_apr")


@dataclass(slots=True)
class Coded:
    """A low-cardinality column: ``values[codes[i]]`` is row i's value."""

    codes: np.ndarray
    values: list[Any]

    @classmethod
    def encode(cls, items: Sequence[Any]) -> Coded:
        """Dictionary-encode a sequence (first-seen order)."""
        if len(items) == 1:
            return cls(np.zeros(1, dtype=np.int64), [items[0]])
        index: dict[Any, int] = {}
        setd = index.setdefault
        codes = np.fromiter((setd(v, len(index)) for v in items), dtype=np.int64, count=len(items))
        return cls(codes, list(index))

    def map(self, fn) -> Coded:
        """The same codes over ``fn`` applied to each distinct value."""
        return Coded(self.codes, [fn(v) for v in self.values])

    def tolist(self) -> list[Any]:
        """Row values."""
        vals = self.values
        return [vals[c] for c in self.codes.tolist()]


@dataclass(slots=True)
class AppColumns:
    """A batch of applications, one array (or list) per field, in arrival order."""

    application_id: list[str]
    event_ms: np.ndarray
    channel: np.ndarray
    applicant: Sequence[str]  # keyed-hash tokens (a Tokens column from Arrow)
    age: np.ndarray
    monthly_income: np.ndarray
    bureau_score: np.ndarray
    inquiries_3m: np.ndarray
    open_loans: np.ndarray
    worst_dpd_12m: np.ndarray
    requested_amount: np.ndarray
    term_months: np.ndarray
    dti: np.ndarray
    max_apr: np.ndarray
    region: np.ndarray
    employer: Coded  # keyed-hash tokens (or None), dictionary-encoded
    consent: Coded  # canonical text: "none", "any" or "id1,id2"
    fraud_flag: np.ndarray
    fingerprint: list[int]
    #: ``channel`` and ``region`` dictionary-encoded (see :func:`coded_column`).
    coded: dict[str, Coded] = field(default_factory=dict)
    #: Application features a model reads (router/decide/features.py): name -> float64
    #: numbers, or an object array of text (None where a row has none).
    extra: dict[str, np.ndarray] = field(default_factory=dict)
    #: What was computed from these rows alone and may be asked again (a scorer's PDs:
    #: tuning replays the same cached batches once per candidate); never copied.
    memo: dict[Any, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.application_id)


def coded_column(cols: AppColumns, name: str) -> Coded:
    """A low-cardinality text column (``channel``, ``region``) dictionary-encoded: from
    the reader's Arrow dictionary when it made one, else encoded once and kept."""
    c = cols.coded.get(name)
    if c is None:
        c = cols.coded[name] = Coded.encode(getattr(cols, name).tolist())
    return c


def batch_window_keys(cols: AppColumns, tz: str) -> dict[str, np.ndarray]:
    """:func:`~router.core.windows.window_keys` of the batch's event times, kept in its
    memo (assessment and the replay's metrics both read them, every tuning candidate
    again); recomputed if the event times were replaced (a caller's clock)."""
    got = cols.memo.get(("window_keys", tz))
    if got is None or got[0] is not cols.event_ms:
        keys = window_keys(cols.event_ms, tz)
        for k in keys.values():
            k.flags.writeable = False
        got = cols.memo[("window_keys", tz)] = (cols.event_ms, keys)
    return got[1]


def consent_text(c: Any) -> str:
    """Canonical text of a consent value: "none", "any" or comma-joined partner ids."""
    if c is None or c == "":
        return "none"
    return c if isinstance(c, str) else ",".join(c)


def _hash_coded(c: Coded) -> np.ndarray:
    return (
        hash_strings([v or "" for v in c.values])[c.codes]
        if c.values
        else np.zeros(len(c.codes), dtype=np.uint64)
    )


@dataclass(slots=True)
class Row:
    """One application as Python scalars: the live path's form of one :class:`AppColumns` row
    (numpy's per-call overhead would dominate a single decision)."""

    application_id: str
    event_ms: int
    channel: str
    applicant: str
    age: int
    monthly_income: int
    bureau_score: int
    inquiries_3m: int
    open_loans: int
    worst_dpd_12m: int
    requested_amount: int
    term_months: int
    dti: float
    max_apr: float
    region: str
    employer: str | None  # keyed-hash token
    consent: str  # canonical text
    fraud_flag: bool
    fingerprint: int = 0
    #: The application's own features (``Application.features``), if any.
    features: dict[str, Any] | None = None


_LOW_CARD: dict[str, int] = {}


def _hash_low_card(value: str) -> int:
    """:func:`hash_string_py` memoised, for fields with few distinct values (channel,
    region, employer token, consent)."""
    h = _LOW_CARD.get(value)
    if h is None:
        if len(_LOW_CARD) > 50_000:
            _LOW_CARD.clear()
        h = _LOW_CARD[value] = hash_string_py(value)
    return h


def applicant_part(token: str) -> int:
    """The applicant's share of a fingerprint: a keyed-hash token is already uniformly
    random, so its first 64 bits serve as they are (any other text is hashed)."""
    try:
        return int(token[:16], 16) if len(token) >= 16 else hash_string_py(token)
    except ValueError:
        return hash_string_py(token)


#: Small bounded integers packed into one 64-bit word (bit offsets; the schema's bounds
#: keep each field inside its bits: age ≤ 120, score ≤ 900, inquiries and open loans
#: ≤ 500, worst DPD ≤ 3650, term ≤ 120, fraud flag 0/1).
_PACK = (
    ("age", 0),
    ("bureau_score", 7),
    ("inquiries_3m", 17),
    ("open_loans", 26),
    ("worst_dpd_12m", 35),
    ("term_months", 47),
    ("fraud_flag", 54),
)


_W0, _W1, _W2, _W3, _W4, _W5, _W6, _W7, _W8, _W9, _W10 = _W[:11]
_TEXT_PARTS: dict[tuple, int] = {}


def _text_part(channel: str, region: str, employer: str | None, consent: str) -> int:
    """The weighted sum of a row's four low-cardinality text hashes (the same terms
    :func:`combine` adds for them), memoised by value: live traffic repeats them."""
    key = (channel, region, employer, consent)
    v = _TEXT_PARTS.get(key)
    if v is None:
        if len(_TEXT_PARTS) > 50_000:
            _TEXT_PARTS.clear()
        v = _TEXT_PARTS[key] = (
            _W1 * _hash_low_card(channel)
            + _W8 * _hash_low_card(region)
            + _W9 * _hash_low_card(employer or "")
            + _W10 * _hash_low_card(consent or "")
        ) & _MASK
    return v


def row_fingerprint(r: Row) -> int:
    """The content hash of one row, bit-identical to :func:`_fingerprints` (same fields,
    same weighted sum: :func:`~router.core.fingerprint.combine` in plain Python)."""
    small = (
        r.age
        | r.bureau_score << 7
        | r.inquiries_3m << 17
        | r.open_loans << 26
        | r.worst_dpd_12m << 35
        | r.term_months << 47
        | int(bool(r.fraud_flag)) << 54
    )
    h = (
        _SEED_INT
        + _text_part(r.channel, r.region, r.employer, r.consent)
        + _W0 * (r.event_ms & _MASK)
        + _W2 * applicant_part(r.applicant)
        + _W3 * small
        + _W4 * (r.monthly_income & _MASK)
        + _W5 * (r.requested_amount & _MASK)
        + _W6 * float_bits(r.dti)
        + _W7 * float_bits(r.max_apr)
    )
    if r.features:  # (no term without features: every fingerprint before them is unchanged)
        h += _W11 * features_part(r.features)
    return mix_py(h & _MASK)


_W11, _W12 = _W[11], _W[12]
_TEXT = 0x5445585400000000  # (a text value and a number of the same bits differ)


def _feature_term(name_hash: int, value_hash: int) -> int:
    return mix_py((name_hash * _W12 + value_hash) & _MASK)


def features_part(features: dict[str, Any]) -> int:
    """An application's features as one 64-bit value: a sum over its (name, value) pairs,
    so the order they come in does not matter; a number counts by its float bits (3 and
    3.0 alike), text by its hash; an absent value (None) not at all."""
    total = 0
    for name, v in features.items():
        if v is None:
            continue
        vh = hash_string_py(v) ^ _TEXT if isinstance(v, str) else float_bits(float(v))
        total += _feature_term(_hash_low_card(name), vh)
    return total & _MASK


def _features_part_np(extra: dict[str, np.ndarray], n: int) -> np.ndarray:
    """:func:`features_part` of every row of a batch's feature columns (same bits)."""
    total = np.zeros(n, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for name, col in extra.items():
            nh = np.uint64(_hash_low_card(name))
            if col.dtype.kind == "f":
                present = ~np.isnan(col)
                vh = as_u64(np.where(present, col, 0.0))
            else:
                vals = col.tolist()
                present = np.array([v is not None for v in vals], dtype=bool)
                vh = np.array(
                    [
                        0
                        if v is None
                        else hash_string_py(v) ^ _TEXT
                        if isinstance(v, str)
                        else float_bits(float(v))
                        for v in vals
                    ],
                    dtype=np.uint64,
                )
            term = _mix(nh * np.uint64(_W12) + vh)
            total = total + np.where(present, term, np.uint64(0))
    return total


def row_of(cols: AppColumns, i: int = 0) -> Row:
    """Row ``i`` of a batch as scalars (its fingerprint included)."""
    fields: list[Any] = [
        cols.application_id[i],
        int(cols.event_ms[i]),
        str(cols.channel[i]),
        cols.applicant[i],
        *[int(getattr(cols, f)[i]) for f in INT_FIELDS],
        float(cols.dti[i]),
        float(cols.max_apr[i]),
        str(cols.region[i]),
        cols.employer.values[cols.employer.codes[i]],
        cols.consent.values[cols.consent.codes[i]],
        bool(cols.fraud_flag[i]),
        cols.fingerprint[i] if cols.fingerprint else 0,
        {k: _scalar(v[i]) for k, v in cols.extra.items()} if cols.extra else None,
    ]
    return Row(*fields)


def _scalar(v: Any) -> Any:
    """A feature value as Python: a float (None for NaN: a row that has none) or text."""
    if isinstance(v, np.floating):
        return None if np.isnan(v) else float(v)
    return v


def row_from_application(a: Application, hasher: Hasher, event_ms: int | None = None) -> Row:
    """The scalar row of one validated application, as :func:`from_applications` would
    build it (``event_ms`` overrides ``received_at``, for a caller's clock)."""
    r = Row(
        a.application_id,
        int(a.received_at.timestamp() * 1000) if event_ms is None else event_ms,
        a.channel,
        # (a validated application has a token or a national id)
        a.applicant_token
        if a.applicant_token is not None
        else hasher.token(cast(str, a.national_id)),
        a.age,
        a.monthly_income,
        a.bureau_score,
        a.inquiries_3m,
        a.open_loans,
        a.worst_dpd_12m,
        a.requested_amount,
        a.term_months,
        float(a.dti),
        float(a.max_apr),
        a.region,
        hasher.cached_token(a.employer, "employer") if a.employer else None,
        consent_text(a.consent),
        a.fraud_flag,
        0,
        a.features or None,
    )
    r.fingerprint = row_fingerprint(r)
    return r


def _fingerprints_py(cols: AppColumns) -> list[int]:
    """:func:`_fingerprints` in plain Python (same bits) for a handful of rows."""
    return [row_fingerprint(row_of(cols, i)) for i in range(len(cols))]


def _fingerprints(cols: AppColumns) -> list[int]:
    """A content hash per row over every decision-relevant field (idempotency check)."""
    n = len(cols)
    if n <= 8:
        return _fingerprints_py(cols)
    with np.errstate(over="ignore"):
        # The application id itself is the store's key, so it is not hashed in.
        small = np.zeros(n, dtype=np.uint64)
        for name, shift in _PACK:
            small |= getattr(cols, name).astype(np.uint64) << np.uint64(shift)
        parts = [
            as_u64(cols.event_ms),
            _hash_coded(coded_column(cols, "channel")),
            cols.applicant.hi.view(np.uint64)
            if isinstance(cols.applicant, Tokens)
            else np.fromiter(map(applicant_part, cols.applicant), dtype=np.uint64, count=n),
            small,
            as_u64(cols.monthly_income),
            as_u64(cols.requested_amount),
            as_u64(cols.dti),
            as_u64(cols.max_apr),
            _hash_coded(coded_column(cols, "region")),
            _hash_coded(cols.employer),
            _hash_coded(cols.consent),
        ]
        if cols.extra:
            parts.append(_features_part_np(cols.extra, n))
        return combine(parts, n).tolist()


def _assemble(
    py: dict[str, Any], coded: dict[str, Coded] | None = None, extra: dict | None = None
) -> AppColumns:
    numbers: dict[str, Any] = {f: np.asarray(py[f], dtype=np.int64) for f in INT_FIELDS}
    numbers |= {f: np.asarray(py[f], dtype=np.float64) for f in FLOAT_FIELDS}
    cols = AppColumns(
        application_id=py["application_id"],
        event_ms=np.asarray(py["event_ms"], dtype=np.int64),
        channel=np.asarray(py["channel"], dtype=str),
        applicant=py["applicant"],
        **numbers,
        region=np.asarray(py["region"], dtype=str),
        employer=py["employer"],
        consent=py["consent"],
        fraud_flag=np.asarray(py["fraud_flag"], dtype=bool),
        fingerprint=[],
        coded=coded or {},
        extra=extra or {},
    )
    cols.fingerprint = _fingerprints(cols)
    return cols


def from_applications(apps: Sequence[Application], hasher: Hasher) -> AppColumns:
    """Columns from validated Application objects (raw identifiers hashed here)."""
    tok = hasher.token
    py: dict[str, Any] = {
        "application_id": [a.application_id for a in apps],
        "event_ms": [int(a.received_at.timestamp() * 1000) for a in apps],
        "channel": [a.channel for a in apps],
        "applicant": [
            # (a validated application has a token or a national id)
            a.applicant_token if a.applicant_token is not None else tok(cast(str, a.national_id))
            for a in apps
        ],
        "region": [a.region for a in apps],
        "employer": Coded.encode([a.employer for a in apps]).map(
            lambda e: hasher.cached_token(e, "employer") if e else None
        ),
        "consent": Coded.encode([consent_text(a.consent) for a in apps]),
        "fraud_flag": [a.fraud_flag for a in apps],
    }
    for f in INT_FIELDS + FLOAT_FIELDS:
        py[f] = [getattr(a, f) for a in apps]
    return _assemble(py, extra=_features_of(apps))


def _features_of(apps: Sequence[Application]) -> dict[str, np.ndarray]:
    """The applications' ``features`` maps as columns: float64 where every value given is
    a number (NaN where a row has none), else objects (None where a row has none)."""
    names = dict.fromkeys(k for a in apps if a.features for k in a.features)
    out: dict[str, np.ndarray] = {}
    for name in names:
        vals = [a.features.get(name) for a in apps]
        if all(v is None or isinstance(v, float) for v in vals):
            out[name] = np.array([np.nan if v is None else v for v in vals], dtype=np.float64)
        else:
            out[name] = np.array(vals, dtype=object)
    return out


# ---- Arrow path -------------------------------------------------------------------


def _field_constraints() -> dict[str, Any]:
    info = msgspec.inspect.type_info(Application)
    assert isinstance(info, msgspec.inspect.StructType)
    out = {}
    for f in info.fields:
        t = f.type
        if isinstance(t, msgspec.inspect.UnionType):
            t = next((x for x in t.types if not isinstance(x, msgspec.inspect.NoneType)), t)
        out[f.name] = (t, f.required)
    return out


_CONSTRAINTS = _field_constraints()


def _bad(name: str, row: int, value: Any, why: str) -> InputError:
    return InputError(f"field `{name}`: {why} (value: {value!r})", field=name, row=row)


def _check_numeric(name: str, arr: np.ndarray, offset: int) -> None:
    t, _ = _CONSTRAINTS[name]
    checks = (
        ("ge", np.less, ">="),
        ("gt", np.less_equal, ">"),
        ("le", np.greater, "<="),
        ("lt", np.greater_equal, "<"),
    )
    for attr, fails, sym in checks:
        bound = getattr(t, attr, None)
        if bound is None:
            continue
        bad = np.flatnonzero(fails(arr, bound))
        if len(bad):
            i = int(bad[0])
            raise _bad(name, offset + i, arr[i].item(), f"expected {sym} {bound}")
    if arr.dtype.kind == "f":
        bad = np.flatnonzero(~np.isfinite(arr))
        if len(bad):
            raise _bad(name, offset + int(bad[0]), arr[bad[0]].item(), "not a finite number")


def _check_pattern(name: str, col: pa.Array, offset: int) -> None:
    t, _ = _CONSTRAINTS[name]
    pattern = getattr(t, "pattern", None)
    if pattern:
        ok = pc.match_substring_regex(col, pattern=pattern)
        ok = pc.fill_null(ok, True)
        if not pc.all(ok).as_py():
            i = int(np.flatnonzero(~ok.to_numpy(zero_copy_only=False))[0])
            raise _bad(name, offset + i, col[i].as_py(), f"does not match {pattern}")
    max_len = getattr(t, "max_length", None)
    if max_len is not None:
        lens = pc.fill_null(pc.utf8_length(col), 0).to_numpy()
        bad = np.flatnonzero(lens > max_len)
        if len(bad):
            raise _bad(
                name, offset + int(bad[0]), col[int(bad[0])].as_py(), f"longer than {max_len}"
            )


def _required(batch: pa.RecordBatch, name: str, offset: int) -> pa.Array:
    idx = batch.schema.get_field_index(name)
    if idx < 0:
        raise InputError(f"missing column `{name}`", field=name)
    col = batch.column(idx)
    if col.null_count:
        i = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
        raise _bad(name, offset + i, None, "required field is null")
    return col


def _coded(batch: pa.RecordBatch, name: str, n: int) -> Coded:
    """Dictionary-encode a string column in Arrow (all null when the column is absent)."""
    if name not in batch.schema.names:
        return Coded(np.zeros(n, dtype=np.int64), [None])
    enc = pc.dictionary_encode(batch.column(name), null_encoding="encode")
    return Coded(
        enc.indices.to_numpy(zero_copy_only=False).astype(np.int64), enc.dictionary.to_pylist()
    )


def from_arrow(
    batch: pa.RecordBatch, hasher: Hasher, offset: int = 0, *, checked: bool = False
) -> AppColumns:
    """Columns from an Arrow batch with the generator's schema, validated vectorised.

    ``offset`` is the batch's first row number in the file (for error messages).
    ``checked=True`` skips the value checks for a batch that
    :func:`router.ingest.validate.validate` has already passed (the same constraints).
    """
    py: dict[str, Any] = {}
    coded: dict[str, Coded] = {}
    names = set(batch.schema.names)
    for f in ("application_id", "channel", "region"):
        col = _required(batch, f, offset)
        if not checked:
            _check_pattern(f, col, offset)
        if f == "application_id":
            py[f] = col.to_pylist()
        else:
            # Few distinct values: a fixed-width array built from the dictionary, not a
            # Python string per row; the encoding is kept for whoever needs codes.
            enc = pc.dictionary_encode(col)
            coded[f] = Coded(
                enc.indices.to_numpy(zero_copy_only=False).astype(np.int64),
                enc.dictionary.to_pylist(),
            )
            py[f] = np.asarray(coded[f].values, dtype=str)[coded[f].codes]
    ts = _required(batch, "received_at", offset)
    if not pa.types.is_timestamp(ts.type) or ts.type.tz is None:
        raise InputError(
            f"field `received_at`: expected a time-zone-aware timestamp, got {ts.type}",
            field="received_at",
        )
    py["event_ms"] = pc.cast(ts, pa.timestamp("ms", tz="UTC")).cast(pa.int64()).to_numpy()
    for f in INT_FIELDS + FLOAT_FIELDS:
        arr = _required(batch, f, offset).to_numpy(zero_copy_only=False)
        if not checked:
            _check_numeric(f, arr, offset)
        py[f] = arr
    n = batch.num_rows
    py["applicant"] = _applicants(batch, hasher, offset)
    py["employer"] = _coded(batch, "employer", n).map(
        lambda e: hasher.cached_token(e, "employer") if e else None
    )
    py["consent"] = _coded(batch, "consent", n).map(consent_text)
    py["fraud_flag"] = (
        batch.column("fraud_flag").to_numpy(zero_copy_only=False)
        if "fraud_flag" in names
        else np.zeros(n, dtype=bool)
    )
    return _assemble(py, coded, _extra_columns(batch))


def _applicants(batch: pa.RecordBatch, hasher: Hasher, offset: int) -> list | Tokens:
    """Each row's applicant token: given, or the keyed hash of its national id (exactly
    one of the two per row)."""
    n, names = batch.num_rows, set(batch.schema.names)
    tok_col = (
        batch.column("applicant_token") if "applicant_token" in names else pa.nulls(n, pa.string())
    )
    raw_col = batch.column("national_id") if "national_id" in names else pa.nulls(n, pa.string())
    both_or_neither = pc.equal(pc.is_null(tok_col), pc.is_null(raw_col)).to_numpy(
        zero_copy_only=False
    )
    if both_or_neither.any():
        i = int(np.flatnonzero(both_or_neither)[0])
        raise _bad(
            "applicant_token",
            offset + i,
            tok_col[i].as_py(),
            "exactly one of `applicant_token` and `national_id` must be set",
        )
    if raw_col.null_count == n:
        return tok_col.to_pylist()
    if tok_col.null_count == n:
        return hasher.column_tokens(raw_col)
    raws = raw_col.to_pylist()
    return [t if t is not None else hasher.token(r) for t, r in zip(tok_col.to_pylist(), raws)]


def _extra_columns(batch: pa.RecordBatch) -> dict[str, np.ndarray]:
    """Columns of the batch that are not application fields: application features
    (numbers as float64 with NaN for nulls, anything else as text with None)."""
    out: dict[str, np.ndarray] = {}
    for name, col in zip(batch.schema.names, batch.columns):
        if name in _CONSTRAINTS:
            continue
        if pa.types.is_integer(col.type) or pa.types.is_floating(col.type):
            out[name] = pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False)
        else:
            out[name] = np.array(pc.cast(col, pa.string()).to_pylist(), dtype=object)
    return out


def take(cols: AppColumns, idx: np.ndarray) -> AppColumns:
    """Rows ``idx`` of a batch, in that order."""
    il = idx.tolist()
    out: dict[str, Any] = {}
    for name in AppColumns.__slots__:
        v = getattr(cols, name)
        if isinstance(v, Coded):
            out[name] = Coded(v.codes[idx], v.values)
        elif isinstance(v, Tokens):
            out[name] = v.take(idx)
        elif name == "coded":
            out[name] = {k: Coded(c.codes[idx], c.values) for k, c in v.items()}
        elif name == "extra":
            out[name] = {k: c[idx] for k, c in v.items()}
        elif name == "memo":
            out[name] = {}
        else:
            out[name] = v[idx] if isinstance(v, np.ndarray) else [v[i] for i in il]
    return AppColumns(**out)
