"""uvicorn's httptools protocol with each response sent in one write.

uvicorn writes a response's head when the app sends ``http.response.start`` and its body
when the app sends the body: two ``send`` system calls and two TCP segments for every
decision, and on loopback each send also delivers the segment and wakes the reader. Under
load the head's write alone was a fifth of a worker's CPU (py-spy, GIL-holding samples).
Here the transport holds a write until the next one (the body, sent in the same turn of
the event loop) and sends both together; whatever is still held at the end of that turn is
sent then, so nothing waits longer than one loop iteration and the order never changes.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class _OneWriteTransport:
    """A transport that sends two consecutive writes of one loop turn as one."""

    __slots__ = ("_transport", "_loop", "_held")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop):
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None

    def write(self, data: bytes) -> None:
        held = self._held
        if held is None:
            self._held = bytes(data)
            self._loop.call_soon(self.flush)
        else:
            self._held = None
            self._transport.write(held + data)

    def flush(self) -> None:
        """Send what is held (at the end of the loop turn, or before any other call)."""
        held = self._held
        if held is not None:
            self._held = None
            # (a connection lost in between: the peer is gone, and uvloop raises on a
            # write to a closed transport where asyncio only counts it)
            if not self._transport.is_closing():
                self._transport.write(held)

    def __getattr__(self, name: str) -> Any:
        # Anything else — close, writelines, pause_reading, get_extra_info… — sees the
        # stream as written so far. (Private names are never the transport's business: an
        # instance not yet initialised must not recurse through here.)
        if name.startswith("_"):
            raise AttributeError(name)
        self.flush()
        return getattr(self._transport, name)


class OneWriteHttpToolsProtocol(HttpToolsProtocol):
    """:class:`HttpToolsProtocol` whose responses go out in one write each (see above)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(_OneWriteTransport(transport, self.loop))  # type: ignore[arg-type]
