"""The fail-safe: every station holds a default limit that keeps the block safe without us.

At boot the central system installs each station's fail-safe TxDefaultProfile (its share of the
connection with the worst other load, :func:`nowblock.seam.failsafe_current_a`). It lives a
week, and a restarted ``serve`` does not know what the chargers hold, so :class:`FailsafeKeeper`
re-installs it wherever the live state knows of none that outlasts the next while.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time as _time

import pandas as pd

log = logging.getLogger(__name__)


def first_limit_a(profile, voltage_v: float) -> float:
    """The first period's limit of ``profile`` in amperes per phase (watts over the phases it names, else 1)."""
    period = profile.periods[0]
    if profile.unit == "W":
        return float(period.limit) / (voltage_v * (period.number_phases or 1))
    return float(period.limit)


def failsafe_missing(state, failsafe_a: pd.Series, voltage_v: float, now: pd.Timestamp,
                     horizon: pd.Timedelta) -> list[str]:
    """Stations that should hold the fail-safe TxDefaultProfile but, as far as ``state`` knows,
    hold none at or below it that outlasts ``now + horizon``.

    Only stations that are connected and known to be past their BootNotification count (booted
    in this process, or running a transaction): a charger must not be sent profiles before it
    is accepted.
    """
    until = now + horizon
    out = []
    for cp_id, fs in failsafe_a.items():
        st = state.stations.get(cp_id)
        if st is None or not st.connected or not (st.boot or state.running(cp_id)):
            continue
        ok = any(p.purpose == "TxDefaultProfile" and p.connector_id == 0 and p.periods
                 and first_limit_a(p, voltage_v) <= fs + 1e-6
                 and (p.valid_to is None or p.valid_to > until) for p in st.profiles)
        if not ok:
            out.append(cp_id)
    return out


class FailsafeKeeper:
    """(Re)installs missing fail-safe defaults in the background.

    Parameters
    ----------
    central : CentralSystem
        Anything with ``state`` and a ``set_default_profile(cp_id, current_a, connector_id=0)``
        coroutine.
    failsafe_a : pandas.Series
        [A per phase] Each charging point's fail-safe limit.
    horizon : pandas.Timedelta
        A default must outlast now plus this to count.
    retry_s : float
        [s, wall clock] At most one attempt per station in this time.
    on_installed : callable, optional
        Called (no arguments) after a default was accepted (the controller re-plans: the room
        held for that station's idle connectors may shrink).
    """

    def __init__(self, central, failsafe_a: pd.Series, *, voltage_v: float, horizon: pd.Timedelta,
                 retry_s: float, on_installed=None) -> None:
        self.central = central
        self.failsafe_a = failsafe_a
        self.voltage_v = float(voltage_v)
        self.horizon = horizon
        self.retry_s = float(retry_s)
        self.on_installed = on_installed
        self.tried: dict[str, float] = {}  # station -> wall time [s] of the last attempt
        self.tasks: set[asyncio.Task] = set()

    def missing(self, now: pd.Timestamp) -> list[str]:
        """See :func:`failsafe_missing`."""
        return failsafe_missing(self.central.state, self.failsafe_a, self.voltage_v, now, self.horizon)

    def keep(self, now: pd.Timestamp) -> None:
        """Start an install for every station missing its default (rate-limited per station)."""
        if not hasattr(self.central, "set_default_profile"):
            return
        wall = _time.monotonic()
        for cp_id in self.missing(now):
            if wall - self.tried.get(cp_id, -math.inf) < self.retry_s:
                continue
            self.tried[cp_id] = wall
            log.info("%s: (re)installing the fail-safe TxDefaultProfile of %.1f A", cp_id, self.failsafe_a[cp_id])
            self.spawn(self._install(cp_id))

    def spawn(self, coro) -> asyncio.Task:
        """Run ``coro`` as a task that :meth:`cancel` stops."""
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def _install(self, cp_id: str) -> None:
        try:
            rec = await self.central.set_default_profile(cp_id, float(self.failsafe_a[cp_id]), connector_id=0)
        except Exception as exc:  # noqa: BLE001 - a charger that fails this is reported, not fatal
            log.warning("%s: fail-safe TxDefaultProfile not installed: %r", cp_id, exc)
            return
        if getattr(rec, "accepted_a", None) is not None and self.on_installed is not None:
            self.on_installed()

    async def cancel(self) -> None:
        """Stop every install still running."""
        for t in list(self.tasks):
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
