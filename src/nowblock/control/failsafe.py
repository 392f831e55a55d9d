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

from nowblock.ocpp.profiles import IDLE_DEFAULT_ID_BASE

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


class IdleDefaults:
    """Keeps idle connectors at a low default while the controller runs, so their share is used.

    A car that plugs in at an idle connector draws that connector's default until the next step
    sends its TxProfile (about a second). Holding room for it on every fuse above it leaves
    capacity unused whenever the block is busy. Instead, each idle connector of a booted,
    connected station gets a TxDefaultProfile of ``limit_a`` (0 A by default) on that connector
    with a short validity, renewed while the controller runs: the car waits a moment for its
    TxProfile, and the room is given to the cars that charge. If the controller dies, the
    profile expires and the station's fail-safe default (connector 0) applies again.

    Parameters
    ----------
    central : CentralSystem
        ``state`` and ``set_default_profile(cp_id, current_a, connector_id=, validity_s=)``.
    site : Site
    limit_a : float
        [A per phase] The idle default (0 A, or the minimum current to let a car start).
    validity_s : float
        [s] Life of each idle default; renewed once half of it has passed.
    retry_s : float
        [s, wall clock] At most one attempt per connector in this time (a station that rejects
        it keeps its fail-safe, which the step then reserves).
    on_installed : callable, optional
        Called after a default was accepted (the controller re-plans with the freed room).
    """

    def __init__(self, central, site, *, limit_a: float = 0.0, validity_s: float = 900.0, retry_s: float = 60.0,
                 on_installed=None) -> None:
        self.central = central
        self.site = site
        self.limit_a = float(limit_a)
        self.validity_s = float(validity_s)
        self.retry_s = float(retry_s)
        self.on_installed = on_installed
        self.tried: dict[tuple[str, int], float] = {}
        self.installed: dict[tuple[str, int], pd.Timestamp] = {}  # connector -> when its default ends
        self.tasks: set[asyncio.Task] = set()

    def due(self, now: pd.Timestamp, running) -> list[tuple[str, int]]:
        """Idle connectors of booted, connected stations whose low default is missing or ends soon."""
        busy = {(str(cp), int(c)) for cp, c in running}
        state = self.central.state
        out = []
        renew = pd.Timedelta(seconds=self.validity_s / 2.0)
        for cp in self.site.charge_points:
            st = state.stations.get(cp.id)
            if st is None or not st.connected or not st.boot:
                continue
            for c in sorted({c for c in st.connectors if c > 0} | {1}):
                if (cp.id, c) in busy:
                    # A transaction's TxProfile rules now; once it ends, renew at once (the
                    # server clears a fallback default the transaction may have left behind).
                    self.installed.pop((cp.id, c), None)
                    self.tried.pop((cp.id, c), None)
                    continue
                ends = self.installed.get((cp.id, c))
                if ends is None or ends - now < renew:
                    out.append((cp.id, c))
        return out

    def keep(self, now: pd.Timestamp, running=()) -> None:
        """Start an install for every idle connector that needs one (rate-limited)."""
        if not hasattr(self.central, "set_default_profile"):
            return
        wall = _time.monotonic()
        for key in self.due(now, running):
            if wall - self.tried.get(key, -math.inf) < self.retry_s:
                continue
            self.tried[key] = wall
            task = asyncio.get_running_loop().create_task(self._install(key, now))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _install(self, key: tuple[str, int], now: pd.Timestamp) -> None:
        cp_id, c = key
        try:
            rec = await self.central.set_default_profile(cp_id, self.limit_a, connector_id=c,
                                                         validity_s=int(math.ceil(self.validity_s)),
                                                         profile_id=IDLE_DEFAULT_ID_BASE + c)
        except Exception as exc:  # noqa: BLE001 - it keeps its fail-safe, which is reserved
            log.info("%s/%s: idle default not installed: %r", cp_id, c, exc)
            return
        if getattr(rec, "accepted_a", None) is not None:
            self.installed[key] = now + pd.Timedelta(seconds=self.validity_s)
            if self.on_installed is not None:
                self.on_installed()

    async def cancel(self) -> None:
        """Stop every install still running."""
        for t in list(self.tasks):
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
