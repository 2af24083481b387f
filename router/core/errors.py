"""The router's one error hierarchy.

Every error the package raises on purpose derives from :class:`RouterError`, so an
embedding caller can catch one type::

    RouterError
    ├── ConfigError            a strategy / partner book that does not validate
    ├── InputError             an application (or traffic row) that does not validate
    ├── ModelError             a scorer file that cannot be loaded or compiled
    ├── StoreError             the quota store failed (backend errors are wrapped once)
    │   └── IdempotencyConflict  same application id, different content
    ├── TrafficError           a traffic file that cannot be read or written
    └── BillingError           the billing database or a billing input (postback, period)
        └── PostbackConflict   the same postback event id with different content
"""

from __future__ import annotations


class RouterError(Exception):
    """Base of every error raised by the router on purpose."""


class ConfigError(RouterError):
    """A configuration file failed validation; the message names file, field path and value."""

    def __init__(self, message: str, *, source: str | None = None, path: str | None = None):
        self.source = source
        self.path = path
        prefix = f"{source}: " if source else ""
        where = f"{path}: " if path else ""
        super().__init__(f"{prefix}{where}{message}")


class InputError(RouterError):
    """An application failed validation; the message names the field and the value."""

    def __init__(self, message: str, *, field: str | None = None, row: int | None = None):
        self.field = field
        self.row = row
        where = f"row {row}: " if row is not None else ""
        super().__init__(f"{where}{message}")


class ModelError(RouterError):
    """A risk model could not be loaded, compiled or applied."""


class StoreError(RouterError):
    """The quota store failed; the original backend error is chained as ``__cause__``."""


class IdempotencyConflict(StoreError):
    """An application id was seen before with different content."""

    def __init__(self, application_id: str):
        self.application_id = application_id
        super().__init__(
            f"application_id {application_id!r} was already decided with different content"
        )


class TrafficError(RouterError):
    """A traffic file could not be read or written."""


class BillingError(RouterError):
    """Billing failed: a database that cannot be opened or migrated, an unbalanced journal
    entry, a period that cannot be closed, a postback file that cannot be read."""


class PostbackConflict(BillingError):
    """A postback event id was seen before with different content (never applied)."""

    def __init__(self, event_id: str):
        self.event_id = event_id
        super().__init__(f"postback event {event_id!r} was already ingested with other content")
