"""``report.html``: a page a strategist opens from disk (no server), with PNG charts.

Charts (matplotlib, headless): the split by hour of day, cumulative quota use per partner
across the busiest day with the day-cap lines, the PD distribution by outcome, and — for
``compare`` and ``tune`` — the swap-set heat map and the tuning frontier. Every chart is a
file in ``DIR/charts/``; the page refers to them by relative path.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: no display needed
import matplotlib.pyplot as plt
import matplotlib.ticker
import numpy as np

from router.core.reasons import MEANING
from router.decide.outcomes import LABELS

COLORS = {"keep": "#2e7d32", "branch": "#0277bd", "refer": "#f9a825", "decline": "#9e9e9e"}


def _save(fig, path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return f"charts/{path.name}"


def chart_split_by_hour(summary: dict[str, Any], path: Path, title: str = "") -> str:
    """Stacked bars: keep / branch / refer / decline per local hour of day."""
    hours = sorted(summary["by_hour"])
    fig, ax = plt.subplots(figsize=(9, 3.6))
    bottom = np.zeros(len(hours))
    for label in LABELS:
        vals = np.array([summary["by_hour"][h][label] for h in hours], dtype=float)
        ax.bar([int(h) for h in hours], vals, bottom=bottom, color=COLORS[label], label=label)
        bottom += vals
    ax.set_xlabel("hour of day (strategy's time zone)")
    ax.set_ylabel("applications")
    ax.set_xticks(range(0, 24, 2))
    ax.set_title(title or "Decisions by hour of day")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _save(fig, path)


def chart_quota_use(summary: dict[str, Any], path: Path) -> str | None:
    """Cumulative referrals per partner across the busiest day, with each day cap."""
    timeline = summary.get("timeline") or {}
    if not timeline:
        return None
    totals: dict[str, int] = {}
    for days in timeline.values():
        for d, counts in days.items():
            totals[d] = totals.get(d, 0) + sum(counts)
    day = max(sorted(totals), key=lambda d: totals[d])
    fig, ax = plt.subplots(figsize=(9, 4))
    cmap = plt.get_cmap("tab10")
    colors: dict[str, Any] = {pid: cmap(k % 10) for k, pid in enumerate(sorted(timeline))}
    for pid, days in sorted(timeline.items()):
        counts = np.array(days.get(day, [0] * 24))
        # Referrals before each hour boundary, joined by straight lines (hourly counts
        # only: within an hour the line is an interpolation).
        ax.plot(
            np.arange(25), np.concatenate([[0], np.cumsum(counts)]), color=colors[pid], label=pid
        )
        # Where the day cap ran out, by count or by amount (an amount cap stops a partner
        # below its dashed count line).
        for w in summary["quota"].get(pid, {}).get("day", {}).get("by_window", []):
            if w["window"] == day and w["ran_out_at"]:
                hh, mm = (int(x) for x in w["ran_out_at"].split("T")[1][:5].split(":"))
                at = counts[:hh].sum() + counts[hh] * mm / 60
                ax.plot(hh + mm / 60, at, "x", color=colors[pid], ms=8, mew=2)
    for cap, pids in cap_labels(summary, sorted(timeline)):
        # Equal caps share one line and one label naming every partner (one line drawn
        # over another used to hide a partner's cap); a single cap takes its partner's colour.
        color = colors[pids[0]] if len(pids) == 1 else "#555555"
        ax.axhline(cap, color=color, linestyle="--", linewidth=0.9)
        ax.annotate(
            f"{', '.join(pids)}: {cap:,}",
            (24, cap),
            xytext=(-4, 2),
            textcoords="offset points",
            ha="right",
            va="bottom",
            fontsize=7,
            color=color,
        )
    ax.set_xlim(0, 24)
    ax.set_xticks(range(0, 25, 2))
    ax.set_xlabel(f"hour of {day} (partner's time zone)")
    ax.set_ylabel("referrals so far")
    ax.set_title("Cumulative quota use per partner (dashed: day count cap; ×: day cap ran out)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _save(fig, path)


def cap_labels(summary: dict[str, Any], pids: list[str]) -> list[tuple[int, list[str]]]:
    """The day-cap lines to draw: each distinct count cap once, with every partner that has
    it, lowest first."""
    by_cap: dict[int, list[str]] = {}
    for pid in pids:
        cap = summary["quota"].get(pid, {}).get("day", {}).get("cap_count")
        if cap:
            by_cap.setdefault(cap, []).append(pid)
    return sorted((cap, sorted(names)) for cap, names in by_cap.items())


def chart_pd_by_outcome(summary: dict[str, Any], path: Path) -> str:
    """PD distribution of every application, split by its known outcome."""
    h = summary["pd_histogram"]
    edges = np.array(h["edges"])
    mids = (edges[:-1] + edges[1:]) / 2
    fig, ax = plt.subplots(figsize=(9, 3.6))
    for name, color in (("repaid", "#2e7d32"), ("defaulted", "#c62828"), ("unknown", "#9e9e9e")):
        counts = np.array(h[name], dtype=float)
        if counts.sum():
            ax.step(
                mids,
                counts / counts.sum(),
                where="mid",
                color=color,
                label=f"{name} ({int(counts.sum()):,})",
            )
    ax.set_xlabel("PD (primary scorer)")
    ax.set_ylabel("share of applications")
    ax.set_title("PD distribution by outcome")
    if ax.get_legend_handles_labels()[0]:  # (no applications: nothing to label)
        ax.legend(fontsize=8)
    return _save(fig, path)


def chart_swap_heatmap(matrix: dict[str, Any], path: Path) -> str:
    """The 4×4 swap-set counts: champion's outcome (rows) → challenger's (columns)."""
    counts = np.array(matrix["counts"], dtype=float)
    fig, ax = plt.subplots(figsize=(5.5, 4.6))
    im = ax.imshow(np.log1p(counts), cmap="Blues")
    labels = matrix["labels"]
    ax.set_xticks(range(4), labels)
    ax.set_yticks(range(4), labels)
    ax.set_xlabel("challenger")
    ax.set_ylabel("champion")
    top = counts.max() or 1
    for i in range(4):
        for j in range(4):
            ax.text(
                j,
                i,
                f"{int(counts[i, j]):,}",
                ha="center",
                va="center",
                color="white" if counts[i, j] > top / 3 else "black",
                fontsize=9,
            )
    ax.set_title("Swap sets (applications)")
    fig.colorbar(im, ax=ax, label="log(1 + count)")
    return _save(fig, path)


def chart_frontier(
    candidates: list[dict[str, Any]], path: Path, baseline: dict[str, Any] | None = None
) -> str:
    """Every candidate: value against bad rate, colour = keep rate; frontier ringed; the
    starting strategy (``baseline``'s metrics) as a black diamond."""
    fig, ax = plt.subplots(figsize=(8, 4.8))
    # (A candidate that keeps no loan has no bad rate: it has no point on this chart.)
    candidates = [c for c in candidates if c["metrics"]["bad_rate"] is not None]
    x = [c["metrics"]["bad_rate"] for c in candidates]
    y = [c["metrics"]["value"] / 100 for c in candidates]
    keep = [c["metrics"]["keep_rate"] for c in candidates]
    sc = ax.scatter(x, y, c=keep, cmap="viridis", s=28)
    fx = [c["metrics"]["bad_rate"] for c in candidates if c["frontier"]]
    fy = [c["metrics"]["value"] / 100 for c in candidates if c["frontier"]]
    ax.scatter(
        fx,
        fy,
        facecolors="none",
        edgecolors="#c62828",
        s=90,
        linewidths=1.4,
        label="Pareto frontier",
    )
    best = [c for c in candidates if c.get("best")]
    if best:
        ax.scatter(
            [best[0]["metrics"]["bad_rate"]],
            [best[0]["metrics"]["value"] / 100],
            marker="*",
            s=260,
            color="#f9a825",
            edgecolors="black",
            label="chosen",
        )
    if baseline is not None and baseline["bad_rate"] is not None:
        ax.scatter(
            [baseline["bad_rate"]],
            [baseline["value"] / 100],
            marker="D",
            s=70,
            color="black",
            label="starting strategy",
        )
    ax.set_xlabel("expected bad rate of kept loans")
    ax.set_ylabel("profit + referral revenue (yuan)")
    ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:,.0f}"))
    ax.xaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0, decimals=1))
    ax.set_title("Tuning: every candidate (colour: keep rate)")
    fig.colorbar(sc, ax=ax, label="keep rate")
    ax.legend(fontsize=8)
    return _save(fig, path)


# ---- the page --------------------------------------------------------------------

_CSS = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1000px;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;
text-align:right}th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}td.l,th.l{text-align:left}
img{max-width:100%;border:1px solid #eee;margin:.5em 0}h1{font-size:1.5em}.muted{color:#777}"""


def _yuan(minor: int | float | None) -> str:
    return "–" if minor is None else f"{minor / 100:,.0f}"


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{x:.2%}"


def _table(head: list[str], rows: list[list[Any]], text: tuple[str, ...] = ()) -> str:
    """An HTML table; columns named in ``text`` are words (left-aligned), the rest figures."""
    h = "".join(f"<th{' class=l' if c in text else ''}>{html.escape(str(c))}</th>" for c in head)
    cls = ["<td class=l>" if c in text else "<td>" for c in head]
    body = "".join(
        "<tr>" + "".join(f"{cls[i]}{html.escape(str(c))}</td>" for i, c in enumerate(r)) + "</tr>"
        for r in rows
    )
    return f"<table><tr>{h}</tr>{body}</table>"


def _page(title: str, parts: list[str]) -> str:
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
        f"</title><style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>"
        + "\n".join(parts)
        + "</body></html>\n"
    )


def replay_sections(summary: dict[str, Any], out: Path, prefix: str = "") -> list[str]:
    """Tables and charts of one replay (charts written under ``out/charts``)."""
    n = summary["applications"]
    parts = [
        f"<p style='color:#b00;font-weight:bold'>{html.escape(w)}.</p>" for w in warnings(summary)
    ]
    parts += [
        f"<p class='muted'>strategy {html.escape(summary['strategy_version'])} · "
        f"{n:,} applications ({summary['traffic']['rows_rejected']:,} rows rejected) · "
        f"input {(summary['traffic']['sha256'] or 'generated')[:12]} · strategy "
        f"{summary['strategy_hash'][:12]} · code {html.escape(summary['code_version'])}</p>"
    ]
    parts.append(
        _table(
            ["outcome", "applications", "share", "amount (yuan)"],
            [
                [k, f"{v:,}", _pct(v / n if n else 0), _yuan(summary["amounts"][k])]
                for k, v in summary["decisions"].items()
            ],
        )
    )
    e, kept = summary["expected_profit"], summary["kept"]
    parts.append(
        _table(
            ["figure", "value"],
            [
                ["keep rate", _pct(summary["keep_rate"])],
                ["expected bad rate (kept)", _pct(summary["expected_bad_rate"])],
                ["realised bad rate (kept)", _pct(summary["realised_bad_rate"])],
                [
                    "expected loss / realised loss (kept, yuan)",
                    f"{_yuan(kept['expected_loss'])} / {_yuan(kept['realised_loss'])}",
                ],
                ["expected profit: keep + branch (yuan)", _yuan(e["keep"] + e["branch"])],
                ["expected referral revenue (yuan)", _yuan(e["referral_value"])],
                ["realised referral revenue (yuan)", _yuan(summary["realised_referral_value"])],
                [
                    "coverage failures (referred: funding cost not covered)",
                    f"{summary['coverage_failures']:,}",
                ],
                [
                    "PSI of PD vs reference",
                    "–" if summary["psi"] is None else f"{summary['psi']:.4f}",
                ],
            ],
        )
    )
    parts.append("<h2>Partners</h2>" + _partner_table(summary))
    parts.append("<h2>Funder's budgets</h2>" + _budget_table(summary))
    parts.append("<h2>By channel</h2>" + _channel_table(summary))
    parts.append("<h2>Reason codes</h2>" + _reason_table(summary))
    if summary.get("calibration"):
        parts.append("<h2>Expected against realised</h2>" + _calibration_tables(summary))
    charts = out / "charts"
    imgs = [
        chart_split_by_hour(summary, charts / f"{prefix}split_by_hour.png"),
        chart_quota_use(summary, charts / f"{prefix}quota_use.png"),
        chart_pd_by_outcome(summary, charts / f"{prefix}pd_by_outcome.png"),
    ]
    parts += [f"<img src='{src}' alt='{src}'>" for src in imgs if src]
    return parts


def _calibration_tables(summary: dict[str, Any]) -> str:
    """The model's PDs against the traffic's outcomes: by decision outcome, and the kept
    loans by PD band, each with its 95% intervals (see router/replay/calibration.py)."""
    c = summary["calibration"]
    head = [
        "",
        "with outcome",
        "expected bad rate",
        "realised",
        "realised 95% interval",
        "expected 95% range",
        "PDs come true?",
    ]

    def row(name: str, r: dict[str, Any]) -> list[Any]:
        lo, hi = r["realised_ci95"]
        elo, ehi = r["expected_range95"]
        return [
            name,
            f"{r['n']:,}",
            _pct(r["expected_bad_rate"]),
            _pct(r["realised_bad_rate"]),
            f"{lo:.2%} – {hi:.2%}",
            f"{elo:.2%} – {ehi:.2%}",
            "yes" if r["consistent"] else "no",
        ]

    outcomes = [row(k, r) for k, r in c["by_outcome"].items() if r["n"]]
    kept = [row(r["band"], r) for r in c["kept_by_pd_band"]]
    k = c["by_outcome"].get("keep", {})
    loss = ""
    if k.get("n"):
        lo, hi = k["expected_loss_range95"]
        loss = (
            f"<p>Kept loans' loss: expected {_yuan(k['expected_loss'])} yuan (95% range "
            f"{_yuan(lo)} – {_yuan(hi)}), realised {_yuan(k['realised_loss'])} yuan. Kept "
            f"loans' profit: expected {_yuan(summary['expected_profit']['keep'])} yuan, "
            f"realised {_yuan(summary.get('realised_keep_profit'))} yuan (on the loans with "
            "an outcome).</p>"
        )
    return (
        "<p class='muted'>Applications whose outcome the traffic records. \"PDs come "
        'true" when the realised bad rate lies in the range it would fall in 95% of the '
        "time if every PD were right.</p>"
        + _table(head, outcomes, text=("",))
        + "<h3>Kept loans by PD band</h3>"
        + _table(head, kept, text=("",))
        + loss
    )


def ran_out_text(quota: dict[str, Any], name: str, window: str = "day") -> str:
    """When a bucket's cap of one window kind ran out, in the window's local time: the
    clock time for a single day, else the first and last with dates; "not reached" when
    it never ran out and "–" when there is no such cap."""
    cap = quota.get(name, {}).get(window)
    if not cap:
        return "–"
    times = [w["ran_out_at"] for w in cap.get("by_window", []) if w["ran_out_at"]]
    if not times:
        return "not reached"
    if window == "day" and len(times) == 1:
        return times[0].split("T")[1][:5]
    first, last = (t[:16].replace("T", " ") for t in (times[0], times[-1]))
    return first if len(times) == 1 else f"{first} … {last} ({len(times)} {window}s)"


def _cap_text(cap: dict[str, Any] | None) -> str:
    if not cap:
        return "–"
    parts = []
    if cap.get("cap_count"):
        parts.append(f"{cap['cap_count']:,}")
    if cap.get("cap_amount"):
        parts.append(f"{_yuan(cap['cap_amount'])} yuan")
    return " and ".join(parts) or "–"


def _partner_table(summary: dict[str, Any]) -> str:
    money, caps_rows = [], []
    for pid, p in summary["partners"].items():
        caps = summary["quota"].get(pid, {})
        day, hour = caps.get("day"), caps.get("hour")
        refused = summary.get("cap_refusals", {}).get(pid, {})
        money.append(
            [
                pid,
                f"{p['referred']:,}",
                _yuan(p["amount"]),
                _yuan(p["expected_fee"]),
                _yuan(p["expected_rev_share"]),
                _yuan(p["realised_fee"]),
                _yuan(p["realised_rev_share"]),
            ]
        )
        caps_rows.append(
            [
                pid,
                _cap_text(day),
                _pct(day["max_utilisation"]) if day else "–",
                ran_out_text(summary["quota"], pid, "day"),
                _cap_text(hour),
                f"{hour['windows_ran_out']} of {hour['windows_used']}" if hour else "–",
                _cap_text(caps.get("month")),
                f"{sum(refused.values()):,}",
            ]
        )
    head = ["partner", "referred", "amount", "exp. fees", "exp. rev-share"]
    return (
        _table([*head, "real. fees", "real. rev-share"], money)
        + "<p class='muted'>Amounts, fees and revenue share in yuan; expected from the "
        "strategy's terms, realised from the partners' results in the traffic.</p>"
        + _table(
            [
                "partner",
                "day cap",
                "max day-cap use",
                "day cap ran out",
                "hour cap",
                "hours ran out",
                "month cap",
                "refused at a cap",
            ],
            caps_rows,
        )
        + "<p class='muted'>Caps are referral counts and amounts in yuan; times are the "
        "partner's local time. “refused at a cap” counts applications this partner would "
        "have taken but for a full cap (each may have gone to another partner).</p>"
    )


def _budget_table(summary: dict[str, Any]) -> str:
    rows = []
    for name in ("keep", "branch"):
        for window, cap in summary["quota"].get(name, {}).items():
            refused = summary.get("cap_refusals", {}).get(name, {}).get(window, 0)
            rows.append(
                [
                    name,
                    window,
                    f"{cap['cap_count']:,}" if cap["cap_count"] else "–",
                    _yuan(cap["cap_amount"]) if cap["cap_amount"] else "–",
                    _pct(cap["max_utilisation"]),
                    ran_out_text(summary["quota"], name, window),
                    f"{refused:,}",
                ]
            )
    if not rows:
        return "<p class='muted'>The strategy sets no budgets for the funder.</p>"
    return _table(
        [
            "funder's budget",
            "window",
            "cap (count)",
            "cap (yuan)",
            "max use",
            "ran out",
            "refused at the cap",
        ],
        rows,
        ("window",),
    )


def _channel_table(summary: dict[str, Any]) -> str:
    rows = []
    for ch, counts in sorted(summary["by_channel"].items()):
        n = sum(counts.values())
        rows.append(
            [ch, f"{n:,}", *(f"{counts.get(k, 0):,}" for k in LABELS)]
            + [_pct(counts.get("keep", 0) / n if n else None)]
        )
    return _table(["channel", "applications", *LABELS, "keep rate"], rows)


def _reason_table(summary: dict[str, Any]) -> str:
    n = summary["applications"]
    rows = [
        [code, f"{count:,}", _pct(count / n if n else None), MEANING.get(code, "")]
        for code, count in summary["reason_counts"].items()
        if count
    ]
    return _table(["reason code", "applications", "share", "meaning"], rows, ("meaning",)) + (
        "<p class='muted'>An application carries every reason that removed an option, so "
        "the counts add up to more than the applications.</p>"
    )


def warnings(summary: dict[str, Any]) -> list[str]:
    """What makes a run's results not the strategy's own: applications decided degraded,
    or declined as late because the store already held much newer events."""
    out = []
    if summary.get("degraded"):
        out.append(
            f"{summary['degraded']:,} applications were decided degraded (the quota store "
            "was unreachable): these results are not the strategy's"
        )
    late = summary.get("reason_counts", {}).get("LATE_EVENT", 0)
    if late:
        from router.store.base import LATE_MS

        out.append(
            f"{late:,} applications were declined as late events: the quota store already "
            f"held events more than {LATE_MS / 3_600_000:g} h newer than theirs (replay "
            "into a fresh prefix, or one whose history ends before this traffic begins)"
        )
    return out


def write_replay_report(summary: dict[str, Any], out: Path) -> Path:
    """``out/report.html`` for one replay."""
    path = out / "report.html"
    parts = replay_sections(summary, out)
    path.write_text(_page(f"Replay — {summary['strategy_version']}", parts))
    return path


def write_compare_report(
    cmp: dict[str, Any], champion: dict[str, Any], challenger: dict[str, Any], out: Path
) -> Path:
    """``out/report.html`` for a champion / challenger comparison."""
    nc = cmp["net_change"]
    parts = [
        _table(
            ["net change (challenger − champion)", "value"],
            [
                ["expected profit: keep + branch (yuan)", _yuan(nc["profit"])],
                ["expected referral revenue (yuan)", _yuan(nc["referral_revenue"])],
                ["total (yuan)", _yuan(nc["total"])],
                ["keep rate (percentage points)", f"{nc['keep_rate'] * 100:+.2f}"],
                ["applications that change outcome", f"{cmp['swapped']:,}"],
            ],
        )
    ]
    rows = []
    for key, c in cmp["cells"].items():
        if c["count"]:
            rows.append(
                [
                    key.replace("->", " → "),
                    f"{c['count']:,}",
                    _yuan(c["amount"]),
                    _yuan(c["value_champion"]),
                    _yuan(c["value_challenger"]),
                    _yuan(c["value_change"]),
                ]
            )
    parts.append(
        _table(
            [
                "champion → challenger",
                "applications",
                "amount",
                "value (champion)",
                "value (challenger)",
                "change",
            ],
            rows,
        )
    )
    parts.append(
        f"<img src='{chart_swap_heatmap(cmp, out / 'charts' / 'swap_heatmap.png')}' "
        "alt='swap sets'>"
    )
    parts.append(f"<h2>Champion: {html.escape(champion['strategy_version'])}</h2>")
    parts += replay_sections(champion, out, "champion_")
    parts.append(f"<h2>Challenger: {html.escape(challenger['strategy_version'])}</h2>")
    parts += replay_sections(challenger, out, "challenger_")
    path = out / "report.html"
    path.write_text(_page("Champion vs challenger", parts))
    return path


def write_tune_report(
    result: dict[str, Any], best_summary: dict[str, Any] | None, out: Path
) -> Path:
    """``out/report.html`` for a tuning run."""
    cands, base = result["candidates"], result.get("baseline")
    chart = chart_frontier(cands, out / "charts" / "frontier.png", base)
    parts = [
        f"<p>{len(cands)} candidates · {sum(c['frontier'] for c in cands)} on the frontier · "
        f"constraints: {html.escape(_constraints(result['constraints']))}</p>",
    ]
    if base is not None:
        chosen = next((c for c in cands if c.get("best")), None)
        versus = (
            f" The chosen candidate changes the value by "
            f"{_yuan(chosen['metrics']['value'] - base['value'])} yuan."
            if chosen
            else ""
        )
        parts.append(
            f"<p>The starting strategy ({html.escape(result['strategy_version'])}): value "
            f"{_yuan(base['value'])} yuan, bad rate {_pct(base['bad_rate'])}, keep rate "
            f"{_pct(base['keep_rate'])} — "
            f"{'it meets' if _meets(base, result['constraints']) else 'it does not meet'} "
            f"the constraints.{versus}</p>"
        )
    parts.append(f"<img src='{chart}' alt='frontier'>")
    parts.append(_frontier_section(cands))
    if "holdout" in result:
        parts.append(_held_out_section(result))
    if best_summary is not None:
        where = " on the held-out part" if "holdout" in result else ""
        parts.append(f"<h2>Chosen candidate{where}</h2>")
        parts += replay_sections(best_summary, out, "best_")
    path = out / "report.html"
    path.write_text(_page("Strategy tuning", parts))
    return path


def _frontier_section(cands: list[dict[str, Any]]) -> str:
    """The frontier's candidates: one column per grid parameter, then their figures."""
    front = [c for c in cands if c["frontier"]]
    names = list(dict.fromkeys(k for c in front for k in c["params"]))
    rows = [
        [
            str(c["id"]),
            *(str(c["params"].get(k, "–")) for k in names),
            _yuan(c["metrics"]["value"]),
            _pct(c["metrics"]["bad_rate"]),
            _pct(c["metrics"].get("realised_bad_rate")),
            _came_true(c["metrics"].get("kept_pds_came_true")),
            _pct(c["metrics"]["keep_rate"]),
            "★" if c.get("best") else "",
        ]
        for c in front
    ]
    return (
        "<h2>Frontier</h2>"
        + _table(
            # (a zero-width space after each dot lets a long parameter path wrap there)
            ["#", *(k.replace(".", ".\u200b") for k in names), "value (yuan)", "bad rate"]
            + ["realised", "PDs came true", "keep rate", "chosen"],
            rows,
            ("routing.\u200bmethod",),
        )
        + "<p class='muted'>One column per grid parameter; value is expected profit plus "
        "referral revenue, bad rate the kept loans' expected bad rate, realised theirs where "
        "the traffic has outcomes, and whether it lay in the range the PDs promised (a "
        "frontier chosen on the same rows it is judged on; see the chosen candidate's "
        "calibration below).</p>"
    )


def _held_out_section(result: dict[str, Any]) -> str:
    """The frontier replayed on the held-out part: expected against realised, with the
    realised bad rate's 95% interval; the chosen candidate is the best there."""
    h = result["holdout"]
    rows = []
    for c in result["candidates"]:
        m = c.get("holdout")
        if m is None:
            continue
        ci = m.get("kept_realised_ci95") or [None, None]
        vr = m.get("realised_value_range95")
        rows.append(
            [
                str(c["id"]),
                _yuan(m["value"]),
                "–"
                if m.get("realised_value") is None
                else _yuan(m["realised_value"])
                + (f" ({_yuan(vr[0])}–{_yuan(vr[1])})" if vr else ""),
                _pct(m["bad_rate"]),
                f"{_pct(m.get('realised_bad_rate'))} ({_pct(ci[0])}–{_pct(ci[1])})",
                _came_true(m.get("kept_pds_came_true")),
                _pct(m["keep_rate"]),
                "★" if c.get("best") else "",
            ]
        )
    b = h["baseline"]
    note = ""
    if result.get("best_on_train") is not None and result["best_on_train"] != result["best"]:
        note = (
            f" Candidate {result['best_on_train']} was best on the earlier part; candidate "
            f"{result['best']} holds up better here."
        )
    return (
        f"<h2>Held out: the last {h['share']:.0%} of the traffic</h2>"
        f"<p>The candidates were replayed and the frontier found on the earlier "
        f"{h['train_applications']:,} applications only; the frontier was then replayed on "
        f"the last {h['holdout_applications']:,} by arrival time, which chose nothing, and "
        f"the best under the constraints ({html.escape(result['objective'])} figures) was "
        f"chosen there.{note} The starting strategy on this part: value {_yuan(b['value'])} "
        f"yuan, expected bad rate {_pct(b['bad_rate'])}, realised "
        f"{_pct(b.get('realised_bad_rate'))}.</p>"
        + _table(
            [
                "#",
                "value (yuan)",
                "realised value (range promised)",
                "bad rate",
                "realised (95% CI)",
                "PDs came true",
                "keep rate",
                "chosen",
            ],
            rows,
        )  # fmt: skip
        + "<p class='muted'>Realised value: the kept loans' profit as it came out, the "
        "referral revenue the partners' results realised (expected where the traffic has "
        "none) and the expected branch profit (its loans' outcomes are the partner's); "
        "in brackets the range it falls in 95% of the time were every kept loan's PD "
        "right.</p>"
    )


def _came_true(flag: bool | None) -> str:
    return "–" if flag is None else "yes" if flag else "no"


def _meets(metrics: dict[str, Any], c: dict[str, Any]) -> bool:
    rate = metrics["bad_rate"]
    return (c.get("max_bad_rate") is None or (rate is not None and rate <= c["max_bad_rate"])) and (
        c.get("min_keep_rate") is None or metrics["keep_rate"] >= c["min_keep_rate"]
    )


def _constraints(c: dict[str, Any]) -> str:
    """The tune constraints in words (not a Python dict)."""
    parts = []
    if c.get("max_bad_rate") is not None:
        parts.append(f"kept loans' expected bad rate at most {c['max_bad_rate']:.2%}")
    if c.get("min_keep_rate") is not None:
        parts.append(f"keep rate at least {c['min_keep_rate']:.2%}")
    return "; ".join(parts) or "none"
