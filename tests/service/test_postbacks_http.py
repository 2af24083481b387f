"""Partner postbacks over HTTP, into a real billing database: signed with the partner's
own secret, inside a time window; a partner can never post for another partner; without a
valid signature nothing reaches billing."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from billing_helpers import consume, ref_entry
from litestar.testing import TestClient

from router.billing.book import BillingBook
from router.billing.db import open_billing
from router.core.config import load_strategy
from router.service.app import Settings, create_app
from router.service.keys import KeyRing, new_key
from router.service.partner_auth import sign

ROOT = Path(__file__).resolve().parents[2]
STRATEGY = str(ROOT / "configs" / "strategy.toml")
T = datetime(2026, 10, 5, 12, tzinfo=UTC)
SECRETS = {"platform_yunfan": "y" * 40, "cfc_heshan": "h" * 40}


@pytest.fixture
def service(tmp_path, redis_url):
    db = tmp_path / "billing.db"
    engine = open_billing(str(db))
    book = BillingBook.from_strategy(load_strategy(STRATEGY))
    consume(engine, [ref_entry("r-yun-1", "platform_yunfan", T, fee_per_accepted=2000),
                     ref_entry("r-hes-1", "cfc_heshan", T, fee_per_accepted=2000)],
            book, T)  # fmt: skip
    secrets = tmp_path / "partners.toml"
    secrets.write_text("".join(f'[[partners]]\nid = "{k}"\nsecret = "{v}"\n'
                               for k, v in SECRETS.items()))  # fmt: skip
    _, key = new_key("lender", ["decide"])
    settings = Settings(STRATEGY, redis_url, billing_db=str(db), partner_secrets=str(secrets))
    with TestClient(create_app(settings, KeyRing([key]))) as client:
        yield client, engine
    engine.dispose()


def _event(eid: str, rid: str, partner: str, kind: str = "accepted") -> dict:
    return {"type": kind, "event_id": eid, "referral_id": rid, "partner_id": partner,
            "occurred_at": "2026-10-06T09:00:00+00:00"}  # fmt: skip


def _post(client, partner: str, body, *, secret: str | None = None, ts: int | None = None,
          headers: dict | None = None):  # fmt: skip
    raw = json.dumps(body).encode()
    ts = int(time.time()) if ts is None else ts
    h = {"x-partner-id": partner, "x-timestamp": str(ts),
         "x-signature": sign(secret or SECRETS.get(partner, "z" * 40), ts, raw)}  # fmt: skip
    return client.post("/v1/postbacks", content=raw, headers=h if headers is None else headers)


def _stored(engine) -> int:
    with engine.connect() as c:
        return c.execute(sa.text("select count(*) from postbacks")).scalar_one()


def test_a_signed_postback_is_applied_once(service):
    client, engine = service
    r = _post(client, "platform_yunfan", _event("e1", "r-yun-1", "platform_yunfan"))
    assert r.status_code == 200, r.text
    assert r.json() == [{"event_id": "e1", "status": "applied", "reason": ""}]
    again = _post(client, "platform_yunfan", [_event("e1", "r-yun-1", "platform_yunfan")])
    assert again.json()[0]["status"] == "duplicate"
    assert _stored(engine) == 1


@pytest.mark.parametrize(
    "how",
    ["no headers", "bad signature", "another's secret", "stale", "future", "unknown partner"],
)
def test_without_a_valid_signature_nothing_reaches_billing(service, how):
    client, engine = service
    ev = _event("e2", "r-yun-1", "platform_yunfan")
    now = int(time.time())
    r = {
        "no headers": lambda: _post(client, "platform_yunfan", ev, headers={}),
        "bad signature": lambda: _post(client, "platform_yunfan", ev, secret="x" * 40),
        "another's secret": lambda: _post(
            client, "platform_yunfan", ev, secret=SECRETS["cfc_heshan"]
        ),  # fmt: skip
        "stale": lambda: _post(client, "platform_yunfan", ev, ts=now - 301),
        "future": lambda: _post(client, "platform_yunfan", ev, ts=now + 301),
        "unknown partner": lambda: _post(client, "bank_ningyuan", ev),
    }[how]()
    assert r.status_code == 401, r.text
    assert _stored(engine) == 0


def test_a_partner_can_never_post_for_another(service):
    client, engine = service
    # An event that names the other partner, signed by this one: refused whole.
    r = _post(client, "platform_yunfan", [_event("e3", "r-yun-1", "platform_yunfan"),
                                          _event("e4", "r-hes-1", "cfc_heshan")])  # fmt: skip
    assert r.status_code == 403 and "cfc_heshan" in r.json()["detail"]
    assert _stored(engine) == 0
    # Its own name on the other partner's referral: the billing rules refuse it.
    r = _post(client, "platform_yunfan", _event("e5", "r-hes-1", "platform_yunfan"))
    assert r.status_code == 200 and r.json()[0]["status"] == "refused", r.text
    with engine.connect() as c:
        fees = c.execute(sa.text("select count(*) from postbacks where status = 'applied'"))
        assert fees.scalar_one() == 0


def test_a_malformed_postback_is_a_400_naming_the_field(service):
    client, engine = service
    bad = {**_event("e6", "r-yun-1", "platform_yunfan"), "occurred_at": "yesterday"}
    r = _post(client, "platform_yunfan", bad)
    assert r.status_code == 400 and "occurred_at" in r.json()["detail"], r.text
    assert _stored(engine) == 0
