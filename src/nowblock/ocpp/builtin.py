"""The control ``serve`` runs until the real controller (``nowblock.control``) takes over.

Whenever a transaction starts or stops, a car reports its needs, or a station reconnects
(and every ``refresh_s`` anyway, before TxProfiles expire), every running transaction gets an
equal share of the grid connection, capped at its maximum and repaired by
:func:`nowblock.interface.make_safe` against every fuse phase, sent as a TxProfile. No
forecast and no base load: this is the safe floor under the product, not the product.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from nowblock.interface import make_safe, root_index

if TYPE_CHECKING:  # pragma: no cover
    from nowblock.ocpp.server import CentralSystem

log = logging.getLogger(__name__)
_REPLAN_ON = {"start", "stop", "needs", "connect"}


def equal_share_a(snapshot) -> pd.Series:
    """Per session [A]: the grid connection's weakest phase split equally, capped at each car's
    maximum, then made safe for every fuse phase."""
    cars = snapshot.cars
    if cars.empty:
        return pd.Series(dtype=float, name="current_a")
    cars = cars.copy()
    # make_safe orders switch-offs by time left; a car that told us nothing counts as leaving late.
    late = (pd.Timestamp(snapshot.time) + pd.Timedelta(hours=12)).as_unit(cars["departure"].dt.unit)
    cars["departure"] = cars["departure"].fillna(late)
    snap = replace(snapshot, cars=cars)
    share = snapshot.site.limits_a[root_index(snapshot.site)].min() / len(cars)
    return make_safe(snap, np.minimum(cars["max_current_a"].to_numpy(float), share))


class EqualShareControl:
    """Equal-share TxProfiles on events; ``debounce_s`` [s] gathers simultaneous starts."""

    def __init__(self, cs: "CentralSystem", *, debounce_s: float = 0.2, refresh_s: float | None = None) -> None:
        self.cs = cs
        self.debounce_s = debounce_s
        self.refresh_s = refresh_s if refresh_s is not None else max(cs.tx_validity_s / 3.0, 1.0)
        self._task: asyncio.Task | None = None
        self.last: pd.Series = pd.Series(dtype=float)
        self.rounds = 0

    def start(self) -> None:
        """Begin listening to the central system's events."""
        self._sub = self.cs.events()
        self._task = self.cs.spawn(self._run(), name="equal-share-control")

    async def stop(self) -> None:
        """Stop listening."""
        if self._task is not None:
            self._sub.close()  # ends the loop at its next read
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time() + self.refresh_s
        while True:
            try:
                ev = await self._sub.get(timeout=max(due - loop.time(), 0.0))
            except StopAsyncIteration:
                return
            except TimeoutError:
                await self.replan(force=True)
                due = loop.time() + self.refresh_s
                continue
            if ev.kind not in _REPLAN_ON:
                continue
            await asyncio.sleep(self.debounce_s)
            await self.replan(force=ev.kind == "connect")

    async def replan(self, force: bool = False) -> None:
        """Compute shares and send those that changed (all of them with ``force``).

        Two waves, so the block passes through no state worse than before: first new
        transactions (at most their fail-safe share, listed first so their TxProfile leaves
        first) and every limit that goes down; then every limit that goes up.
        """
        snap = self.cs.state.block_snapshot()
        target = equal_share_a(snap)
        if target.empty:
            self.last = target
            return
        cars = snap.cars
        prev = self.last.reindex(target.index)
        new = prev.isna()
        changed = new | ((target - prev).abs() > 1e-9) | force
        failsafe = cars["charge_point_id"].map(self.cs.failsafe_a).astype(float)
        interim = target.where(~new, np.minimum(target, failsafe))
        down = changed & ~new & (target < prev)
        rest = (new & (target > interim)) | (changed & ~new & ~down)  # raises and refreshes
        key = lambda s: (cars.at[s, "charge_point_id"], int(cars.at[s, "connector_id"]))  # noqa: E731
        waves = [
            {key(s): float(interim[s]) for s in [*target.index[new], *target.index[down]]},
            {key(s): float(target[s]) for s in target.index[rest]},
        ]
        self.rounds += 1
        for limits in waves:
            if limits:
                log.info("equal share: %d limits (%s)", len(limits),
                         ", ".join(f"{k[0]}={v:.1f}A" for k, v in list(limits.items())[:20]))
                await self.cs.set_limits(limits)
        self.last = target
