"""A partner reads the referrals made to it over HTTP — signed with its own secret over the
request line — and nothing else: another partner's referral, a kept or declined
application and one never decided all answer the same 404; without a valid signature, a
401. Against a real Redis."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from litestar.testing import TestClient

from router.service.app import Settings, create_app
from router.service.keys import KeyRing, new_key
from router.service.partner_auth import sign
from router.traffic import write_traffic

ROOT = Path(__file__).resolve().parents[2]
STRATEGY = str(ROOT / "configs" / "strategy.toml")
PARTNERS = ["bank_ningyuan", "cfc_heshan", "platform_yunfan", "microloan_qianhai",
            "credit_dongfang", "trust_lantern"]  # fmt: skip
SECRETS = {p: f"{p}-secret-".ljust(40, "x") for p in PARTNERS}


@pytest.fixture
def decided(tmp_path, redis_url):
    """A service with the partners' secrets (no billing database: reads need none) and
    200 applications decided through it: (client, answers by outcome)."""
    secrets = tmp_path / "partners.toml"
    secrets.write_text("".join(f'[[partners]]\nid = "{k}"\nsecret = "{v}"\n'
                               for k, v in SECRETS.items()))  # fmt: skip
    plain, key = new_key("lender", ["decide"])
    lines = write_traffic(tmp_path / "t.jsonl", 200, seed=71, per_day=4000).read_bytes()
    settings = Settings(STRATEGY, redis_url, partner_secrets=str(secrets))
    with TestClient(create_app(settings, KeyRing([key]))) as client:
        h = {"authorization": f"Bearer {plain}"}
        answers = [client.post("/v1/decisions", content=line, headers=h).json()
                   for line in lines.splitlines()]  # fmt: skip
        yield client, answers


def _read(client, partner: str, app_id: str, *, secret: str | None = None,
          ts: int | None = None, signed_path: str | None = None):  # fmt: skip
    path = f"/v1/partner/referrals/{app_id}"
    ts = int(time.time()) if ts is None else ts
    line = f"GET {signed_path or path}".encode()
    h = {"x-partner-id": partner, "x-timestamp": str(ts),
         "x-signature": sign(secret or SECRETS[partner], ts, line)}  # fmt: skip
    return client.get(path, headers=h)


def test_a_partner_reads_its_own_referral_and_nothing_of_anyone_elses(decided):
    client, answers = decided
    refers = [a for a in answers if a["outcome"] == "refer"]
    others = [a for a in answers if a["outcome"] != "refer"]
    assert refers and others
    by_partner = {}
    for a in refers:
        by_partner.setdefault(a["partner_id"], a)
    assert len(by_partner) >= 2, by_partner.keys()
    mine_p, mine = next(iter(by_partner.items()))
    r = _read(client, mine_p, mine["application_id"])
    assert r.status_code == 200, r.text
    fields = ("application_id", "decision_id", "apr", "strategy_version")
    assert r.json() == {"partner_id": mine_p, **{k: mine[k] for k in fields}}
    # Everything a partner may not see answers alike: no partner learns of another's.
    absent = _read(client, mine_p, "A-never-decided")
    assert absent.status_code == 404
    for p, theirs in by_partner.items():
        if p == mine_p:
            continue
        r = _read(client, mine_p, theirs["application_id"])
        assert r.status_code == 404, r.text
        assert r.json()["detail"].replace(theirs["application_id"], "X") == absent.json()[
            "detail"
        ].replace("A-never-decided", "X")
        # ...and the partner it was referred to reads it
        assert _read(client, p, theirs["application_id"]).status_code == 200
    for a in others[:5]:
        assert _read(client, mine_p, a["application_id"]).status_code == 404
    assert 'router_rejected_requests_total{reason="forbidden"}' in client.get("/metrics").text


@pytest.mark.parametrize("how", ["unsigned", "wrong secret", "stale", "another path",
                                 "unknown partner"])  # fmt: skip
def test_without_a_valid_signature_a_partner_reads_nothing(decided, how):
    client, answers = decided
    a = next(a for a in answers if a["outcome"] == "refer")
    p, app_id = a["partner_id"], a["application_id"]
    if how == "unsigned":
        r = client.get(f"/v1/partner/referrals/{app_id}")
    elif how == "wrong secret":
        r = _read(client, p, app_id, secret="z" * 40)
    elif how == "stale":
        r = _read(client, p, app_id, ts=int(time.time()) - 3600)
    elif how == "another path":  # a signature captured for another referral's path
        r = _read(client, p, app_id, signed_path="/v1/partner/referrals/A-other")
    else:
        r = client.get(f"/v1/partner/referrals/{app_id}",
                       headers={"x-partner-id": "nobody", "x-timestamp": str(int(time.time())),
                                "x-signature": "0" * 64})  # fmt: skip
    assert r.status_code == 401, r.text
    assert app_id not in r.text or how == "another path"


def test_a_service_without_partner_secrets_serves_no_partner(redis_url):
    _, key = new_key("lender", ["decide"])
    with TestClient(create_app(Settings(STRATEGY, redis_url), KeyRing([key]))) as client:
        r = client.get("/v1/partner/referrals/A-1", headers={"x-partner-id": "cfc_heshan"})
        assert r.status_code == 404
