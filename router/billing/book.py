"""What billing needs to know about partners beyond the snapshot on each referral: their
statement time zone, returns policy, and the close rule — taken from the strategy."""

from __future__ import annotations

from dataclasses import dataclass, field

from router.core.config import BillingPolicy, ReturnsPolicy, Strategy


@dataclass(frozen=True)
class BillingBook:
    """Partner time zones and returns policies, the branch partner and the grace period.

    A partner the book does not know (dropped from the partner book after it was referred
    to) is billed in ``timezone`` under the default returns policy.
    """

    timezone: str = "Asia/Shanghai"
    zones: dict[str, str] = field(default_factory=dict)
    returns: dict[str, ReturnsPolicy] = field(default_factory=dict)
    branch_partner: str | None = None
    branch_reserve_ppm: int = 0
    branch_fixed_return_ppm: int = 0
    branch_profit_share_ppm: int = 0
    branch_funder_loss_ppm: int = 0
    branch_return_model: str = "fixed"
    policy: BillingPolicy = BillingPolicy()

    @classmethod
    def from_strategy(cls, s: Strategy) -> BillingBook:
        """The billing view of a strategy's partner book and branch."""
        b = s.branch
        return cls(
            timezone=s.timezone,
            zones={p.id: p.timezone for p in s.partners}
            | ({b.partner_id: s.timezone} if b else {}),
            returns={p.id: p.returns for p in s.partners},
            branch_partner=b.partner_id if b else None,
            branch_reserve_ppm=ppm(b.reserve_rate) if b else 0,
            branch_fixed_return_ppm=ppm(b.fixed_return) if b else 0,
            branch_profit_share_ppm=ppm(b.profit_share) if b else 0,
            branch_funder_loss_ppm=ppm(b.funder_loss_share) if b else 0,
            branch_return_model=b.return_model if b else "fixed",
            policy=s.billing,
        )

    def tz_of(self, partner_id: str) -> str:
        """The partner's statement time zone."""
        return self.zones.get(partner_id, self.timezone)

    def returns_of(self, partner_id: str) -> ReturnsPolicy:
        """The partner's returns policy."""
        return self.returns.get(partner_id, ReturnsPolicy())


def ppm(rate: float) -> int:
    """A rate as whole parts per million (billing multiplies integers only)."""
    return int(rate * 1_000_000 + 0.5)  # (rates are >= 0: half up)


def share(amount: int, parts_per_million: int) -> int:
    """``amount`` × rate, rounded half up to a whole minor unit, in integer arithmetic."""
    return (amount * parts_per_million + 500_000) // 1_000_000
