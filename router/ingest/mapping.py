"""A lender's file onto the application schema: rename, transform, fill in, date.

A mapping file (TOML, ``--mapping FILE``; a strategy's ``[columns]`` table is the rename
part alone)::

    [columns]                      # field = "the file's column"
    monthly_income = "income_yuan"
    defaulted = "target"

    [features]                     # the lender's own model inputs: name = "the file's column"
    savings = "savings_eur"

    [transforms.monthly_income]    # per field or feature, applied after the rename
    scale = 100                    # yuan -> fen (integer fields are rounded half to even)

    [transforms.defaulted]
    map = { good = false, bad = true }    # a value map (the file's value as text -> value)

    [transforms.received_at]
    timezone = "Europe/Berlin"     # timestamps without a zone are local time there
    offset_hours = 0               # then shifted by this many hours

    [constants]                    # fields the file lacks, the same on every row
    channel = "own_app"
    consent = "any"

    [arrival]                      # a file without dates: arrival times from row order
    start = "2026-11-02T00:00:00+08:00"
    every_ms = 432                 # the n-th row (from 0) arrives at start + n * every_ms

Everything is checked when the file is read, and an error names the file, the line and
the key (``mapping.toml: line 7: transforms.monthly_income.scale: …``). Row values that a
transform cannot use (text where a number is scaled, a value the map does not list) are
left as they are, so the row is rejected by validation naming its field, as any bad value.
"""

from __future__ import annotations

import re
import zoneinfo
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from router.core.errors import ConfigError

_NUMBER_RE = r"^\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*$"


class Transform(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """What to do to one field's values (each optional; applied in this order)."""

    #: A value map: the file's value, as text, -> the field's value.
    map: dict[str, str | int | float | bool] | None = None
    #: Multiply (a unit change); integer fields are then rounded half to even.
    scale: float | None = None
    #: ``received_at`` only: timestamps without a zone are local time in this zone.
    timezone: str | None = None
    #: ``received_at`` only: shift every timestamp by this many hours.
    offset_hours: float | None = None


class Arrival(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """Arrival times for a file without them: row n (from 0) at ``start + n * every_ms``."""

    start: datetime
    every_ms: int = 1000


class Mapping(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """A whole mapping: renames, transforms, constants, derived arrival times."""

    columns: dict[str, str] = {}
    #: Application features a model reads (router/decide/features.py): name -> the
    #: file's column. A feature whose column has its name needs no entry, unless it is
    #: transformed or a constant.
    features: dict[str, str] = {}
    transforms: dict[str, Transform] = {}
    constants: dict[str, str | int | float | bool] = {}
    arrival: Arrival | None = None

    def renames(self) -> dict[str, str]:
        """field (or application feature) -> the file's column (what the readers select
        and rename)."""
        return {**self.columns, **self.features}

    def is_plain(self) -> bool:
        """Only renames (nothing to compute)."""
        return not (self.transforms or self.constants or self.arrival)


def as_mapping(m: Mapping | dict[str, str] | None) -> Mapping:
    """A :class:`Mapping` from a mapping or a plain rename table (checked)."""
    if isinstance(m, Mapping):
        return m
    out = Mapping(columns=dict(m or {}))
    check(out, "column mapping")
    return out


def load_mapping(path: str | Path) -> Mapping:
    """Read and check a mapping file; errors name the file, line and key."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read mapping: {exc}", source=str(path)) from exc
    try:
        m = msgspec.toml.decode(text.encode(), type=Mapping)
    except msgspec.ValidationError as exc:
        where = _path_of(str(exc))
        if where is not None and "[...]" in where:
            where = _which_key(text, where)
        raise ConfigError(_msg(str(exc)), source=_at(path, text, where), path=where) from None
    except msgspec.DecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}", source=str(path)) from None
    try:
        check(m, str(path))
    except ConfigError as exc:
        raise ConfigError(
            str(exc).split(": ", 2)[-1], source=_at(path, text, exc.path), path=exc.path
        ) from None
    return m


_INT_OUTCOMES = ("funded_amount",)


def check(m: Mapping, source: str) -> None:
    """Every key names a known field and every transform fits its field."""
    from router.decide.features import ALL_FEATURES, APP_FEATURE
    from router.ingest.validate import OUTCOME_FIELDS, SPEC

    known = set(SPEC) | set(OUTCOME_FIELDS)
    for f in m.features:
        if f in known or f in ALL_FEATURES or not APP_FEATURE.match(f) or "=" in f:
            raise ConfigError(
                "an application feature is a lower-case name that is not a field or a "
                f"feature the router computes (value: {f!r})",
                source=source,
                path=f"features.{f}",
            )
    for f in m.columns:
        _check_field(m, known, f, f"columns.{f}", source)
    for f, t in m.transforms.items():
        _check_field(m, known, f, f"transforms.{f}", source)
        _check_transform(f, t, source)
    for f in m.constants:
        _check_field(m, known, f, f"constants.{f}", source)
        if f in m.columns:
            raise ConfigError(
                f"{f} is both a constant and a column of the file",
                source=source,
                path=f"constants.{f}",
            )
    if m.arrival is not None:
        _check_arrival(m, source)


def _check_field(m: Mapping, known: set[str], name: str, where: str, source: str) -> None:
    """``name`` is a field, or an application feature listed under [features] (which
    may be transformed too)."""
    if name not in known and name not in m.features:
        raise ConfigError(
            f"unknown field {name!r} (fields: {', '.join(sorted(known))}; or an "
            "application feature listed under [features])",
            source=source,
            path=where,
        )


def _check_transform(f: str, t: Transform, source: str) -> None:
    """A transform fits its field: scale on numbers, time zones on received_at."""
    from router.ingest.validate import OUTCOME_FIELDS, SPEC

    kind = SPEC[f][0] if f in SPEC else "outcome" if f in OUTCOME_FIELDS else "feature"
    numeric = kind in ("int", "float", "feature") or f == "funded_amount"
    if t.scale is not None and not numeric:
        raise ConfigError(
            f"scale applies to numbers; {f} is not one",
            source=source,
            path=f"transforms.{f}.scale",
        )
    if t.scale is not None and not (t.scale > 0 and np.isfinite(t.scale)):
        raise ConfigError(
            f"scale must be a positive number (value: {t.scale!r})",
            source=source,
            path=f"transforms.{f}.scale",
        )
    if (t.timezone is not None or t.offset_hours is not None) and f != "received_at":
        raise ConfigError(
            "timezone and offset_hours apply to received_at only",
            source=source,
            path=f"transforms.{f}",
        )
    if t.timezone is not None:
        try:
            zoneinfo.ZoneInfo(t.timezone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ConfigError(
                f"unknown time zone (value: {t.timezone!r})",
                source=source,
                path=f"transforms.{f}.timezone",
            ) from None


def _check_arrival(m: Mapping, source: str) -> None:
    """Derived arrival times: received_at not also given, a zoned start, a step >= 0."""
    assert m.arrival is not None
    if "received_at" in m.columns or "received_at" in m.constants:
        raise ConfigError(
            "arrival times are derived, so received_at must not also come from the file",
            source=source,
            path="arrival",
        )
    if m.arrival.start.tzinfo is None:
        raise ConfigError(
            "start needs a time zone (e.g. 2026-11-02T00:00:00+08:00)",
            source=source,
            path="arrival.start",
        )
    if m.arrival.every_ms < 0:
        raise ConfigError(
            f"every_ms must be >= 0 (value: {m.arrival.every_ms})",
            source=source,
            path="arrival.every_ms",
        )


def apply(m: Mapping, batch: pa.RecordBatch, first_row: int) -> pa.RecordBatch:
    """A renamed batch with the mapping's transforms, constants and arrival times
    (``first_row``: the batch's first row's index in the file, from 0)."""
    if m.is_plain():
        return batch
    from router.ingest.validate import SPEC

    cols = dict(zip(batch.schema.names, batch.columns))
    n = batch.num_rows
    for f, t in m.transforms.items():
        if f not in cols:
            continue
        arr = cols[f]
        if t.map is not None:
            arr = _mapped(arr, t.map)
        if t.scale is not None:
            # (an application feature is a float; funded_amount, an outcome, an int)
            arr = _scaled(
                arr,
                t.scale,
                integer=SPEC.get(f, ("int" if f in _INT_OUTCOMES else "float",))[0] == "int",
            )
        if t.timezone is not None or t.offset_hours is not None:
            arr = _timed(arr, t.timezone, t.offset_hours or 0.0)
        cols[f] = arr
    for f, v in m.constants.items():
        cols[f] = pa.array([_text(v)] * n, pa.string())
    if m.arrival is not None:
        start = int(m.arrival.start.timestamp() * 1000)
        at = start + (first_row + np.arange(n, dtype=np.int64)) * m.arrival.every_ms
        cols["received_at"] = pa.array(at, pa.timestamp("ms", tz="UTC"))
    return pa.RecordBatch.from_arrays(list(cols.values()), names=list(cols))


def _text(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def _as_text(arr: pa.Array) -> pa.Array:
    if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
        return arr
    if pa.types.is_boolean(arr.type):
        return pc.if_else(arr, "true", "false")
    return pc.cast(arr, pa.string())


def _mapped(arr: pa.Array, table: dict[str, Any]) -> pa.Array:
    """Values the map lists replaced (as text); others left as they are."""
    text = _as_text(arr)
    keys = pa.array(list(table), pa.string())
    values = pa.array([_text(v) for v in table.values()], pa.string())
    idx = pc.index_in(pc.utf8_trim_whitespace(text), value_set=keys)
    return pc.if_else(pc.is_valid(idx), pc.take(values, idx), text)


def _scaled(arr: pa.Array, scale: float, integer: bool) -> pa.Array:
    """Numbers multiplied (integers rounded half to even), as text; anything else left."""
    text = _as_text(arr)
    ok = pc.fill_null(pc.match_substring_regex(text, _NUMBER_RE), False)
    num = pc.cast(pc.if_else(ok, text, "0"), pa.float64())
    out = pc.multiply(num, scale)
    if integer:
        out = pc.cast(pc.round(out, round_mode="half_to_even"), pa.int64())
    return pc.if_else(ok, pc.cast(out, pa.string()), text)


def _timed(arr: pa.Array, tz: str | None, offset_hours: float) -> pa.Array:
    """Timestamps without a zone read as local time in ``tz`` (left alone without one:
    validation asks for a zone), then every one shifted by ``offset_hours``."""
    shift = int(round(offset_hours * 3_600_000))
    if pa.types.is_timestamp(arr.type):
        ts = arr
        if ts.type.tz is None:
            ts = _localised(ts, tz or "UTC")
    else:
        text = pc.utf8_trim_whitespace(_as_text(arr))
        zoned = pc.fill_null(pc.match_substring_regex(text, r"(Z|[+-]\d{2}:?\d{2})$"), True)
        parsed = None if pc.any(zoned).as_py() or tz is None else _parse_naive(text)
        if parsed is None or tz is None:  # mixed, zoned or unusual text: row by row
            return _shift_text(text, tz, shift)
        ts = _localised(parsed, tz)
    ts = pc.cast(ts, pa.timestamp("ms", tz="UTC"))
    if shift:
        ts = pc.cast(pc.add(pc.cast(ts, pa.int64()), shift), pa.timestamp("ms", tz="UTC"))
    return ts


def _localised(ts: pa.Array, tz: str) -> pa.Array:
    # (A wall time a clock change skips or repeats is taken at its earliest instant.)
    return pc.assume_timezone(ts, tz, ambiguous="earliest", nonexistent="earliest")


def _parse_naive(text: pa.Array) -> pa.Array | None:
    """Zone-less ISO text (``2026-11-02 10:00:00[.123]``, ``T`` or a space) as timestamps,
    or None if any value is not that (the caller then goes row by row)."""
    try:
        return pc.cast(text, pa.timestamp("ms"))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None


def _shift_text(text: pa.Array, tz: str | None, shift: int) -> pa.Array:
    """Row by row: zone-less values localised in ``tz``, all shifted, as ISO text; a value
    that does not parse (or has no zone and no ``tz`` is given) is left for validation."""
    zone = zoneinfo.ZoneInfo(tz) if tz else None
    out: list[str | None] = []
    for v in text.to_pylist():
        try:
            t = datetime.fromisoformat(v.replace("Z", "+00:00")) if v else None
        except ValueError:
            t = None
        if t is not None and t.tzinfo is None:
            t = t.replace(tzinfo=zone) if zone is not None else None
        if t is None:
            out.append(v)
            continue
        out.append((t + timedelta(milliseconds=shift)).isoformat())
    return pa.array(out, pa.string())


def _path_of(message: str) -> str | None:
    """``transforms.age.scale`` from msgspec's ``at `$.transforms['age'].scale```."""
    m = re.search(r"at `\$\.?([^`]*)`", message)
    if not m:
        return None
    # (A key msgspec left out, ``[...]``, stays for _which_key to find.)
    return re.sub(r"\[['\"]?([^'\".\]][^'\"\]]*)['\"]?\]", r".\1", m.group(1)).strip(".")


def _which_key(text: str, where: str) -> str:
    """msgspec leaves a table's keys out of an error's path (``transforms[...].scale``):
    find the entry that fails on its own."""
    table, _, rest = where.partition("[...]")
    raw = msgspec.toml.decode(text.encode())
    entries = raw.get(table, {}) if isinstance(raw, dict) else {}
    kind: Any = {"transforms": Transform}.get(table, str | int | float | bool)
    if table == "columns":
        kind = str
    for key, value in entries.items() if isinstance(entries, dict) else []:
        try:
            msgspec.convert(value, kind)
        except msgspec.ValidationError:
            return f"{table}.{key}{rest}"
    return where


def _msg(message: str) -> str:
    return re.sub(r"\s*-\s*at `\$[^`]*`", "", message)


def _at(path: Path, text: str, where: str | None) -> str:
    """``FILE: line N`` for a dotted key path (its table header, then the key under it)."""
    line = line_of(text, where) if where else None
    return f"{path}: line {line}" if line else str(path)


def line_of(text: str, dotted: str) -> int | None:
    """The 1-based line of a dotted key in TOML text: the key under its table (a
    ``[a.b]`` header, or a dotted key or inline table on an ``a = {…}`` line)."""
    parts = dotted.split(".")
    lines = text.splitlines()
    for cut in range(len(parts), 0, -1):
        table, rest = parts[:cut], parts[cut:]
        header = re.compile(r"^\s*\[\s*" + r"\s*\.\s*".join(map(re.escape, table)) + r"\s*\]\s*$")
        for i, ln in enumerate(lines):
            if header.match(ln):
                if not rest:
                    return i + 1
                key = re.compile(r"^\s*" + re.escape(rest[0]) + r"\s*=")
                for j in range(i + 1, len(lines)):
                    if lines[j].lstrip().startswith("["):
                        break
                    if key.match(lines[j]):
                        return j + 1
                return i + 1
    key = re.compile(r"^\s*" + re.escape(parts[-1]) + r"\s*=")
    for i, ln in enumerate(lines):
        if key.match(ln) or re.match(r"^\s*" + re.escape(parts[0]) + r"\s*=", ln):
            return i + 1
    return None
