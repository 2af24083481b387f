"""Row-level validation of historical traffic: bad rows become rejects, the run goes on.

A source batch (Arrow, from Parquet or CSV) is renamed by the column mapping, then every
field of :class:`~router.core.messages.Application` is coerced to its type and checked against
the constraints declared on the type itself (read through ``msgspec.inspect``, as
:mod:`router.core.columns` does): text columns are parsed (a CSV is read as text, so one bad
cell rejects its row instead of failing the file), numbers are range-checked, identifiers
pattern-checked, consent checked against the partner book. Each bad row is reported once,
with its first problem; the good rows go on to the decision core.

Outcome columns (:data:`OUTCOME_FIELDS`) are optional and checked the same way.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from router.core.errors import TrafficError
from router.core.messages import Application
from router.core.redact import mask, shown

#: Outcome columns a historical file may carry (all optional): whether the loan defaulted
#: within its term, and for a referred application the partner's answer and funded amount
#: (``referred_partner``: which partner those results are from, when known).
OUTCOME_FIELDS: dict[str, pa.DataType] = {
    "defaulted": pa.bool_(),
    "partner_accepted": pa.bool_(),
    "partner_funded": pa.bool_(),
    "funded_amount": pa.int64(),
    "referred_partner": pa.string(),
}

#: A whole number, also written with a zero fraction (``316667.0``, as spreadsheets and data
#: frames write integer columns that once held a null): the same value a Parquet float
#: column with whole values is accepted with.
_INT_RE = r"^\s*[+-]?\d+(\.0*)?\s*$"
_FLOAT_RE = r"^\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*$"
_TIME_RE = r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:?\d{2})$"
_TRUE = {"true", "1", "yes", "t", "y"}
_FALSE = {"false", "0", "no", "f", "n"}


@dataclass(frozen=True)
class Reject:
    """One rejected row: its 1-based number in the file, the field and why."""

    row: int
    field: str
    reason: str
    value: Any = None
    #: The row's other problems, (field, reason, value) each: a row is reported once, with
    #: everything wrong with it.
    more: tuple[tuple[str, str, Any], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (raw identifiers are never included)."""
        out = {
            "row": self.row,
            "field": self.field,
            "reason": mask(self.reason),  # (a reason may quote the value, e.g. a partner id)
            "value": _shown(self.field, self.value),
        }
        if self.more:
            out["problems"] = [
                {
                    "field": self.field,
                    "reason": mask(self.reason),
                    "value": _shown(self.field, self.value),
                }
            ] + [{"field": f, "reason": mask(r), "value": _shown(f, v)} for f, r, v in self.more]
        return out


def _shown(field: str, value: Any) -> Any:
    return shown(field, value)


def _spec() -> dict[str, tuple[str, Any, bool]]:
    """Application field -> (kind, constraint type info, required)."""
    out = {}
    info = msgspec.inspect.type_info(Application)
    assert isinstance(info, msgspec.inspect.StructType)
    for f in info.fields:
        if f.name == "features":
            continue  # (application features are columns of their own: see validate)
        t = f.type
        if isinstance(t, msgspec.inspect.UnionType):
            t = next((x for x in t.types if not isinstance(x, msgspec.inspect.NoneType)), t)
        if f.name == "consent":
            kind = "consent"
        elif isinstance(t, msgspec.inspect.IntType):
            kind = "int"
        elif isinstance(t, msgspec.inspect.FloatType):
            kind = "float"
        elif isinstance(t, msgspec.inspect.BoolType):
            kind = "bool"
        elif isinstance(t, msgspec.inspect.DateTimeType):
            kind = "time"
        else:
            kind = "str"
        out[f.name] = (kind, t, f.required)
    return out


SPEC = _spec()


def rename(batch: pa.RecordBatch, mapping: dict[str, str]) -> pa.RecordBatch:
    """Rename source columns to field names (``mapping``: field -> source column)."""
    if not mapping:
        return batch
    back = {src: field for field, src in mapping.items()}
    names = [back.get(n, n) for n in batch.schema.names]
    return pa.RecordBatch.from_arrays(batch.columns, names=names)


def source_types(mapping: dict[str, str]) -> dict[str, pa.DataType]:
    """Text for every known column, under its source name (how a CSV is read)."""
    fields = list(SPEC) + list(OUTCOME_FIELDS)
    return {mapping.get(f, f): pa.string() for f in fields}


class _Checker:
    """Collects every problem of every row of a batch (a row is rejected once, with all of
    them)."""

    def __init__(self, n: int, offset: int):
        self.n, self.offset = n, offset
        self.bad = np.zeros(n, dtype=bool)
        self._problems: dict[int, list[tuple[str, str, Any]]] = {}

    def flag(self, mask: np.ndarray, field: str, reason: str, values: pa.Array | None) -> None:
        for i in np.flatnonzero(mask).tolist():
            probs = self._problems.setdefault(i, [])
            if any(f == field for f, _, _ in probs):
                continue  # (a value that did not convert is not also "empty")
            probs.append((field, reason, values[i].as_py() if values is not None else None))
        self.bad |= mask

    @property
    def rejects(self) -> list[Reject]:
        """One Reject per bad row, in row order."""
        return [
            Reject(self.offset + i + 1, *probs[0], more=tuple(probs[1:]))
            for i, probs in sorted(self._problems.items())
        ]


def _np(mask: pa.Array) -> np.ndarray:
    return np.asarray(pc.fill_null(mask, False).to_numpy(zero_copy_only=False), dtype=bool)


def _text(col: pa.Array) -> pa.Array:
    return col if pa.types.is_string(col.type) or pa.types.is_large_string(col.type) else None


def _coerce(name: str, kind: str, col: pa.Array, chk: _Checker) -> pa.Array:
    """``col`` as the field's Arrow type; rows that cannot be converted are flagged."""
    text = _text(col)
    if kind == "int":
        if text is not None:
            ok = pc.match_substring_regex(text, _INT_RE)
            chk.flag(~_np(ok) & ~_np(pc.is_null(text)), name, "not an integer", text)
            whole = pc.replace_substring_regex(pc.utf8_trim_whitespace(text), r"\.0*$", "")
            return pc.cast(pc.if_else(ok, whole, None), pa.int64())
        if pa.types.is_floating(col.type):
            # A float column (e.g. a Parquet file written from a data frame): whole,
            # finite values only; nulls stay null for the required-field check.
            vals = np.asarray(pc.fill_null(col, 0.0).to_numpy(zero_copy_only=False))
            with np.errstate(invalid="ignore"):
                whole = np.isfinite(vals) & (vals == np.floor(vals)) & (np.abs(vals) < 2.0**53)
            chk.flag(~whole & ~_np(pc.is_null(col)), name, "not an integer", col)
            return pc.cast(pc.if_else(pa.array(whole), col, None), pa.int64(), safe=False)
        return pc.cast(col, pa.int64())
    if kind == "float":
        if text is not None:
            ok = pc.match_substring_regex(text, _FLOAT_RE)
            chk.flag(~_np(ok) & ~_np(pc.is_null(text)), name, "not a number", text)
            return pc.cast(pc.if_else(ok, pc.utf8_trim_whitespace(text), None), pa.float64())
        return pc.cast(col, pa.float64())
    if kind == "bool":
        if text is not None:
            low = pc.utf8_lower(pc.utf8_trim_whitespace(text))
            t, f = pc.is_in(low, pa.array(sorted(_TRUE))), pc.is_in(low, pa.array(sorted(_FALSE)))
            chk.flag(~_np(t) & ~_np(f) & ~_np(pc.is_null(text)), name, "not true/false", text)
            return pc.if_else(t, True, pc.if_else(f, False, pa.scalar(None, pa.bool_())))
        return pc.cast(col, pa.bool_())
    if kind == "time":
        if text is not None:
            ok = pc.match_substring_regex(text, _TIME_RE)
            chk.flag(
                ~_np(ok) & ~_np(pc.is_null(text)),
                name,
                "not an ISO 8601 time with a zone offset",
                text,
            )
            parsed = pc.cast(pc.if_else(ok, text, None), pa.timestamp("ns", tz="UTC"))
            return pc.cast(parsed, pa.timestamp("ms", tz="UTC"), safe=False)
        if not pa.types.is_timestamp(col.type) or col.type.tz is None:
            raise TrafficError(
                f"column `{name}`: expected a time-zone-aware timestamp, got {col.type}"
            )
        return pc.cast(col, pa.timestamp("ms", tz="UTC"), safe=False)
    if text is None and kind in ("str", "consent"):
        return pc.cast(col, pa.string())
    return col


def _bounds(name: str, t: Any, col: pa.Array, chk: _Checker) -> None:
    if pa.types.is_floating(col.type):
        vals = col.to_numpy(zero_copy_only=False)
        chk.flag(~np.isfinite(vals) & ~_np(pc.is_null(col)), name, "not a finite number", col)
    for attr, fails, sym in (
        ("ge", pc.less, ">="),
        ("gt", pc.less_equal, ">"),
        ("le", pc.greater, "<="),
        ("lt", pc.greater_equal, "<"),
    ):
        bound = getattr(t, attr, None)
        if bound is not None:
            chk.flag(_np(fails(col, bound)), name, f"expected {sym} {bound}", col)
    pattern = getattr(t, "pattern", None)
    if pattern and (pa.types.is_string(col.type)):
        chk.flag(
            ~_np(pc.match_substring_regex(col, pattern)) & ~_np(pc.is_null(col)),
            name,
            f"does not match {pattern}",
            col,
        )
    max_len = getattr(t, "max_length", None)
    if max_len is not None and pa.types.is_string(col.type):
        chk.flag(_np(pc.greater(pc.utf8_length(col), max_len)), name, f"longer than {max_len}", col)
    min_len = getattr(t, "min_length", None)
    if min_len is not None and pa.types.is_string(col.type):
        chk.flag(_np(pc.less(pc.utf8_length(col), min_len)), name, f"shorter than {min_len}", col)


def _feature(batch: pa.RecordBatch, names: set[str], name: str, kind: str, chk: _Checker):
    """An application feature's column: float64 numbers (required, finite) or text."""
    if name in SPEC or name in OUTCOME_FIELDS:
        raise TrafficError(f"feature `{name}`: an application field cannot be a model feature")
    if name not in names:
        raise TrafficError(
            f"missing column `{name}`: the strategy's model reads feature `{name}` (the file "
            f"has: {_listing(sorted(names))}; map one of them to it with a [columns] table)"
        )
    col = batch.column(name)
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    field = f"features.{name}"
    if kind == "text":
        return col if _text(col) is not None else pc.cast(col, pa.string())
    if pa.types.is_boolean(col.type):
        col = pc.cast(col, pa.float64())
    col = _coerce(field, "float", col, chk)
    chk.flag(_np(pc.is_null(col)), field, "required by the model, empty", None)
    _bounds(field, None, col, chk)
    return col


def _consent(col: pa.Array, partner_ids: set[str], chk: _Checker) -> pa.Array:
    """Canonical consent text; unknown partner ids reject the row. Each distinct value is
    checked once (a file has few of them)."""
    if pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
        col = pa.array(
            # (elements as text: a list of numbers is a list of unknown partner ids)
            [",".join(map(str, v)) if v is not None else None for v in col.to_pylist()],
            pa.string(),
        )
    enc = pc.dictionary_encode(pc.cast(col, pa.string()), null_encoding="encode")
    canon: list[str] = []
    for k, v in enumerate(enc.dictionary.to_pylist()):
        v = (v or "none").strip()
        if v in ("none", "any"):
            canon.append(v)
            continue
        ids = [p.strip() for p in v.split(",") if p.strip()]
        unknown = [p for p in ids if p not in partner_ids]
        if unknown or not ids:
            codes = enc.indices.to_numpy(zero_copy_only=False)
            chk.flag(
                codes == k,
                "consent",
                f"unknown partner {unknown[0]!r}" if unknown else "empty consent list",
                col,
            )
            canon.append("none")
        else:
            canon.append(",".join(ids))
    return pc.take(pa.array(canon, pa.string()), enc.indices)


def validate(
    batch: pa.RecordBatch,
    offset: int,
    partner_ids: Iterable[str],
    defaults: dict[str, Any] | None = None,
    features: dict[str, str] | None = None,
) -> tuple[pa.RecordBatch, np.ndarray, list[Reject]]:
    """Check one (renamed) batch: (good rows with canonical types, their indices, rejects).

    ``offset`` is the number of data rows before this batch in the file. A missing
    required column is a :class:`~router.core.errors.TrafficError` (the mapping is wrong, not a
    row); ``defaults`` fills optional fields a file does not have. ``features``: the
    application features the strategy's models read (name -> ``"number"`` or ``"text"``,
    :func:`router.decide.features.app_features`), each a column of that name: a number
    must be there and finite (else the row is rejected naming ``features.NAME``); text
    may be empty (no one-hot flag set).
    """
    n = batch.num_rows
    chk = _Checker(n, offset)
    names = set(batch.schema.names)
    partner_ids = set(partner_ids)
    arrays: dict[str, pa.Array] = {}
    for name, (kind, t, required) in SPEC.items():
        if name in OUTCOME_FIELDS:
            continue  # checked with the other outcome columns below
        if name not in names:
            if required:
                raise TrafficError(
                    f"missing column `{name}` (the file has: {_listing(sorted(names))}; map "
                    f'one of them to it with a [columns] table: {name} = "your_column")'
                )
            continue
        col = batch.column(name)
        if isinstance(col, pa.ChunkedArray):
            col = col.combine_chunks()
        if kind == "consent":
            arrays[name] = _consent(col, partner_ids, chk)
            continue
        col = _coerce(name, kind, col, chk)
        if required:
            chk.flag(_np(pc.is_null(col)), name, "required field is empty", None)
        _bounds(name, t, col, chk)
        arrays[name] = col
    tok, nid = arrays.get("applicant_token"), arrays.get("national_id")
    has_tok = _np(pc.is_valid(tok)) if tok is not None else np.zeros(n, dtype=bool)
    has_nid = _np(pc.is_valid(nid)) if nid is not None else np.zeros(n, dtype=bool)
    chk.flag(
        has_tok == has_nid,
        "applicant_token",
        "exactly one of `applicant_token` and `national_id` must be set",
        None,
    )
    for name, typ in OUTCOME_FIELDS.items():
        if name in names:
            col = batch.column(name)
            kind = "bool" if typ == pa.bool_() else "int" if typ == pa.int64() else "str"
            arrays[name] = _coerce(name, kind, col, chk)
            if name == "funded_amount":
                chk.flag(_np(pc.less(arrays[name], 0)), name, "expected >= 0", arrays[name])
    for name, value in (defaults or {}).items():
        if name not in arrays:
            arrays[name] = pa.array([value] * n)
    for name, kind in (features or {}).items():
        arrays[name] = _feature(batch, names, name, kind, chk)
    good = np.flatnonzero(~chk.bad)
    out = pa.RecordBatch.from_arrays(list(arrays.values()), names=list(arrays))
    if len(good) < n:
        out = out.take(pa.array(good))
    return out, good, chk.rejects


_FIELD_AT = re.compile(r"at `\$\.?(?P<field>[A-Za-z_0-9]*)")


def reject_of_error(row: int, message: str) -> Reject:
    """A Reject from a msgspec validation message (it names the field as ``$.field``)."""
    m = _FIELD_AT.search(message)
    field = m.group("field") if m and m.group("field") else "row"
    return Reject(row, field, mask(message))


def _listing(names: list[str], most: int = 12) -> str:
    """Column names for a message (the first ``most`` of them)."""
    shown = ", ".join(names[:most])
    return shown + (f", … ({len(names)} in all)" if len(names) > most else "") if names else "none"
