"""The shadow challenger: a second strategy decided beside the champion for a fixed share
of the traffic, chosen by applicant (the same applicants every time, in every worker),
never answered and never reserving anything in the real store.

The challenger decides on a store of its own in the worker's memory: its caps count only
the shadowed share in that worker, so its quota refusals say little; its rules, scores,
coverage test and partner choice are what it would decide. Each shadowed application
writes one JSON line to the shadow log — its id and amount, the champion's and the
challenger's outcome, partner and expected value — which ``referral-router compare
--shadow-log FILE`` turns into the live swap sets (:func:`router.replay.compare.swap_matrix`).
Lines are appended whole (one ``write`` each, well under the size the kernel appends
atomically), so several workers may share a log.
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path
from typing import Any

import msgspec

from router.core.config import Strategy, load_strategy
from router.core.identity import Hasher
from router.core.logs import get_logger
from router.core.messages import Application, Decision
from router.decide.engine import Router
from router.store.memory import MemoryQuotaStore

_log = get_logger("shadow")


class Side(msgspec.Struct, kw_only=True):
    """One strategy's decision of a shadowed application."""

    outcome: str
    partner: str | None
    expected_value: int
    strategy_version: str


class ShadowLine(msgspec.Struct, kw_only=True):
    """A line of the shadow log."""

    application_id: str
    requested_amount: int
    champion: Side
    challenger: Side


def side(d: Decision) -> Side:
    value = getattr(d, "expected_value", getattr(d, "expected_profit", 0))
    return Side(
        outcome=str(d.__struct_config__.tag),
        partner=getattr(d, "partner_id", None),
        expected_value=int(value or 0),
        strategy_version=d.strategy_version,
    )


class Shadow:
    """The challenger, the share it sees and the log it writes."""

    def __init__(self, strategy: str | Strategy, share: float, log: str | Path, hasher: Hasher):
        if not 0.0 < share <= 1.0:
            from router.core.errors import ConfigError

            raise ConfigError(f"the shadow share must be in (0, 1] (value: {share!r})")
        self.strategy = strategy if isinstance(strategy, Strategy) else load_strategy(strategy)
        self.share = share
        self.hasher = hasher
        self.router = Router(self.strategy, MemoryQuotaStore(validate=False))
        self._fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        self._lock = threading.Lock()  # (one challenger router: its walks one at a time)
        self.failures = 0

    def sees(self, app: Application) -> bool:
        """Whether the applicant is in the shadowed share (by a hash of its token)."""
        token = app.applicant_token or self.hasher.token(app.national_id or "")
        h = int.from_bytes(hashlib.blake2b(token.encode(), digest_size=8).digest(), "big")
        return h < self.share * 2**64

    def decide(self, apps: list[Application], champion: list[Decision]) -> None:
        """Decide the shadowed ones among ``apps`` and log them beside the champion's
        decisions; a failure is logged and counted, never raised (the champion's answer
        is given whatever happens here)."""
        picked = [i for i, a in enumerate(apps) if self.sees(a)]
        if not picked:
            return
        try:
            with self._lock:
                mine = [self.router.decide(apps[i]) for i in picked]
            lines = b"".join(
                msgspec.json.encode(
                    ShadowLine(
                        application_id=apps[i].application_id,
                        requested_amount=apps[i].requested_amount,
                        champion=side(champion[i]),
                        challenger=side(d),
                    )
                )
                + b"\n"
                for i, d in zip(picked, mine)
            )
            os.write(self._fd, lines)
        except Exception as exc:  # (the shadow never fails a request)
            self.failures += 1
            _log.error("shadow.failed", error=f"{type(exc).__name__}: {exc}")

    def close(self) -> None:
        os.close(self._fd)


def read_shadow_log(path: str | Path) -> tuple[Any, Any]:
    """The shadow log as two decision tables (champion, challenger) over the same
    applications, the last line of each application kept (a retry logs it again)."""
    import pyarrow as pa

    last: dict[str, ShadowLine] = {}
    dec = msgspec.json.Decoder(ShadowLine)
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            if raw.strip():
                try:
                    line = dec.decode(raw)
                except msgspec.DecodeError as exc:
                    from router.core.errors import TrafficError

                    raise TrafficError(f"{path}: line {n}: {exc}") from None
                last[line.application_id] = line

    def table(which: str) -> Any:
        rows = [getattr(x, which) for x in last.values()]
        return pa.table(
            {
                "application_id": list(last),
                "requested_amount": [x.requested_amount for x in last.values()],
                "outcome": [r.outcome for r in rows],
                "partner": [r.partner for r in rows],
                "expected_value": [r.expected_value for r in rows],
            }
        )

    return table("champion"), table("challenger")
