"""The boundary validates (issue 9, finding 7): an application however it was built, and
every argument of the store API, gets an error naming the field and value — and nothing
is written."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec
import pytest

from router.core.errors import InputError, RouterError
from router.store import Bucket, CapLimit, quota_store_from_url
from router.testing import make_application

GOOD = make_application()
BAD = [
    ("application_id", ""),
    ("application_id", "{a:x}"),
    ("application_id", "x" * 10_000),
    ("requested_amount", -1),
    ("requested_amount", 10**30),
    ("requested_amount", 0),
    ("received_at", datetime(2026, 11, 2, 2, 0)),  # naive
    ("received_at", datetime(1969, 12, 31, tzinfo=UTC)),
    ("dti", float("nan")),
    ("max_apr", float("inf")),
    ("age", -3),
    ("region", "abc"),
    ("consent", ["Not A Partner"]),
    ("term_months", 1.5),
]


def _built(field, value):
    # msgspec validates when decoding, not in the constructor: this is what an embedding
    # caller's own code can hand the router.
    return msgspec.structs.replace(GOOD, **{field: value})


@pytest.mark.parametrize("kind", ["memory", "array", "redis"])
@pytest.mark.parametrize("field,value", BAD, ids=[f"{f}={str(v)[:12]}" for f, v in BAD])
def test_invalid_application_raises_naming_field_and_writes_nothing(
    make_router, store_factory, kind, field, value
):
    store = store_factory(kind)
    router = make_router(store=store)
    app = _built(field, value)
    with pytest.raises(InputError) as err:
        router.decide(app)
    assert err.value.field == field
    assert field in str(err.value)
    assert len(str(err.value)) < 400  # a 10,000-character id is not echoed whole
    with pytest.raises(InputError) as in_batch:  # one bad one: the batch writes nothing
        router.decide_batch([GOOD, app, _built("application_id", "other")])
    # (a batch is checked together, in one pass: the same error as one by one)
    assert (in_batch.value.field, str(in_batch.value)) == (field, str(err.value))
    assert list(store.ledger()) == []
    if kind == "redis":
        assert store.client.keys(f"{store.prefix}*") == []
    else:
        assert len(store._decisions) == 0


def test_a_batch_names_its_first_invalid_application_and_refuses_other_types(make_router):
    router = make_router()
    apps = [GOOD, _built("age", -3), _built("region", "abc")]
    with pytest.raises(InputError) as err:
        router.decide_batch(apps)
    assert err.value.field == "age"
    with pytest.raises(InputError) as err:
        router.decide_batch([GOOD, {"application_id": "x"}])
    assert err.value.field == "application"
    assert list(router.store.ledger()) == []


def test_raw_identifier_is_never_echoed():
    app = _built("national_id", "12")  # too short
    from router.core.messages import validate_application

    with pytest.raises(InputError) as err:
        validate_application(app)
    assert "12'" not in str(err.value) and "withheld" in str(err.value)


@pytest.mark.parametrize(
    "make,field",
    [
        (lambda: CapLimit("week", 1, None), "window"),
        (lambda: CapLimit("day", -1, None), "count"),
        (lambda: CapLimit("day", 1, 1.5), "amount"),
        (lambda: Bucket("p1", (CapLimit("day", 1, None),), "Mars/Olympus"), "timezone"),
        (lambda: Bucket("p1", (CapLimit("day", 1, None),), "UTC", dedupe_ms=-1), "dedupe_ms"),
        (lambda: Bucket("p 1", (), "UTC"), "bucket"),
    ],
)
def test_store_arguments_are_checked(make, field):
    with pytest.raises(InputError) as err:
        make()
    assert err.value.field == field


@pytest.mark.parametrize("kind", ["memory", "array", "redis", "cluster"])
@pytest.mark.parametrize("fp", [-1, 2**64, 1.5])
def test_bad_fingerprint_is_an_input_error(store_factory, kind, fp):
    store = store_factory(kind)
    with pytest.raises(InputError) as err:
        store.remember_many(["a1"], [fp], [b"x"], [0])
    assert err.value.field == "fingerprint"


@pytest.mark.parametrize(
    "url",
    [
        "postgres://x",
        "redis://127.0.0.1:notaport/0",
        "redis://127.0.0.1:6379/0?timeout_ms=fast",
        "redis://127.0.0.1:6379/0?timeuot_ms=5",
        "redis://127.0.0.1:6379/0?prefix={x}",
    ],
)
def test_bad_store_url_is_a_router_error(url):
    with pytest.raises(RouterError):
        quota_store_from_url(url)
