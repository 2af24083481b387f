"""Structured logging (structlog) for the command line and replay.

Logs go to standard error as key-value lines (or JSON), never to standard output, which
carries results. Only ids and counts are logged: never a raw identifier, and applicants
appear only as keyed hashes.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO, cast

import structlog


class _CurrentStderr:
    """Writes to whatever ``sys.stderr`` is now (test runners and CLIs swap it)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def configure(level: str = "info", fmt: str = "console") -> None:
    """Configure structlog: ``level`` names the lowest level shown; ``fmt`` is ``console``
    or ``json``."""
    renderer = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        # (_CurrentStderr has the two methods a text stream needs here.)
        logger_factory=structlog.PrintLoggerFactory(cast(TextIO, _CurrentStderr())),
        cache_logger_on_first_use=False,
    )


def get_logger(name: str):
    """A bound logger carrying ``logger=name``.

    If the embedding application has not configured structlog, warnings and errors go to
    standard error (structlog's own default would print everything to standard output).
    """
    if not structlog.is_configured():
        configure("warning")
    return structlog.get_logger().bind(logger=name)
