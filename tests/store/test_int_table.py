"""The array hash table (router.store.int_table) against a Python dict, under churn.

Small capacities and few distinct keys force long probe runs, wrap-around at the table's
end and deletions in the middle of runs: the cases backward-shift deletion must get right.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from router.store import int_table as T

_KEY = st.tuples(
    st.integers(-3, 3), st.integers(-(2**63), 2**63 - 1) | st.integers(0, 5), st.just(0)
)
_OPS = st.lists(
    st.tuples(st.sampled_from(["put", "del", "get"]), _KEY, st.integers(-(2**40), 2**40)),
    max_size=300,
)


def _get(table, k):
    i = T.find(table, *k)
    return None if i < 0 else (int(table[0][i, T.V0]), int(table[0][i, T.V1]))


@settings(max_examples=200, deadline=None)
@given(ops=_OPS, capacity=st.sampled_from([2, 4, 8, 64]))
def test_table_matches_a_dict(ops, capacity):
    table, ref = T.new_table(capacity), {}
    for op, k, v in ops:
        if op == "put":
            table = T.grown(table, 1)
            T.put(table, *k, v, -v)
            ref[k] = (v, -v)
        elif op == "del":
            i = T.find(table, *k)
            assert (i >= 0) == (k in ref)
            if i >= 0:
                T.remove_at(table, i)
                del ref[k]
        assert _get(table, k) == ref.get(k)
        assert int(table[1][0]) == len(ref)
        assert 2 * len(ref) <= T.capacity(table)  # never more than half full
    assert T.items(table) == ref
    for k, v in ref.items():
        assert _get(table, k) == v


def test_grown_keeps_entries_and_only_grows_when_short():
    table = T.new_table(8)
    for k in range(4):
        T.put(table, k, 1, 2, k, k)
    assert T.room(table) == 0
    assert T.grown(table, 0) is table
    bigger = T.grown(table, 100)
    assert T.capacity(bigger) == 256 and T.room(bigger) == 124
    assert T.items(bigger) == T.items(table) == {(k, 1, 2): (k, k) for k in range(4)}


def test_full_runs_wrap_around_the_end():
    # Capacity 2 with one entry: a probe from the last index wraps to the first.
    table = T.new_table(2)
    T.put(table, 5, 5, 5, 1, 1)
    assert T.find(table, 6, 6, 6) == -1
    T.remove_at(table, T.find(table, 5, 5, 5))
    assert T.items(table) == {} and int(table[1][0]) == 0
