"""The event stream of the live state: what the controller may react to, and its subscriptions.

:class:`nowblock.ocpp.state.LiveState` emits an :class:`Event` for every plug-in, start, meter
value, needs, stop, disconnect and limit (and, to its listeners only, a ``late_meter`` for a
meter value stamped before the car's last one, kept for the store);
:meth:`~nowblock.ocpp.state.LiveState.subscribe` hands each reader a :class:`Subscription`, an
async iterator that drops the oldest events rather than block the central system when its
reader falls behind.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from nowblock.ocpp.state import LiveState

# The state module's logger: an operator's log filters for "subscriber too slow" keep working.
log = logging.getLogger("nowblock.ocpp.state")

EventKind = Literal[
    "connect", "boot", "status", "plug_in", "unplug", "start", "meter", "needs", "stop", "disconnect", "limit", "seen",
    "clock", "late_meter",
]


@dataclass(frozen=True)
class Event:
    """Something the controller may react to. ``data`` holds kind-specific values (units in keys)."""

    kind: EventKind
    cp_id: str
    time: datetime
    connector_id: int | None = None
    transaction_id: str | None = None
    data: dict[str, Any] = field(default_factory=dict)


class Subscription:
    """An async iterator of :class:`Event`; a slow reader loses the oldest events, never blocks."""

    def __init__(self, owner: "LiveState", maxsize: int) -> None:
        self._owner = owner
        self._queue: asyncio.Queue[Event | None] = asyncio.Queue(maxsize)
        self.dropped = 0

    def _put(self, ev: Event | None) -> None:
        while True:
            try:
                self._queue.put_nowait(ev)
                return
            except asyncio.QueueFull:
                self._queue.get_nowait()
                self.dropped += 1
                if self.dropped == 1 or self.dropped % 1000 == 0:
                    log.warning("event subscriber too slow: %d events dropped", self.dropped)

    def __aiter__(self) -> "Subscription":
        return self

    async def __anext__(self) -> Event:
        ev = await self._queue.get()
        if ev is None:
            raise StopAsyncIteration
        return ev

    async def get(self, timeout: float | None = None) -> Event:
        """Next event (``TimeoutError`` after ``timeout`` [s]; ``StopAsyncIteration`` once closed)."""
        # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation that races an item.
        async with asyncio.timeout(timeout):
            ev = await self._queue.get()
        if ev is None:
            raise StopAsyncIteration
        return ev

    def close(self) -> None:
        """Stop receiving; a pending iteration ends."""
        self._owner._subs.discard(self)
        self._put(None)
