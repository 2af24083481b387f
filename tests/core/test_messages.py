import pytest

from router.core.errors import InputError
from router.core.messages import Refer, decode_application, decode_decision, encode

GOOD = (
    b'{"application_id":"a1","received_at":"2026-11-02T10:00:00+08:00","channel":"own_app",'
    b'"national_id":"110101199001011234","age":30,"monthly_income":1000000,"bureau_score":700,'
    b'"inquiries_3m":1,"open_loans":1,"dti":0.3,"worst_dpd_12m":0,"region":"310000",'
    b'"requested_amount":5000000,"term_months":12,"max_apr":0.18,"consent":["bank_a"]}'
)


def test_good_application_decodes():
    app = decode_application(GOOD)
    assert app.consent == ["bank_a"] and app.requested_amount == 5_000_000


@pytest.mark.parametrize(
    "old,new,field",
    [
        (b'"age":30', b'"age":130', "age"),
        (b'"bureau_score":700', b'"bureau_score":1200', "bureau_score"),
        (b'"dti":0.3', b'"dti":-0.1', "dti"),
        (b'"max_apr":0.18', b'"max_apr":0', "max_apr"),
        (b'"requested_amount":5000000', b'"requested_amount":"5000000"', "requested_amount"),
        (b'"region":"310000"', b'"region":"Shanghai"', "region"),
        (b'+08:00"', b'"', "received_at"),
        (b'"channel":"own_app"', b'"channel":"own_app","colour":"red"', "colour"),
        (b'"consent":["bank_a"]', b'"consent":"maybe"', "consent"),
    ],
)
def test_bad_field_is_named(old, new, field):
    with pytest.raises(InputError, match=field):
        decode_application(GOOD.replace(old, new))


def test_identifier_exactly_one():
    with pytest.raises(InputError, match="exactly one"):
        decode_application(GOOD.replace(b'"national_id":"110101199001011234",', b""))


def test_malformed_json():
    with pytest.raises(InputError, match="malformed"):
        decode_application(b"{not json")


def test_decision_roundtrip_tagged():
    d = Refer(
        decision_id="d",
        application_id="a",
        strategy_version="v",
        pd=0.1,
        apr=0.2,
        coverage_margin=-0.01,
        partner_id="p",
        expected_value=123,
    )
    raw = encode(d)
    assert b'"outcome":"refer"' in raw
    back = decode_decision(raw)
    assert back == d
    match back:
        case Refer(partner_id=pid):
            assert pid == "p"
