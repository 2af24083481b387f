"""Billing by hand: every fee model, rev-share over several periods, returns inside and
outside the window and over the cap, the branch reserve through a charge-off, a late event
after close, postback idempotency — each statement checked against figures worked out here.
Runs on SQLite and on a PostgreSQL database of its own."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from billing_helpers import consume, ingest, pb, ref_entry

from router.billing.book import BillingBook
from router.billing.journal import trial_balance
from router.billing.statements import close_period, render_csv, render_json, statement
from router.core.config import ReturnsPolicy
from router.core.errors import BillingError

SH = ZoneInfo("Asia/Shanghai")
NOW = datetime(2026, 12, 20, tzinfo=SH)


def T(day: int, hour: int = 10, month: int = 11) -> datetime:
    return datetime(2026, month, day, hour, tzinfo=SH)


BOOK = BillingBook(
    timezone="Asia/Shanghai",
    returns={
        "plat_b": ReturnsPolicy(window_days=7, max_rate=0.5, reasons=("duplicate", "fraud")),
        "cfc": ReturnsPolicy(window_days=7, max_rate=0.5, auto_approve=False),
    },
    branch_partner="coop",
    branch_reserve_ppm=30_000,
    branch_fixed_return_ppm=90_000,
    branch_funder_loss_ppm=300_000,
)


def _st(engine, partner, period="2026-11"):
    return statement(engine, partner, period, BOOK)[0]


def test_fee_models_rev_share_and_a_return_by_hand(billing):
    consume(
        billing,
        [
            ref_entry("r1", "plat_b", T(2), fee_per_referral=500, rev_share=0.3),
            ref_entry("r2", "plat_b", T(3), fee_per_referral=500, rev_share=0.3),
            ref_entry("r3", "bank", T(3), fee_per_funded=10_000, rev_share=0.2),
            ref_entry("r4", "cfc", T(4), fee_per_accepted=2_000),
        ],
        BOOK,
        T(4),
    )
    v = ingest(
        billing,
        [
            pb("accepted", "e1", "r2", "plat_b", T(4)),
            pb("funded", "e2", "r2", "plat_b", T(5), amount=1_000_000, apr=0.2, term_months=12),
            pb(
                "repayment",
                "e3",
                "r2",
                "plat_b",
                T(30),
                period="2026-11",
                interest=20_000,
                principal=80_000,
            ),
            pb(
                "repayment",
                "e4",
                "r2",
                "plat_b",
                T(28, month=12),
                period="2026-12",
                interest=19_333,
                principal=80_000,
            ),
            pb("funded", "e5", "r3", "bank", T(6), amount=500_000, apr=0.1, term_months=6),
            pb(
                "repayment",
                "e6",
                "r3",
                "bank",
                T(30),
                period="2026-11",
                interest=4_167,
                principal=80_000,
            ),
            pb("accepted", "e7", "r4", "cfc", T(5)),
            pb("return", "e8", "r1", "plat_b", T(6), reason="duplicate"),
        ],
        BOOK,
        T(30, 23),
    )
    assert [x.status for x in v] == ["applied"] * 8, v
    b = _st(billing, "plat_b")
    # 2 referral fees of 500; 30% of 20,000 interest; r1's fee given back.
    assert b.fees == {"referral": 1000, "accepted": 0, "funded": 0}
    assert (b.rev_share, b.returns, b.total_due) == (6_000, -500, 6_500)
    assert (b.referrals, b.accepted, b.funded, b.returns_approved) == (2, 1, 1, 1)
    ret = next(ln for ln in b.lines if ln.kind == "return")
    assert (ret.referral_id, ret.corrects, ret.amount) == ("r1", "fee:referral:r1", -500)
    # December: 30% of 19,333 = 5,799.9 -> 5,800 (half up, integer arithmetic).
    assert _st(billing, "plat_b", "2026-12").total_due == 5_800
    bank = _st(billing, "bank")
    # 10,000 on funding; 20% of 4,167 = 833.4 -> 833; funding implies acceptance.
    assert (bank.fees["funded"], bank.rev_share, bank.total_due) == (10_000, 833, 10_833)
    assert (bank.accepted, bank.funded) == (1, 1)
    assert _st(billing, "cfc").total_due == 2_000
    with billing.connect() as c:
        assert trial_balance(c) == 0
    # Every line traces to its referral.
    assert all(ln.referral_id for s in (b, bank) for ln in s.lines)
    csv_text = render_csv(b).decode()
    assert csv_text.splitlines()[-1].endswith(",6500,,")


def test_returns_window_reason_cap_funded_and_review(billing):
    consume(
        billing,
        [ref_entry(f"q{i}", "plat_b", T(2), fee_per_referral=300) for i in range(4)]
        + [ref_entry(f"c{i}", "cfc", T(2), fee_per_referral=700) for i in (1, 2)],
        BOOK,
        T(2),
    )
    v = ingest(
        billing,
        [
            pb("return", "x1", "q0", "plat_b", T(10), reason="fraud"),  # 8 days > 7
            pb("return", "x2", "q1", "plat_b", T(3), reason="changed_mind"),
            pb("return", "x3", "q1", "plat_b", T(3), reason="fraud"),  # 1 of 4: ok
            pb("return", "x4", "q2", "plat_b", T(3), reason="fraud"),  # 2 of 4 = 50%: ok
            pb("return", "x5", "q3", "plat_b", T(3), reason="fraud"),  # 3 of 4 > 50%
            pb("return", "x6", "c1", "cfc", T(3), reason="fraud"),  # review policy
            pb("accepted", "x7", "q1", "plat_b", T(4)),  # after an approved return
        ],
        BOOK,
        T(5),
    )
    got = {x.event_id: (x.status, x.reason) for x in v}
    assert got["x1"][0] == "refused" and "7-day return window" in got["x1"][1]
    assert got["x2"][0] == "refused" and "not allowed" in got["x2"][1]
    assert got["x3"][0] == got["x4"][0] == "applied"
    assert got["x5"][0] == "refused" and "over the return cap" in got["x5"][1]
    assert got["x6"][0] == "review"
    assert got["x7"][0] == "refused" and "returned" in got["x7"][1]
    b = _st(billing, "plat_b")
    assert (b.returns, b.total_due, b.returns_approved, b.returns_refused) == (-600, 600, 2, 3)
    assert _st(billing, "cfc").total_due == 1_400  # nothing moves under review
    from router.billing.db import writing
    from router.billing.postback_rules import decide_return

    with writing(billing) as c:
        assert decide_return(c, "x6", True, BOOK, 0).status == "applied"
    assert _st(billing, "cfc").total_due == 700


def test_funded_loan_cannot_be_returned_and_contradictions_are_refused(billing):
    consume(billing, [ref_entry("f1", "plat_b", T(2), fee_per_referral=100)], BOOK, T(2))
    v = ingest(
        billing,
        [
            pb("funded", "y1", "f1", "plat_b", T(3), amount=100_000, apr=0.2, term_months=6),
            pb("funded", "y2", "f1", "plat_b", T(3), amount=100_000, apr=0.2, term_months=6),
            pb("rejected", "y3", "f1", "plat_b", T(3)),
            pb("return", "y4", "f1", "plat_b", T(3), reason="fraud"),
            pb("accepted", "y5", "f1", "other", T(3)),
        ],
        BOOK,
        T(4),
    )
    assert [x.status for x in v] == ["applied", "refused", "refused", "refused", "refused"]
    assert "already funded" in v[1].reason and "not other's" in v[4].reason


def test_late_event_after_close_is_an_adjustment_and_closed_period_reproduces(billing):
    consume(
        billing, [ref_entry("l1", "plat_b", T(2), fee_per_referral=500, rev_share=0.25)], BOOK, T(2)
    )
    ingest(
        billing,
        [pb("funded", "z1", "l1", "plat_b", T(3), amount=10**6, apr=0.2, term_months=12)],
        BOOK,
        T(3),
    )
    # Grace: 5 days after 2026-12-01 00:00 Shanghai.
    with pytest.raises(BillingError, match="grace"):
        close_period(billing, "plat_b", "2026-11", BOOK, int(T(5, 23, month=12).timestamp() * 1000))
    closed = close_period(
        billing, "plat_b", "2026-11", BOOK, int(T(6, 1, month=12).timestamp() * 1000)
    )
    first = render_json(closed), render_csv(closed)
    # A November repayment arrives after the close: December, flagged late.
    ingest(
        billing,
        [
            pb(
                "repayment",
                "z2",
                "l1",
                "plat_b",
                T(29),
                period="2026-11",
                interest=8_000,
                principal=0,
            )
        ],
        BOOK,
        T(7, month=12),
    )
    nov, is_closed = statement(billing, "plat_b", "2026-11", BOOK)
    assert is_closed and (render_json(nov), render_csv(nov)) == first
    dec = _st(billing, "plat_b", "2026-12")
    assert (dec.adjustments, dec.total_due, dec.rev_share) == (2_000, 2_000, 2_000)
    assert [ln.late for ln in dec.lines] == [True]
    with pytest.raises(BillingError, match="already closed"):
        close_period(billing, "plat_b", "2026-11", BOOK, int(NOW.timestamp() * 1000))


def test_branch_reserve_through_a_charge_off(billing):
    consume(
        billing,
        [
            ref_entry("b1", "coop", T(2), outcome="branch", amount=1_000_000),
            ref_entry("b2", "coop", T(2), outcome="branch", amount=2_000_000),
        ],
        BOOK,
        T(2),
    )
    ev = [
        pb("funded", "w1", "b1", "coop", T(3), amount=1_000_000, apr=0.2, term_months=12),
        pb("funded", "w2", "b2", "coop", T(3), amount=2_000_000, apr=0.2, term_months=12),
        # Fixed 9% a year on 1,000,000 outstanding for a month: 7,500.
        pb(
            "repayment",
            "w3",
            "b1",
            "coop",
            T(20),
            period="2026-11",
            interest=16_000,
            principal=100_000,
        ),
        pb("charge_off", "w4", "b1", "coop", T(28), principal=900_000),
    ]
    assert [x.status for x in ingest(billing, ev, BOOK, T(29))] == ["applied"] * 4
    st = _st(billing, "coop")
    br = st.branch
    # Reserve 3% of 3,000,000 = 90,000 absorbs the first 90,000 of the 900,000 loss; of
    # the 810,000 beyond it the funder bears 30% (243,000), the partner owes 567,000.
    assert (br.reserve_deposits, br.losses_absorbed, br.reserve_held) == (90_000, 90_000, 0)
    assert (br.funder_losses, br.partner_loss_share, br.fixed_return) == (243_000, 567_000, 7_500)
    assert (br.loans_funded, br.principal_outstanding) == (3_000_000, 2_000_000)
    # The reserve must again be 3% of the 2,000,000 still out.
    assert br.top_up_due == 60_000
    assert st.total_due == 90_000 + 7_500 + 567_000
    assert st.fees == {"referral": 0, "accepted": 0, "funded": 0}


def test_postbacks_idempotent_conflicting_waiting_and_refused(billing):
    events = [
        pb("accepted", "p1", "u1", "plat_b", T(3)),  # its referral not consumed yet
        pb(
            "repayment", "p2", "u2", "plat_b", T(20), period="2026-11", interest=10_000, principal=0
        ),  # before the loan's funded event
    ]
    v = ingest(billing, events, BOOK, T(3))
    assert [x.status for x in v] == ["waiting", "waiting"]
    consume(
        billing,
        [
            ref_entry("u1", "plat_b", T(2), fee_per_accepted=900),
            ref_entry("u2", "plat_b", T(2), rev_share=0.5),
        ],
        BOOK,
        T(4),
    )
    v = ingest(
        billing,
        [pb("funded", "p3", "u2", "plat_b", T(5), amount=10**6, apr=0.2, term_months=12)],
        BOOK,
        T(5),
    )
    assert v[0].status == "applied"
    assert _st(billing, "plat_b").total_due == 900 + 5_000  # both waiting ones applied
    again = ingest(billing, events, BOOK, T(6))
    assert [x.status for x in again] == ["duplicate", "duplicate"]
    other = pb("accepted", "p1", "u1", "plat_b", T(4))  # same id, other content
    assert ingest(billing, [other], BOOK, T(6))[0].status == "conflict"
    assert _st(billing, "plat_b").total_due == 5_900


def test_consuming_twice_bills_once_and_voids_bill_nothing(billing):
    e = ref_entry("d1", "plat_b", T(2), fee_per_referral=500)
    again = ref_entry("d1", "plat_b", T(2), fee_per_referral=500, entry_id="1-1")
    void = type(e)(e.stream, "2-0", {b"kind": b"void", b"app": b"app_x", b"why": b"caller"})
    assert consume(billing, [e, void], BOOK, T(2)) == {
        "billed": 1,
        "duplicate": 0,
        "void": 1,
        "seen": 0,
    }
    assert consume(billing, [e, again], BOOK, T(3)) == {
        "billed": 0,
        "duplicate": 1,
        "void": 0,
        "seen": 1,
    }
    assert _st(billing, "plat_b").total_due == 500


def test_journal_is_immutable_in_the_database(billing):
    consume(billing, [ref_entry("i1", "plat_b", T(2), fee_per_referral=500)], BOOK, T(2))
    for sql in (
        "UPDATE postings SET amount = 0",
        "DELETE FROM journal_entries",
        "UPDATE journal_entries SET memo = 'x'",
    ):
        with pytest.raises(sa.exc.DBAPIError, match="immutable"), billing.begin() as c:
            c.exec_driver_sql(sql)
    assert _st(billing, "plat_b").total_due == 500


def test_migrations_create_exactly_the_declared_schema(billing):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from router.billing.schema import metadata

    with billing.connect() as c:
        diff = compare_metadata(MigrationContext.configure(c), metadata)
    assert diff == []
