"""Train the default PD models shipped in ``models/`` and write their model card.

Data recipe: ``referral-router generate``'s generator, seed 20261101, 300,000 rows
(1.5 days), target ``defaulted``. Features: the 13 of :mod:`router.decide.features` and
``max_apr`` (the highest APR the applicant accepts: it carries risk the bureau fields do
not, and the primary policy selects on it through the coverage test — a model without it
underestimates the risk of the loans it keeps). The first 70% of rows in arrival order
train, the last 30% are held out (an out-of-time split).

    python models/train.py     # rewrites pd_logit.json, pd_hgb.skops, pd_trees.json, MODEL_CARD.md
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import skops.io as sio
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from router.core.columns import from_arrow  # noqa: E402
from router.core.identity import Hasher  # noqa: E402
from router.decide.features import FEATURES, FeatureSet  # noqa: E402
from router.scoring import LinearScorer, TreeScorer, scorer_from_estimator  # noqa: E402
from router.scoring.card import ks  # noqa: E402
from router.traffic import generate_batches  # noqa: E402

SEED, ROWS = 20261101, 300_000
NAMES = (*FEATURES, "max_apr")


def main() -> None:
    table = pa.Table.from_batches(list(generate_batches(ROWS, seed=SEED)))
    cols = from_arrow(table.combine_chunks().to_batches()[0], Hasher(b"model-training-key-0000"))
    import pandas as pd

    # Fitted on named columns: the model files carry their features (feature_names_in_).
    X = pd.DataFrame(FeatureSet(NAMES).batch(cols), columns=list(NAMES))
    y = table.column("defaulted").to_numpy().astype(int)
    cut = int(0.7 * len(y))
    Xtr, ytr, Xte, yte = X[:cut], y[:cut], X[cut:], y[cut:]
    Xte_a = Xte.to_numpy()

    logit = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000)).fit(Xtr, ytr)
    hgb = HistGradientBoostingClassifier(
        max_iter=40,
        learning_rate=0.2,
        max_leaf_nodes=15,
        min_samples_leaf=200,
        l2_regularization=1.0,
        early_stopping=False,
        random_state=0,
    ).fit(Xtr, ytr)
    lin = LinearScorer.from_estimator(logit)
    rows = []
    for name, model, scorer in (
        ("pd_logit", logit, lin),
        ("pd_hgb", hgb, scorer_from_estimator(hgb)),
    ):
        p = scorer.pd_batch(Xte_a)
        ref = model.predict_proba(Xte)[:, 1]
        rows.append(
            (name, roc_auc_score(yte, p), ks(yte, p), float(p.mean()), float(np.abs(p - ref).max()))
        )
    lin.to_file(
        HERE / "pd_logit.json",
        metadata={
            "trained_on": f"generator seed {SEED}, {ROWS} rows, first 70% by arrival",
            "auc_holdout": round(rows[0][1], 4),
            "ks_holdout": round(rows[0][2], 4),
        },
    )
    sio.dump(hgb, HERE / "pd_hgb.skops")
    # The same trees compiled, as plain JSON: loading needs no scikit-learn.
    TreeScorer.from_estimator(hgb).to_file(
        HERE / "pd_trees.json",
        metadata={
            "trained_on": f"generator seed {SEED}, {ROWS} rows, first 70% by arrival",
            "auc_holdout": round(rows[1][1], 4),
            "ks_holdout": round(rows[1][2], 4),
        },
    )
    card = HERE / "MODEL_CARD.md"
    text = card.read_text().split("<!-- metrics -->")[0] if card.exists() else ""
    table_md = [
        "<!-- metrics -->",
        "",
        f"Held-out: {len(yte):,} applications, default rate {yte.mean():.2%}.",
        "",
        "| model | AUC | KS | mean PD | max abs diff vs sklearn predict_proba |",
        "| --- | --- | --- | --- | --- |",
    ]
    table_md += [f"| {n} | {a:.4f} | {k:.4f} | {m:.4f} | {d:.1e} |" for n, a, k, m, d in rows]
    card.write_text(text + "\n".join(table_md) + "\n")
    print("\n".join(table_md))
    print("features:", ", ".join(NAMES))


if __name__ == "__main__":
    main()
