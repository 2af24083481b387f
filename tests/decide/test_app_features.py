"""A lender's own inputs: an application's ``features`` map (live) and named extra columns
(replay) reach the model — numbers as they are, categories as one-hot flags, an upstream PD
through the ``upstream`` scorer — and decide alike one by one, in batch, in replay and in
the reference decider; a missing or malformed feature is refused naming it."""

from __future__ import annotations

from pathlib import Path

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from router.core.config import load_strategy
from router.core.errors import InputError, ModelError, TrafficError
from router.core.messages import decode_application
from router.decide.engine import Router
from router.decide.features import FeatureSet, app_features, check_features
from router.decide.outcomes import to_decisions
from router.ingest.reader import read_batches
from router.reference import ReferenceDecider
from router.scoring import LinearScorer, UpstreamScorer, load_scorer
from router.store import quota_store_from_url
from router.testing import check_scorer
from router.traffic import generate_batches, write_traffic

ROOT = Path(__file__).resolve().parents[2]
NAMES = ("bureau_score", "dti", "savings", "purpose=car", "purpose=cash", "max_apr")
PURPOSES = ["car", "cash", "home", None]


def _scorer() -> LinearScorer:
    # Weights that make the new inputs matter: savings lowers risk, cash loans raise it.
    return LinearScorer([-0.9, 0.8, -0.0004, -0.3, 0.9, 6.0], 1.8, NAMES)


def _extras(n: int, seed: int = 3) -> tuple[np.ndarray, list]:
    rng = np.random.default_rng(seed)
    savings = np.round(rng.gamma(2.0, 1500.0, n), 2)
    purpose = [PURPOSES[i] for i in rng.integers(0, len(PURPOSES), n)]
    return savings, purpose


@pytest.fixture(scope="module")
def traffic(tmp_path_factory):
    """The same 600 applications as JSON messages with a ``features`` map and as a
    Parquet file with two more columns."""
    d = tmp_path_factory.mktemp("app-features")
    lines = write_traffic(d / "t.jsonl", 600, seed=23).read_bytes().splitlines()
    savings, purpose = _extras(len(lines))
    apps = []
    for line, s, p in zip(lines, savings, purpose):
        a = decode_application(line)
        feats = {"savings": float(s), **({"purpose": p} if p is not None else {})}
        apps.append(
            decode_application(msgspec.json.encode(msgspec.structs.replace(a, features=feats)))
        )
    table = pa.Table.from_batches(list(generate_batches(600, seed=23)))
    table = table.append_column("savings", pa.array(savings)).append_column(
        "purpose", pa.array(purpose, pa.string())
    )
    pq.write_table(table, d / "t.parquet")
    return apps, d / "t.parquet"


def _router(scorer) -> Router:
    s = load_strategy(ROOT / "configs" / "strategy.toml")
    return Router(s, quota_store_from_url("memory://"), scorers={n: scorer for n in s.scorers})


def test_a_model_over_app_features_passes_the_scorer_conformance_check():
    check_scorer(_scorer())
    check_scorer(UpstreamScorer())


def test_one_by_one_batch_and_reference_decide_alike(traffic):
    apps, _ = traffic
    one, many = _router(_scorer()), _router(_scorer())
    got = [one.decide(a) for a in apps]
    assert got == many.decide_batch(apps)
    ref = ReferenceDecider(one.strategy, one.scorers, one.hasher)
    for have, want in zip(got, [ref.decide(a) for a in apps]):
        assert type(have) is type(want) and have.reasons == want.reasons, (have, want)
        assert abs(have.pd - want.pd) < 1e-12
    # The features move decisions: without them (savings 0, no purpose) PDs differ.
    bare = [msgspec.structs.replace(a, features={"savings": 0.0}) for a in apps[:50]]
    assert [d.pd for d in _router(_scorer()).decide_batch(bare)] != [d.pd for d in got[:50]]


def test_replay_reads_the_named_columns_and_decides_as_live(traffic):
    apps, parquet = traffic
    live = _router(_scorer())
    want = [live.decide(a) for a in apps]
    router = _router(_scorer())
    assert router.app_features == {"savings": "number", "purpose": "text"}
    got = []
    for b in read_batches(
        parquet,
        router.hasher,
        partner_ids=[p.id for p in router.strategy.partners],
        features=router.app_features,
    ):
        out = router.decide_columns(b.cols)
        got += to_decisions(out, b.cols.application_id, router.strategy.version)
    assert [(type(d), d.pd, d.reasons) for d in got] == [(type(d), d.pd, d.reasons) for d in want]


def test_a_missing_feature_is_refused_naming_it(traffic, tmp_path):
    apps, parquet = traffic
    router = _router(_scorer())
    no_savings = msgspec.structs.replace(apps[0], features={"purpose": "car"})
    with pytest.raises(InputError, match=r"features\.savings"):
        router.decide(no_savings)
    with pytest.raises(InputError, match=r"features\.savings"):
        router.decide_batch([apps[1], no_savings])
    text = msgspec.structs.replace(apps[0], features={"savings": "lots"})
    with pytest.raises(InputError, match=r"features\.savings"):
        router.decide(text)
    # An absent category is no flag at all (as OneHotEncoder(handle_unknown="ignore")).
    router.decide(msgspec.structs.replace(apps[2], features={"savings": 10.0}))
    # Replay: a file without the column is refused naming it; a bad value rejects its row.
    table = pq.read_table(parquet)
    pq.write_table(table.drop(["savings"]), tmp_path / "no.parquet")
    ids = [p.id for p in router.strategy.partners]
    with pytest.raises(TrafficError, match="missing column `savings`"):
        list(read_batches(tmp_path / "no.parquet", router.hasher, partner_ids=ids,
                          features=router.app_features))  # fmt: skip
    bad = table.set_column(
        table.schema.get_field_index("savings"),
        "savings",
        pa.array([None, float("nan"), *table.column("savings").to_pylist()[2:]], pa.float64()),
    )
    pq.write_table(bad, tmp_path / "bad.parquet")
    rejects: list = []
    rows = sum(
        len(b.cols)
        for b in read_batches(tmp_path / "bad.parquet", router.hasher, partner_ids=ids,
                              on_rejects=rejects.extend, features=router.app_features)
    )  # fmt: skip
    assert rows == len(apps) - 2
    assert [(r.row, r.field) for r in rejects] == [(1, "features.savings"), (2, "features.savings")]


def test_feature_names_are_checked():
    assert check_features(("age", "savings", "purpose=car")) == ("age", "savings", "purpose=car")
    for bad in (("Savings",), ("purpose==car",), ("a b",), ()):
        with pytest.raises(ModelError):
            check_features(bad)
    with pytest.raises(ModelError, match="both as a number and as one-hot"):
        app_features(("purpose", "purpose=car"))
    fs = FeatureSet(NAMES)
    assert fs.app == {"savings": "number", "purpose": "text"}


def test_an_upstream_pd_decides_through_the_upstream_scorer(traffic, tmp_path):
    apps, _ = traffic
    rng = np.random.default_rng(9)
    pds = rng.uniform(0.001, 0.3, len(apps))
    up = [msgspec.structs.replace(a, features={"upstream_pd": float(p)}) for a, p in zip(apps, pds)]
    router = _router(load_scorer("upstream", "", features=["upstream_pd"]))
    got = [router.decide(a) for a in up]
    assert [d.pd for d in got] == pds.tolist()
    assert got == _router(UpstreamScorer()).decide_batch(up)
    with pytest.raises(InputError, match=r"features\.upstream_pd"):
        router.decide(msgspec.structs.replace(apps[0], features={"upstream_pd": 1.5}))


def test_a_mapping_renames_and_transforms_features_and_still_catches_typos(traffic, tmp_path):
    import pyarrow.csv as pcsv

    from router.core.errors import ConfigError
    from router.ingest.mapping import load_mapping

    apps, parquet = traffic
    table = pq.read_table(parquet)
    # The lender's file: savings in cents under another name, purposes coded as numbers.
    codes = {"car": "1", "cash": "2", "home": "3"}
    table = table.set_column(
        table.schema.get_field_index("savings"),
        "Savings (cents)",
        pa.array([round(v * 100) for v in table.column("savings").to_pylist()], pa.int64()),
    ).set_column(
        table.schema.get_field_index("purpose"),
        "PURPOSE",
        pa.array([codes.get(p) for p in table.column("purpose").to_pylist()], pa.string()),
    )
    pcsv.write_csv(table, tmp_path / "t.csv")
    (tmp_path / "m.toml").write_text(
        '[features]\nsavings = "Savings (cents)"\npurpose = "PURPOSE"\n\n'
        "[transforms.savings]\nscale = 0.01\n\n"
        '[transforms.purpose]\nmap = { "1" = "car", "2" = "cash", "3" = "home" }\n'
    )
    router = _router(_scorer())
    got = []
    for b in read_batches(
        tmp_path / "t.csv",
        router.hasher,
        partner_ids=[p.id for p in router.strategy.partners],
        mapping=load_mapping(tmp_path / "m.toml"),
        features=router.app_features,
    ):
        got += [d.pd for d in to_decisions(router.decide_columns(b.cols), b.cols.application_id,
                                           router.strategy.version)]  # fmt: skip
    want = [d.pd for d in _router(_scorer()).decide_batch(apps)]
    assert np.allclose(got, want, rtol=0, atol=1e-12)
    # A misspelt field is still an error naming its line; a feature must be listed first.
    (tmp_path / "bad.toml").write_text(
        '[features]\nsavings = "S"\n\n[transforms.savngs]\nscale = 2\n'
    )
    with pytest.raises(ConfigError, match=r"line 4: transforms.savngs: unknown field"):
        load_mapping(tmp_path / "bad.toml")
    (tmp_path / "bad2.toml").write_text('[features]\nbureau_score = "S"\n')
    with pytest.raises(ConfigError, match=r"features.bureau_score"):
        load_mapping(tmp_path / "bad2.toml")


def test_features_are_part_of_the_content_a_retry_is_checked_against(traffic):
    """Same id, other features: an idempotency conflict, as for any other field; the same
    features in another order or as 3 against 3.0 are the same content. One row's
    fingerprint equals its batch's, features or none."""
    from router.core.columns import _fingerprints, from_applications, row_from_application
    from router.core.errors import IdempotencyConflict
    from router.core.identity import Hasher

    apps, _ = traffic
    router = _router(_scorer())
    first = router.decide(apps[0])
    same = msgspec.structs.replace(apps[0], features=dict(reversed(list(apps[0].features.items()))))
    assert router.decide(same) == first
    other = msgspec.structs.replace(
        apps[0], features={**apps[0].features, "savings": apps[0].features["savings"] + 1}
    )
    with pytest.raises(IdempotencyConflict):
        router.decide(other)
    hasher = Hasher(b"fingerprint-features-key")
    ints = {"savings": 3, "purpose": "car"}
    mixed = [
        *apps[:20],
        msgspec.structs.replace(apps[20], features={}),
        msgspec.structs.replace(apps[21], features=ints),
    ]
    as_float = msgspec.structs.replace(apps[21], features={"savings": 3.0, "purpose": "car"})
    rows = [row_from_application(a, hasher).fingerprint for a in mixed]
    assert rows == from_applications(mixed, hasher).fingerprint
    assert rows[-1] == row_from_application(as_float, hasher).fingerprint
    # Without features, the fingerprint is what it was before features existed.
    bare = msgspec.structs.replace(apps[0], features={})
    cols = from_applications([bare] * 9, hasher)
    assert (
        not cols.extra and _fingerprints(cols)[0] == row_from_application(bare, hasher).fingerprint
    )
    assert rows[0] != row_from_application(bare, hasher).fingerprint
