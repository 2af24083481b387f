"""Structured logging (structlog) for the command line and replay.

Logs go to standard error as key-value lines (or JSON), never to standard output, which
carries results. Only ids and counts are logged: never a raw identifier, and applicants
appear only as keyed hashes.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO, cast

import msgspec
import structlog

from router.core.redact import _LONG_DIGITS, mask


class _CurrentStderr:
    """Writes to whatever ``sys.stderr`` is now (test runners and CLIs swap it)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


class _LoopBatchedStderr(_CurrentStderr):
    """:class:`_CurrentStderr` that, on a thread running an asyncio event loop, gathers the
    lines written during one turn of the loop and writes them together at its end (one
    system call for a coalesced batch's decision lines, not one a line). Elsewhere (a worker
    thread, no loop) each line is written at once, as before."""

    def __init__(self) -> None:
        self._lines: list[str] = []
        #: The loop the write-out is scheduled on (a loop closed before running it does
        #: not hold later lines back: another loop schedules its own).
        self._scheduled_on: asyncio.AbstractEventLoop | None = None
        atexit.register(self._write_out)

    def write(self, text: str) -> int:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return sys.stderr.write(text)
        self._lines.append(text)
        if self._scheduled_on is not loop:
            self._scheduled_on = loop
            loop.call_soon(self._write_out)
        return len(text)

    def flush(self) -> None:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            self._write_out()
        # (on the loop: written at the end of this turn)

    def _write_out(self) -> None:
        self._scheduled_on = None
        if self._lines:
            text, self._lines = "".join(self._lines), []
            sys.stderr.write(text)
            sys.stderr.flush()


#: Fields that would hold a raw personal identifier: never written, whoever logs them.
_PERSONAL = frozenset({"national_id", "phone", "id_number", "name"})


def redact(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """A structlog processor: drops the values of personal fields and masks every run of
    11 or more digits in the text of the others (an identifier quoted in a message)."""
    for key, value in event.items():
        if key in _PERSONAL:
            event[key] = "<withheld>"
        elif type(value) is str and len(value) >= 11 and _LONG_DIGITS.search(value):
            event[key] = mask(value)
        elif isinstance(value, str) and type(value) is not str:  # (a str subclass)
            event[key] = mask(str(value))
    return event


_json = msgspec.json.Encoder(enc_hook=repr)  # (what JSON cannot hold is logged as its repr)


def _dumps(event: Any, **_: Any) -> str:
    return _json.encode(event).decode()


def configure(level: str = "info", fmt: str = "console", *, batched: bool = False) -> None:
    """Configure structlog: ``level`` names the lowest level shown; ``fmt`` is ``console``
    or ``json``; ``batched``: on an event loop's thread, the lines of one turn of the loop
    are written together at its end (the service)."""
    renderer = (
        structlog.processors.JSONRenderer(serializer=_dumps)
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            redact,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        # (_CurrentStderr has the two methods a text stream needs here.)
        logger_factory=structlog.PrintLoggerFactory(
            cast(TextIO, _LoopBatchedStderr() if batched else _CurrentStderr())
        ),
        cache_logger_on_first_use=False,
    )


def get_logger(name: str):
    """A logger carrying ``logger=name``.

    The package never configures structlog on its own (the command line does, when asked
    with ``--log-level``/``--log-format``): while the embedding application has not
    configured it, these loggers write warnings and errors to standard error through a
    private pipeline (structlog's own default would print everything to standard output,
    which carries results); once it has, they follow its configuration.
    """
    return _LibraryLogger(name)


class _LibraryLogger:
    """Resolves, at each call, to the host's structlog or to a private stderr logger."""

    __slots__ = ("_name", "_own", "_bound", "_config")

    def __init__(self, name: str):
        self._name = name
        self._own = None
        self._bound: Any = None
        self._config: Any = None

    def _target(self):
        if structlog.is_configured():
            # Bound once per configuration (binding a logger on every call cost more than
            # rendering the line): a new ``structlog.configure`` brings new processors.
            config = structlog.get_config()
            key = (id(config["processors"]), config["wrapper_class"], config["logger_factory"])
            if self._config != key:
                self._bound, self._config = structlog.get_logger().bind(logger=self._name), key
            return self._bound
        if self._own is None:
            self._own = structlog.wrap_logger(
                structlog.PrintLogger(cast(TextIO, _CurrentStderr())),
                processors=[
                    structlog.processors.add_log_level,
                    structlog.processors.TimeStamper(fmt="iso", utc=True),
                    redact,
                    structlog.dev.ConsoleRenderer(colors=False),
                ],
                wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
            ).bind(logger=self._name)
        return self._own

    def __getattr__(self, attr: str):
        return getattr(self._target(), attr)
