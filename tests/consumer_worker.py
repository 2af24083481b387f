"""A ledger consumer in its own process, for the fault tests
(tests/billing/test_billing_consumer.py).

    python tests/consumer_worker.py REDIS_URL DB_URL NAME MODE [MIN_IDLE_MS] [MAX_DELIVERIES]

MODE ``once`` drains and exits; ``run`` runs until SIGTERM; ``die_after_commit`` SIGKILLs
itself after its first database commit, before the XACK; ``die_before_commit`` after
reading its first batch, before anything is committed. It prints the run's summary as JSON.
"""

from __future__ import annotations

import json
import os
import signal
import sys

sys.path.insert(0, os.path.dirname(__file__))

from router.billing import consumer as consumer_mod
from router.billing.book import BillingBook
from router.billing.consumer import ConsumerSettings, LedgerConsumer
from router.billing.db import open_billing
from router.core.config import strategy_from_dict
from router.store.redis import RedisQuotaStore
from router.testing import strategy_dict


def main() -> None:
    redis_url, db, name, mode = sys.argv[1:5]
    min_idle = int(sys.argv[5]) if len(sys.argv) > 5 else 60_000
    max_deliveries = int(sys.argv[6]) if len(sys.argv) > 6 else 5
    book = BillingBook.from_strategy(strategy_from_dict(strategy_dict()))
    store = RedisQuotaStore.from_url(redis_url, timeout_ms=10_000)
    c = LedgerConsumer(
        store,
        open_billing(db),
        book,
        ConsumerSettings(
            name=name,
            batch=50,
            min_idle_ms=min_idle,
            max_deliveries=max_deliveries,
            block_ms=200,
            rescan_s=0.5,
        ),
    )
    if mode == "die_after_commit":
        c._ack = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)  # type: ignore[method-assign]
    elif mode == "die_before_commit":
        real = consumer_mod.apply_entries

        def die(*a, **k):
            os.kill(os.getpid(), signal.SIGKILL)
            return real(*a, **k)

        consumer_mod.apply_entries = die
    signal.signal(signal.SIGTERM, lambda *_: c.stop())
    stats = c.run(once=mode == "once")
    print(json.dumps(stats.summary()), flush=True)


if __name__ == "__main__":
    main()
