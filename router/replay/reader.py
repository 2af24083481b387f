"""Readers of traffic files into column batches (Parquet and JSON Lines).

Memory is bounded by one batch: Parquet is read row group by row group, JSON Lines a
block of lines at a time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import msgspec
import pyarrow.parquet as pq

from router.columns import AppColumns, from_applications, from_arrow
from router.errors import InputError, TrafficError
from router.identity import Hasher
from router.messages import Application

_line_decoder = msgspec.json.Decoder(Application)


def count_rows(path: str | Path) -> int | None:
    """Rows in the file if cheaply known (Parquet metadata), else None."""
    path = Path(path)
    if path.suffix.lower() == ".parquet":
        return pq.ParquetFile(path).metadata.num_rows
    return None


def read_columns(path: str | Path, hasher: Hasher, batch_size: int = 131_072) -> Iterator[AppColumns]:
    """Yield validated column batches of ``path`` in file order."""
    path = Path(path)
    if not path.exists():
        raise TrafficError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        offset = 0
        for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_size):
            yield from_arrow(batch, hasher, offset)
            offset += batch.num_rows
    elif suffix in (".jsonl", ".ndjson"):
        with open(path, "rb") as f:
            apps: list[Application] = []
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    apps.append(_line_decoder.decode(line))
                except (msgspec.ValidationError, msgspec.DecodeError) as exc:
                    raise InputError(f"{path}:{lineno}: {exc}", row=lineno) from exc
                if len(apps) == batch_size:
                    yield from_applications(apps, hasher)
                    apps = []
            if apps:
                yield from_applications(apps, hasher)
    else:
        raise TrafficError(f"{path}: unsupported traffic format {suffix!r} (.parquet, .jsonl)")
