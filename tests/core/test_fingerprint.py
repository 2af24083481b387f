"""The vectorised and the plain-Python fingerprint paths agree bit for bit."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from router.core.columns import _fingerprints, _fingerprints_py, from_applications
from router.core.fingerprint import combine, combine_py, hash_string_py, hash_strings
from router.core.identity import Hasher
from router.testing import make_application


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(max_size=40), min_size=1, max_size=20))
def test_hash_strings_paths_agree(values):
    assert hash_strings(values).tolist() == [hash_string_py(v) for v in values]


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.lists(st.integers(0, 2**64 - 1), min_size=3, max_size=3), min_size=1, max_size=10)
)
def test_combine_paths_agree(rows):
    cols = [np.array([r[k] for r in rows], dtype=np.uint64) for k in range(3)]
    assert combine(cols, len(rows)).tolist() == [combine_py(r) for r in rows]


def test_row_fingerprints_agree_and_see_every_field():
    h = Hasher(b"fingerprint-key-000")
    apps = [
        make_application(
            application_id=f"a{i}",
            age=30 + i,
            dti=0.1 * i,
            consent=["bank_a"] if i % 2 else "any",
            employer=None if i % 3 else "Acme",
            channel="platform",
        )
        for i in range(12)
    ]
    cols = from_applications(apps, h)
    assert _fingerprints(cols) == _fingerprints_py(cols)
    assert len(set(_fingerprints(cols))) == 12
    base = make_application()
    for change in (
        {"age": 33},
        {"dti": 0.31},
        {"consent": "none"},
        {"max_apr": 0.19},
        {"employer": "Other"},
        {"region": "310100"},
        {"fraud_flag": True},
    ):
        other = make_application(**change)
        assert from_applications([base], h).fingerprint != from_applications([other], h).fingerprint


def test_one_record_packs_like_the_columns():
    import numpy as np

    from router.decide.outcomes import Outcomes

    cols = Outcomes(
        kind=np.array([2, 3], dtype=np.int8),
        partner=["plat_b", ""],
        bits=np.array([5, 2**40], dtype=np.uint64),
        value=np.array([1234, 0]),
        apr=np.array([0.18, np.nan]),
        margin=np.array([-0.01, 0.02]),
        pd=np.array([0.2, 0.5]),
        degraded=np.array([False, False]),
    )
    for i in range(2):
        one = Outcomes(
            kind=cols.kind[i : i + 1],
            partner=cols.partner[i : i + 1],
            bits=cols.bits[i : i + 1],
            value=cols.value[i : i + 1],
            apr=cols.apr[i : i + 1],
            margin=cols.margin[i : i + 1],
            pd=cols.pd[i : i + 1],
            degraded=cols.degraded[i : i + 1],
        )
        assert one.records() == [cols.records()[i]]
