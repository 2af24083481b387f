"""A trained model's card: how well it ranks and whether its PDs come true, in Markdown
(for people) and JSON (for checks), written next to the model file by
``referral-router train`` (router/scoring/fit.py)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from router.decide.outcomes import KEEP
from router.replay.calibration import Calibration


def ks(y: np.ndarray, p: np.ndarray) -> float:
    """Kolmogorov–Smirnov distance between the PD distributions of bads and goods."""
    order = np.argsort(p, kind="stable")
    ys = y[order]
    cb = np.cumsum(ys) / max(ys.sum(), 1)
    cg = np.cumsum(1 - ys) / max((1 - ys).sum(), 1)
    return float(np.max(np.abs(cb - cg))) if len(ys) else 0.0


def part_metrics(y: np.ndarray, p: np.ndarray, t: np.ndarray) -> dict[str, Any]:
    """AUC, KS, Brier score, mean PD against the default rate (with its 95% interval),
    the calibration by PD band, and the part's time range."""
    from sklearn.metrics import brier_score_loss, roc_auc_score

    cal = Calibration()
    cal.add(np.full(len(y), KEEP), p, np.zeros(len(y)), y.astype(np.int8), 0.0)
    table = cal.table() or {}
    both = len(np.unique(y)) == 2
    return {
        "rows": int(len(y)),
        "from": _iso(int(t.min())) if len(t) else None,
        "to": _iso(int(t.max())) if len(t) else None,
        "auc": float(roc_auc_score(y, p)) if both else None,
        "ks": ks(y, p) if both else None,
        "brier": float(brier_score_loss(y, p)) if len(y) else None,
        "all": table.get("by_outcome", {}).get("all"),
        "by_pd_band": table.get("by_pd_band", []),
    }


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds")


def write_card(out_dir: Path, card: dict[str, Any]) -> tuple[Path, Path]:
    """``model_card.json`` and ``model_card.md`` in ``out_dir``."""
    js = out_dir / "model_card.json"
    js.write_bytes(msgspec.json.format(msgspec.json.encode(card)) + b"\n")
    md = out_dir / "model_card.md"
    md.write_text(markdown(card))
    return js, md


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{x:.2%}"


def _num(x: float | None) -> str:
    return "–" if x is None else f"{x:.4f}"


def markdown(card: dict[str, Any]) -> str:
    """The card as Markdown."""
    d, tr, ho = card["data"], card["train"], card["holdout"]
    dropped = ", ".join(f"{k}: {v:,}" for k, v in d["dropped"].items() if v)
    folds = (
        f", fitted on out-of-fold PDs of {card['folds']} parts of the training rows"
        if card["calibration"] != "none"
        else ""
    )
    lines = [
        f"# Model card: {card['model_file']}",
        "",
        f"Trained {card['trained_at']} by `referral-router train` ({card['code_version']}).",
        "",
        "## Data",
        "",
        f"- traffic: `{d['traffic']}` (sha256 {d['sha256'][:16]}…), {d['rows_read']:,} valid "
        f"rows, {d['rows_rejected']:,} rejected by validation",
        f"- rows left out: {dropped or 'none'}",
        f"- out-of-time split: the first {1 - d['holdout']:.0%} in arrival order train "
        f"({tr['rows']:,} rows, {tr['from']} to {tr['to']}), the last {d['holdout']:.0%} are "
        f"held out ({ho['rows']:,} rows, {ho['from']} to {ho['to']})",
        "",
        "## Model",
        "",
        f"- kind: {card['model']} ({card['estimator']}); file kind `{card['scorer_kind']}`",
        f"- calibration: {card['calibration']}{folds}",
        f"- features ({len(card['features'])}): {', '.join(f'`{f}`' for f in card['features'])}",
    ]
    for name, cats in card["categories"].items():
        lines.append(f"  - `{name}` one-hot over {len(cats)} categories: {', '.join(cats)}")
    lines += _quality(tr, ho)
    lines += [
        "",
        "## Use it",
        "",
        f"`{card['strategy_file']}` beside this card is the strategy trained on, scoring with "
        "this model (`referral-router replay -s` it). In a strategy of your own:",
        "",
        "```toml",
        card["strategy_snippet"].rstrip(),
        "```",
        "",
    ]
    return "\n".join(lines)


def _quality(tr: dict[str, Any], ho: dict[str, Any]) -> list[str]:
    """The card's ranking and calibration tables: each part, then held out by PD band."""
    lines: list[str] = []
    lines += [
        "",
        "## How well it ranks and whether its PDs come true",
        "",
        "| part | rows | default rate (95% CI) | mean PD | AUC | KS | Brier |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for label, part in (("train", tr), ("held out", ho)):
        a = part["all"] or {}
        ci = a.get("realised_ci95", [None, None])
        lines.append(
            f"| {label} | {part['rows']:,} | {_pct(a.get('realised_bad_rate'))} "
            f"({_pct(ci[0])}–{_pct(ci[1])}) | {_pct(a.get('expected_bad_rate'))} | "
            f"{_num(part['auc'])} | {_num(part['ks'])} | {_num(part['brier'])} |"
        )
    lines += [
        "",
        "Held out, by PD band (expected: the mean PD of the band's rows; the range is where the "
        "realised rate falls 95% of the time if every PD is true):",
        "",
        "| PD band | rows | expected | realised (95% CI) | expected range | consistent |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for b in ho["by_pd_band"]:
        ci, rng = b["realised_ci95"], b["expected_range95"]
        lines.append(
            f"| {b['band']} | {b['n']:,} | {_pct(b['expected_bad_rate'])} | "
            f"{_pct(b['realised_bad_rate'])} ({_pct(ci[0])}–{_pct(ci[1])}) | "
            f"{_pct(rng[0])}–{_pct(rng[1])} | {'yes' if b['consistent'] else '**no**'} |"
        )
    return lines
