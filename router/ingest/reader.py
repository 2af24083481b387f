"""Readers of historical traffic (Parquet, CSV, JSON Lines) into validated column batches.

Memory is bounded by one batch: Parquet is read batch by batch (only the columns the
router needs), CSV block by block (every known column as text, so a bad cell rejects its
row instead of failing the file), JSON Lines a block of lines at a time. A column mapping
(field -> the file's column name) lets a lender's own names work without renaming. Rows
that fail validation are handed to ``on_rejects`` with their row number and reason; the
good rows come out as :class:`TrafficBatch` with their outcome columns alongside.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Any

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from router.core.columns import AppColumns, consent_text, from_applications, from_arrow
from router.core.errors import TrafficError
from router.core.identity import Hasher
from router.core.messages import Application
from router.core.redact import plain
from router.ingest.arrow_callbacks import tracked
from router.ingest.mapping import Mapping, as_mapping
from router.ingest.mapping import apply as apply_mapping
from router.ingest.validate import (
    OUTCOME_FIELDS,
    SPEC,
    Reject,
    reject_of_error,
    rename,
    source_types,
    validate,
)

FORMATS = (".parquet", ".csv", ".jsonl", ".ndjson")


@dataclass
class TrafficBatch:
    """Validated applications of one batch, their outcome columns and file row numbers."""

    cols: AppColumns
    outcomes: dict[str, np.ndarray]  # OUTCOME_FIELDS present in the file, see outcome_array
    rows: np.ndarray  # 1-based row numbers in the file


def count_rows(path: str | Path) -> int | None:
    """Rows in the file if cheaply known (Parquet metadata), else None."""
    path = Path(path)
    if path.suffix.lower() == ".parquet":
        return pq.ParquetFile(path).metadata.num_rows
    return None


def outcome_array(name: str, values: pa.Array | list) -> np.ndarray:
    """An outcome column as numpy: flags as int8 (1 yes, 0 no, -1 unknown), the funded
    amount as float64 (NaN unknown), the partner as an object array (None unknown)."""
    arr = (
        values
        if isinstance(values, (pa.Array, pa.ChunkedArray))
        else pa.array(values, OUTCOME_FIELDS[name])
    )
    if OUTCOME_FIELDS[name] == pa.bool_():
        return np.asarray(
            pc.fill_null(pc.cast(arr, pa.int8()), -1).to_numpy(zero_copy_only=False), dtype=np.int8
        )
    if OUTCOME_FIELDS[name] == pa.int64():
        return np.asarray(
            pc.cast(arr, pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64
        )
    return np.array(arr.to_pylist(), dtype=object)


def _outcomes(batch: pa.RecordBatch) -> dict[str, np.ndarray]:
    return {
        name: outcome_array(name, batch.column(name))
        for name in OUTCOME_FIELDS
        if name in batch.schema.names
    }


def read_batches(
    path: str | Path | Iterable[pa.RecordBatch],
    hasher: Hasher,
    *,
    partner_ids: Iterable[str],
    mapping: Mapping | dict[str, str] | None = None,
    batch_size: int = 131_072,
    on_rejects: Callable[[list[Reject]], None] | None = None,
    features: dict[str, str] | None = None,
) -> Iterator[TrafficBatch]:
    """Yield validated batches of ``path`` in file order (see the module docstring).

    ``features``: the application features the strategy's models read, each a column of
    the file (name -> "number" or "text": :func:`router.decide.features.app_features`).

    ``path`` may also be an iterable of Arrow record batches (traffic generated on the fly).
    A file that cannot be read as its format (empty, truncated, not that format at all)
    raises :class:`TrafficError` naming it; a bad row is a reject and the file goes on.
    """
    name = str(path) if isinstance(path, (str, Path)) else "<stream>"
    undecodable: list[str] = []
    try:
        with _undecodable_rows(undecodable):
            yield from _read_batches(
                path, hasher, partner_ids, mapping, batch_size, on_rejects, features or {}
            )
    except (pa.ArrowException, OSError, UnicodeDecodeError) as exc:
        why = plain(str(exc))
        if undecodable:
            why += " (that row is not valid UTF-8, so it could not be skipped as a reject)"
        raise TrafficError(f"{name}: cannot read the traffic: {why}") from None


@contextlib.contextmanager
def _undecodable_rows(seen: list[str]) -> Iterator[None]:
    """While reading: a misshapen CSV row that is not valid UTF-8 makes pyarrow's wrapper
    of the invalid-row handler fail before calling it (it decodes the row's text), prints
    that as an "Exception ignored" traceback, and then fails the file on that row. Note it
    for the error message instead of printing it; other unraisable errors go on as before."""
    previous = sys.unraisablehook

    def hook(unraisable) -> None:
        tb, in_csv = unraisable.exc_traceback, False
        while tb is not None:
            in_csv = in_csv or "_csv" in tb.tb_frame.f_code.co_filename
            tb = tb.tb_next
        if isinstance(unraisable.exc_value, UnicodeDecodeError) and in_csv:
            seen.append("row")
            return
        previous(unraisable)

    sys.unraisablehook = hook
    try:
        yield
    finally:
        if sys.unraisablehook is hook:
            sys.unraisablehook = previous


def _read_batches(
    path: str | Path | Iterable[pa.RecordBatch],
    hasher: Hasher,
    partner_ids: Iterable[str],
    mapping_in: Mapping | dict[str, str] | None,
    batch_size: int,
    on_rejects: Callable[[list[Reject]], None] | None,
    features: dict[str, str],
) -> Iterator[TrafficBatch]:
    m = as_mapping(mapping_in)
    mapping = m.renames()
    ids = set(partner_ids)
    source: Iterator[pa.RecordBatch]
    #: CSV rows with the wrong number of fields: (row number, their reject), as parsed.
    misshapen: list[tuple[int, Reject]] = []
    if not isinstance(path, (str, Path)):
        source = iter(path)
        file, suffix = Path("<stream>"), "<stream>"
    else:
        file = Path(path)
        if not file.exists():
            raise TrafficError(f"{file}: no such file")
        suffix = file.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        if not m.is_plain():
            raise TrafficError(
                f"{file}: a mapping with transforms, constants or arrival times reads Parquet "
                "or CSV (JSON Lines takes renames only)"
            )
        yield from _jsonl(file, hasher, ids, mapping, batch_size, on_rejects)
        return
    if suffix == "<stream>":
        pass
    elif suffix == ".parquet":
        pf = pq.ParquetFile(file)
        wanted = [
            c
            for c in pf.schema_arrow.names
            if c in set(source_types(mapping)) or c in mapping.values() or c in features
        ]
        source = pf.iter_batches(batch_size=batch_size, columns=wanted)
    elif suffix == ".csv":
        source = _csv(file, mapping, batch_size, misshapen, features)
    else:
        raise TrafficError(f"{file}: unsupported traffic format {suffix!r} ({', '.join(FORMATS)})")
    offset = reported = 0
    for raw in source:
        good, idx, rejects = validate(
            apply_mapping(m, rename(raw, mapping), offset), offset, ids, features=features
        )
        rows = offset + idx + 1
        if misshapen:  # rows the CSV parser skipped: number the others as in the file
            at = _file_rows([r for r, _ in misshapen])
            rejects = [replace(r, row=int(at(np.array([r.row]))[0])) for r in rejects]
            rows = at(rows)
            rejects = sorted(rejects + [m for _, m in misshapen[reported:]], key=lambda r: r.row)
            reported = len(misshapen)
        if rejects and on_rejects is not None:
            on_rejects(rejects)
        if good.num_rows:
            yield TrafficBatch(
                from_arrow(good, hasher, offset, checked=True), _outcomes(good), rows
            )
        offset += raw.num_rows
    if misshapen[reported:] and on_rejects is not None:  # (after the last parsed row)
        on_rejects([m for _, m in misshapen[reported:]])


def _file_rows(skipped: list[int]):
    """Parsed-row numbers -> row numbers in the file, given the (file) numbers of the rows
    the parser skipped."""
    s = np.sort(np.asarray(skipped, dtype=np.int64))
    before = s - np.arange(len(s))  # a skipped row comes after this many parsed rows

    def at(parsed: np.ndarray) -> np.ndarray:
        return parsed + np.searchsorted(before, parsed, side="right")

    return at


def _csv(
    path: Path,
    mapping: dict[str, str],
    batch_size: int,
    misshapen: list[tuple[int, Reject]],
    features: dict[str, str] | None = None,
) -> Iterator[pa.RecordBatch]:
    """Blocks of the CSV file as Arrow batches; a row with too many or too few fields is
    skipped and noted in ``misshapen`` (its text, identifiers and all, is never kept)."""

    def skip(row) -> str:
        n = (row.number or 0) - 1  # (the parser counts lines from 1, the header included)
        why = f"expected {row.expected_columns} fields, got {row.actual_columns}"
        misshapen.append((n, Reject(n, "row", why)))
        return "skip"

    # (tracked: released before the interpreter shuts down; see arrow_callbacks.py)
    parse = pcsv.ParseOptions(invalid_row_handler=tracked(skip))
    types = source_types(mapping)
    # Application features are read as text and converted by the validation, as fields are.
    types.update({mapping.get(f, f): pa.string() for f in features or {}})
    # The header as Arrow's CSV reader parses it (quoting included); a first small block
    # is all it reads for that.
    probe = pcsv.open_csv(
        path,
        parse_options=pcsv.ParseOptions(invalid_row_handler=tracked(lambda row: "skip")),
        read_options=pcsv.ReadOptions(block_size=1 << 16),
        convert_options=pcsv.ConvertOptions(column_types={c: pa.string() for c in types}),
    )
    include = [c for c in probe.schema.names if c in types]
    probe.close()
    # About 200 bytes a row: blocks of roughly batch_size rows.
    # (One thread: the parser then knows each skipped row's line number.)
    reader = pcsv.open_csv(
        path,
        parse_options=parse,
        read_options=pcsv.ReadOptions(block_size=max(1 << 20, batch_size * 200), use_threads=False),
        convert_options=pcsv.ConvertOptions(
            column_types={c: types[c] for c in include},
            include_columns=include,
            strings_can_be_null=True,
            null_values=[""],
        ),
    )
    yield from reader


class _Outcome(msgspec.Struct, forbid_unknown_fields=True):
    defaulted: bool | None = None
    partner_accepted: bool | None = None
    partner_funded: bool | None = None
    funded_amount: Annotated[int, msgspec.Meta(ge=0)] | None = None
    referred_partner: str | None = None


_APP_FIELDS = set(SPEC)


def _jsonl(
    path: Path,
    hasher: Hasher,
    ids: set[str],
    mapping: dict[str, str],
    batch_size: int,
    on_rejects: Callable[[list[Reject]], None] | None,
) -> Iterator[TrafficBatch]:
    back = {src: field for field, src in mapping.items()}
    decode = msgspec.json.Decoder().decode
    apps: list[Application] = []
    outs: list[dict[str, Any]] = []
    rows: list[int] = []
    rejects: list[Reject] = []

    def flush() -> Iterator[TrafficBatch]:
        nonlocal apps, outs, rows, rejects
        if rejects and on_rejects is not None:
            on_rejects(rejects)
        if apps:
            cols = from_applications(apps, hasher)
            outcomes = {
                k: outcome_array(k, [o.get(k) for o in outs])
                for k in OUTCOME_FIELDS
                if any(k in o for o in outs)
            }
            yield TrafficBatch(cols, outcomes, np.array(rows, dtype=np.int64))
        apps, outs, rows, rejects = [], [], [], []

    with open(path, "rb") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                raw = decode(line)
                if not isinstance(raw, dict):
                    raise msgspec.ValidationError("expected a JSON object")
                raw = {back.get(k, k): v for k, v in raw.items()}
                app = msgspec.convert(
                    {k: v for k, v in raw.items() if k in _APP_FIELDS}, Application
                )
                out = msgspec.convert(
                    {k: v for k, v in raw.items() if k in OUTCOME_FIELDS}, _Outcome
                )
                consent = consent_text(app.consent)
                unknown = [
                    p for p in consent.split(",") if consent not in ("none", "any") and p not in ids
                ]
                if unknown:
                    rejects.append(
                        Reject(lineno, "consent", f"unknown partner {unknown[0]!r}", unknown[0])
                    )
                    continue
            except (msgspec.ValidationError, msgspec.DecodeError, ValueError) as exc:
                rejects.append(reject_of_error(lineno, str(exc)))
                continue
            apps.append(app)
            outs.append({k: getattr(out, k) for k in OUTCOME_FIELDS if k in raw})
            rows.append(lineno)
            if len(apps) == batch_size:
                yield from flush()
        yield from flush()
