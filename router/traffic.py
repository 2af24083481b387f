"""Synthetic application traffic with realistic joint distributions.

Generative assumptions (all per application unless said):

* **Arrivals** — ``per_day`` applications a day from ``start`` (local midnight,
  Asia/Shanghai); the hour of day follows a daily cycle (quiet 01:00–06:00, peaks
  10:00–12:00 and 20:00–22:00), uniform within the hour; rows are in arrival order.
* **Channels** — own app 35%, big-platform partner 30%, API aggregator 20%, H5
  aggregator 15%. Channels differ in quality: a latent risk ``z ~ N(μ_channel, 1)`` with
  μ = −0.35, 0.0, 0.35, 0.7 respectively.
* **Features from z** — bureau score ≈ 640 − 55z (clipped 300–900); monthly income
  log-normal around 9,000 yuan, lower for higher z; inquiries (3 months) and open loans
  Poisson with means rising in z; debt-to-income ≈ 0.28 + 0.11z + noise; a delinquency
  (worst DPD 5–150 days) with probability rising steeply in z; age 20–60, younger a bit
  riskier; region from a weighted list of provinces (some outside typical licences).
* **Loan asked** — amount ≈ income × U(0.8, 6) (1,000–200,000 yuan, whole hundreds);
  term 3/6/12/24/36 months; the highest APR the applicant accepts depends on segment:
  prime (z < −0.8) 4–10%, near-prime 10–18%, the rest 15–24% (a few up to 36%).
* **Consent** — "any whitelisted partner" 70–85% by channel, a named short list 5%, else
  none. Fraud flag 0.4% (1.5% on H5). 0.3% of applicants work for a partner lender.
* **Repeat applicants** — 7% of applications reuse an earlier applicant's identity
  (re-applying, often via another channel) with fresh loan terms.
* **Outcome** — a hidden true PD = sigmoid(−3.0 + 1.15z + 0.25·log(amount/income) +
  0.015·term) drives ``defaulted ~ Bernoulli(true_pd)``; both columns are carried in the
  output and never read by the router. The partner's answer had the application been
  referred: accepted with probability 0.55 − 2·true PD (clipped to 5–90%), funded 75% of
  accepted, for 60–100% of the amount asked (``partner_accepted``, ``partner_funded``,
  ``funded_amount``; replay reports realised referral fees and rev-share from them).

The same ``seed`` gives the same bytes (numpy PCG64 streams, fixed chunking, no wall clock).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from router.core.errors import TrafficError

CHANNELS = ("own_app", "platform", "api_aggregator", "h5_aggregator")
_CH_P = (0.35, 0.30, 0.20, 0.15)
_CH_MU = (-0.35, 0.0, 0.35, 0.7)
_CH_ANY = (0.70, 0.85, 0.80, 0.75)
_CH_FRAUD = (0.002, 0.003, 0.004, 0.015)
REGIONS = (
    "110000",
    "310000",
    "440100",
    "440300",
    "330100",
    "320500",
    "510100",
    "420100",
    "370200",
    "610100",
    "500000",
    "350200",
    "210200",
    "230100",
    "530100",
    "650100",
)
_REGION_P = np.array([9, 9, 7, 8, 7, 6, 7, 5, 5, 4, 5, 4, 4, 3, 3, 2], dtype=float)
#: Employers of the example partner book's lenders (partner-employee exclusion).
PARTNER_EMPLOYERS = (
    "Ningyuan Bank",
    "Heshan Consumer Finance",
    "Qianhai Micro Lending",
    "Yunfan Platform Technology",
    "Dongfang Credit Services",
)
_OTHER_EMPLOYERS = tuple(f"Company {i:03d}" for i in range(200))
_HOUR_W = np.array(
    [
        2,
        1,
        0.6,
        0.4,
        0.4,
        0.6,
        1.5,
        3,
        5,
        7,
        8.5,
        8.5,
        7,
        6.5,
        6.5,
        6.5,
        6,
        6,
        6.5,
        7.5,
        8.5,
        8.5,
        6,
        3.5,
    ]
)
_SHORT_LISTS = ("bank_ningyuan,platform_yunfan", "microloan_qianhai", "platform_yunfan,cfc_heshan")
_TERMS = np.array([3, 6, 12, 24, 36])
_TERM_P = np.array([0.1, 0.2, 0.4, 0.2, 0.1])

SCHEMA = pa.schema(
    [
        ("application_id", pa.string()),
        ("received_at", pa.timestamp("ms", tz="Asia/Shanghai")),
        ("channel", pa.string()),
        ("national_id", pa.string()),
        ("age", pa.int16()),
        ("monthly_income", pa.int64()),
        ("bureau_score", pa.int16()),
        ("inquiries_3m", pa.int16()),
        ("open_loans", pa.int16()),
        ("dti", pa.float64()),
        ("worst_dpd_12m", pa.int16()),
        ("region", pa.string()),
        ("employer", pa.string()),
        ("requested_amount", pa.int64()),
        ("term_months", pa.int16()),
        ("max_apr", pa.float64()),
        ("consent", pa.string()),
        ("fraud_flag", pa.bool_()),
        ("defaulted", pa.bool_()),
        ("true_pd", pa.float64()),
        ("partner_accepted", pa.bool_()),
        ("partner_funded", pa.bool_()),
        ("funded_amount", pa.int64()),
    ]
)


class _State:
    """Cross-chunk state: the pool of earlier applicant identities."""

    def __init__(self) -> None:
        self.pool: list[str] = []
        self.pool_z: list[float] = []


def _chunk(
    rng: np.random.Generator, n: int, first: int, day_start_ms: int, state: _State, seed: int
) -> pa.RecordBatch:
    """One chunk of a day's traffic. The draws are made in a fixed order (same seed, same
    bytes), part by part: arrival times, identities and latent risk, the bureau file, the
    request, consent and employer, the outcomes."""
    hours = rng.choice(24, size=n, p=_HOUR_W / _HOUR_W.sum())
    # Rows are i.i.d. apart from repeats, so sorting the times alone gives arrival order.
    t = np.sort(day_start_ms + hours * 3600_000 + rng.integers(0, 3600_000, size=n))
    ch, z, ids = _identities(rng, n, first, state, seed)
    bureau, income = _bureau(rng, n, z)
    request, amount, amount_fen = _request(rng, n, z, income)
    cols = {
        "application_id": [f"A{seed}-{first + i:010d}" for i in range(n)],
        "received_at": pa.array(t, pa.int64()).cast(pa.timestamp("ms", tz="Asia/Shanghai")),
        "channel": np.take(CHANNELS, ch),
        "national_id": ids,
        **bureau,
        **request,
        **_consent_and_employer(rng, n, ch),
        **_outcomes(rng, n, z, amount, amount_fen, income, request["term_months"]),
    }
    order = [f.name for f in SCHEMA]
    arrays = [
        c if isinstance(c, pa.Array) else pa.array(c, type=SCHEMA.field(k).type)
        for k, c in ((k, cols[k]) for k in order)
    ]
    return pa.RecordBatch.from_arrays(arrays, schema=SCHEMA)


def _identities(
    rng: np.random.Generator, n: int, first: int, state: _State, seed: int
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(channel codes, latent risk z, national ids): repeat applicants reuse an identity
    and (mostly) its risk — an earlier applicant of the same day, or of an earlier day."""
    ch = rng.choice(4, size=n, p=_CH_P)
    z = rng.normal(np.take(_CH_MU, ch), 1.0)
    repeat = rng.random(n) < 0.07
    from_pool = rng.random(n) < 0.5
    u = rng.random(n)
    ids = [f"9{seed % 100:02d}{first + i:015d}" for i in range(n)]
    for i in np.flatnonzero(repeat).tolist():
        if from_pool[i] and state.pool:
            j = int(u[i] * len(state.pool))
            ids[i], z[i] = state.pool[j], 0.8 * state.pool_z[j] + 0.2 * z[i]
        elif i > 0:
            j = int(u[i] * i)
            ids[i], z[i] = ids[j], 0.8 * z[j] + 0.2 * z[i]
    keep = rng.random(n) < 0.02  # remember a sample as future repeaters
    state.pool.extend(ids[i] for i in np.flatnonzero(keep))
    state.pool_z.extend(z[keep].tolist())
    return ch, z, ids


def _bureau(rng: np.random.Generator, n: int, z: np.ndarray) -> tuple[dict, np.ndarray]:
    """The applicant's file (age, income, bureau score, inquiries, loans, DTI, worst
    DPD), and the monthly income in yuan the request is drawn from."""
    age = np.clip(np.round(38 - 4 * z + rng.normal(0, 9, n)), 20, 60).astype(np.int16)
    income = np.exp(rng.normal(math.log(9000) - 0.25 * z, 0.55))
    income_fen = (np.round(income / 10) * 1000).astype(np.int64).clip(150000, None)
    score = np.clip(np.round(640 - 55 * z + rng.normal(0, 35, n)), 300, 900).astype(np.int16)
    inq = rng.poisson(np.exp(0.5 + 0.55 * z)).clip(0, 60).astype(np.int16)
    opn = rng.poisson(np.exp(0.4 + 0.45 * z)).clip(0, 40).astype(np.int16)
    dti = np.round(np.clip(0.28 + 0.11 * z + rng.normal(0, 0.1, n), 0.0, 3.0), 3)
    delinquent = rng.random(n) < 1 / (1 + np.exp(-(1.6 * z - 3.2)))
    dpd = np.where(
        delinquent,
        rng.choice([5, 15, 35, 65, 95, 150], size=n, p=[0.3, 0.25, 0.2, 0.12, 0.08, 0.05]),
        0,
    ).astype(np.int16)
    cols = {
        "age": age,
        "monthly_income": income_fen,
        "bureau_score": score,
        "inquiries_3m": inq,
        "open_loans": opn,
        "dti": dti,
        "worst_dpd_12m": dpd,
    }
    return cols, income


def _request(
    rng: np.random.Generator, n: int, z: np.ndarray, income: np.ndarray
) -> tuple[dict, np.ndarray, np.ndarray]:
    """Region, amount, term and the highest APR the applicant accepts; (columns, amount
    in yuan, amount in fen)."""
    region = np.take(REGIONS, rng.choice(len(REGIONS), size=n, p=_REGION_P / _REGION_P.sum()))
    amount = np.clip(np.round(income * rng.uniform(0.8, 6, n) / 100) * 100, 1000, 200000)
    amount_fen = (amount * 100).astype(np.int64)
    term = rng.choice(_TERMS, size=n, p=_TERM_P).astype(np.int16)
    u = rng.random(n)
    max_apr = np.where(
        z < -0.8, 0.04 + 0.06 * u, np.where(z < 0.2, 0.10 + 0.08 * u, 0.15 + 0.09 * u)
    )
    max_apr = np.where(rng.random(n) < 0.03, 0.24 + 0.12 * rng.random(n), max_apr)
    max_apr = np.round(max_apr, 4)
    cols = {
        "region": region,
        "requested_amount": amount_fen,
        "term_months": term,
        "max_apr": max_apr,
    }
    return cols, amount, amount_fen


def _consent_and_employer(rng: np.random.Generator, n: int, ch: np.ndarray) -> dict:
    """Referral consent (any partner, a short list, none), the fraud flag, the employer
    (a few work at a partner)."""
    cr = rng.random(n)
    any_p = np.take(_CH_ANY, ch)
    short = np.take(_SHORT_LISTS, rng.integers(0, len(_SHORT_LISTS), n))
    consent = np.where(cr < any_p, "any", np.where(cr < any_p + 0.05, short, "none"))
    fraud = rng.random(n) < np.take(_CH_FRAUD, ch)
    er = rng.random(n)
    employer = np.where(
        er < 0.003,
        np.take(PARTNER_EMPLOYERS, rng.integers(0, len(PARTNER_EMPLOYERS), n)),
        np.take(_OTHER_EMPLOYERS, rng.integers(0, len(_OTHER_EMPLOYERS), n)),
    )
    employer = employer.astype(object)
    employer[er > 0.93] = None
    return {"consent": consent, "fraud_flag": fraud, "employer": employer}


def _outcomes(
    rng: np.random.Generator,
    n: int,
    z: np.ndarray,
    amount: np.ndarray,
    amount_fen: np.ndarray,
    income: np.ndarray,
    term: np.ndarray,
) -> dict:
    """The true PD, whether the loan defaulted, and the partner's answer were the
    application referred (drawn last, so the columns above are the same as before these
    were added)."""
    logit = -3.25 + 1.15 * z + 0.25 * np.log(amount / income) + 0.015 * term
    true_pd = 1 / (1 + np.exp(-logit))
    defaulted = rng.random(n) < true_pd
    accepted = rng.random(n) < np.clip(0.55 - 2.0 * true_pd, 0.05, 0.9)
    funded = accepted & (rng.random(n) < 0.75)
    funded_fen = np.round(amount_fen * rng.uniform(0.6, 1.0, n) / 10_000).astype(np.int64) * 10_000
    return {
        "defaulted": defaulted,
        "true_pd": np.round(true_pd, 6),
        "partner_accepted": accepted,
        "partner_funded": funded,
        "funded_amount": pa.array(funded_fen, pa.int64(), mask=~funded),
    }


def generate_batches(
    rows: int,
    seed: int = 7,
    per_day: int = 200_000,
    start: str = "2026-11-02",
    chunk: int = 100_000,
) -> Iterator[pa.RecordBatch]:
    """Yield record batches of generated traffic in arrival order."""
    if rows < 0 or per_day <= 0 or chunk <= 0:
        raise TrafficError("rows must be ≥ 0 and per_day, chunk > 0")
    tz = ZoneInfo("Asia/Shanghai")
    day0 = int(datetime.fromisoformat(start).replace(tzinfo=tz).timestamp() * 1000)
    state = _State()
    seq = np.random.SeedSequence(seed)
    done, day = 0, 0
    while done < rows:
        day_rows = min(per_day, rows - done)
        rng = np.random.default_rng(seq.spawn(1)[0])
        # A day is generated whole (sorted arrivals), then cut into chunks.
        batch = _chunk(rng, day_rows, done, day0 + day * 86_400_000, state, seed)
        for off in range(0, day_rows, chunk):
            yield batch.slice(off, chunk)
        done += day_rows
        day += 1


def write_traffic(
    out: str | Path,
    rows: int,
    seed: int = 7,
    per_day: int = 200_000,
    start: str = "2026-11-02",
    progress=None,
) -> Path:
    """Write generated traffic as Parquet (``.parquet``) or JSON Lines (``.jsonl``)."""
    out = Path(out)
    fmt = out.suffix.lower()
    if fmt not in (".parquet", ".jsonl"):
        raise TrafficError(f"{out}: unsupported format {fmt!r} (use .parquet or .jsonl)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    if fmt == ".parquet":
        with pq.ParquetWriter(tmp, SCHEMA, compression="zstd") as w:
            for b in generate_batches(rows, seed, per_day, start):
                w.write_batch(b)
                if progress:
                    progress(b.num_rows)
    else:
        enc = msgspec.json.Encoder()
        with open(tmp, "wb") as f:
            for b in generate_batches(rows, seed, per_day, start):
                f.write(_jsonl(b, enc))
                if progress:
                    progress(b.num_rows)
    tmp.replace(out)  # whole file or nothing
    return out


def _jsonl(b: pa.RecordBatch, enc: msgspec.json.Encoder) -> bytes:
    d = b.to_pydict()
    d["received_at"] = [t.isoformat(timespec="milliseconds") for t in d["received_at"]]
    d["consent"] = [c if c in ("any", "none") else c.split(",") for c in d["consent"]]
    names = list(d)
    lines = []
    for row in zip(*d.values()):
        obj = {k: v for k, v in zip(names, row) if v is not None}
        lines.append(enc.encode(obj))
    return b"\n".join(lines) + b"\n"
