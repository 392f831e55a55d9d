"""The live block: the central system's state as a :class:`~nowblock.loop.observation.SnapshotSource`.

:class:`LiveBlock` turns what the OCPP central system knows (running transactions, meter
values, the limits chargers accepted, which stations are online) into an
:class:`~nowblock.loop.observation.Observation`, with the block's other load from a meter
feed or a forecaster and the prices ahead. The control step that follows is the simulator's
own (:class:`nowblock.loop.step.ControlStep`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import replace

import numpy as np
import pandas as pd

from nowblock.block.site import Site
from nowblock.control.failsafe import fallback_limit_a
from nowblock.loop.caps import shared_points_site
from nowblock.loop.observation import OBSERVED_COLUMNS, Observation
from nowblock.loop.series import on_grid
from nowblock.ocpp import profiles as pr
from nowblock.ocpp.state import PLUGGED
from nowblock.seam import CAR_COLUMNS

log = logging.getLogger(__name__)


def _usable(station) -> bool:
    """Whether profiles can be placed in ``station``'s clock (``ClockOffset.usable``)."""
    clock = getattr(station, "clock", None)
    return clock is None or clock.usable


def _clock_known(station) -> bool:
    """Whether ``station``'s clock is usable and stamped since its boot (``ClockOffset.stamped``):
    only then do its profiles, the fail-safe included, count as in force by its clock."""
    return _usable(station) and getattr(getattr(station, "clock", None), "stamped", True)


def pilot_step_a(versions) -> float:
    """The pilot-signal step [A] of the chargers running cars: 0.1 A when all speak OCPP 1.6
    (its limits take one decimal), else 1 A (2.0.1 takes any decimal, many chargers round)."""
    versions = list(versions)
    return 0.1 if versions and all(v == "1.6" for v in versions) else 1.0


class LiveBlock:
    """The block as the central system sees it (see the module docstring).

    Parameters
    ----------
    state : nowblock.ocpp.state.LiveState
        The central system's live state.
    site : Site
        The block.
    step, horizon : pandas.Timedelta
        Planning step and how far base load and prices reach.
    failsafe_a : pandas.Series
        [A per phase] Each charging point's fail-safe default (what an idle connector may give a
        car that plugs in when the live state knows no limit there).
    forecaster : object, optional
        Base load: ``predict(history, now, horizon) -> Series`` [kW].
    base_load_history : pandas.Series, optional
        [kW] The block's measured other load (the forecaster's input).
    base_load_meter : callable, optional
        ``now -> kW``: a meter feed of the other load now (None or NaN: unknown).
    prices : pandas.Series, optional
        [EUR/kWh] Prices over timezone-aware times; beyond +-50 EUR/kWh refused, beyond +-10
        warned about (:func:`nowblock.block.scenario.check_prices`).
    operator : OperatorInputs, optional
        Caps, dimming, residents' needs and points out of service, applied to every observation
        (:meth:`nowblock.control.operator.OperatorInputs.apply`).
    base_load_margin : float
        Fraction of the other load added to the slot planned now (default 0.1). Between steps
        the other load is known only from the last reading and the forecast: a rise beyond both
        (a forecast error at a slot boundary) lands on a fuse the step filled to its rating,
        until the next step. The simulator knows its other load exactly and adds none.
    """

    def __init__(self, state, site: Site, *, step: pd.Timedelta, horizon: pd.Timedelta, failsafe_a: pd.Series,
                 forecaster=None, base_load_history: pd.Series | None = None, base_load_meter=None,
                 prices: pd.Series | None = None, operator=None, base_load_margin: float = 0.1) -> None:
        self.state = state
        self.site = site
        self.step = pd.Timedelta(step)
        self.horizon = pd.Timedelta(horizon)
        self.failsafe_a = failsafe_a
        self.forecaster = forecaster
        self.base_load_history = base_load_history
        self.base_load_meter = base_load_meter
        if prices is not None:
            from nowblock.block.scenario import check_prices

            if not isinstance(prices, pd.Series) or getattr(prices.index, "tz", None) is None:
                raise TypeError("prices: expected a pandas Series [EUR/kWh] over timezone-aware times, "
                                f"got {type(prices).__name__}")
            # As a scenario's and optimize's prices: EUR/MWh given as EUR/kWh was planned on
            # without a word (300 EUR/kWh against the 20 EUR/kWh shortfall penalty).
            check_prices(prices, site.timezone, "prices")
        self.prices = prices
        self.operator = operator
        if not (0.0 <= float(base_load_margin) < 10.0):
            raise ValueError(f"base_load_margin: expected a fraction >= 0, got {base_load_margin!r}")
        self.base_load_margin = float(base_load_margin)
        self._metered: tuple[pd.Timestamp, float | None] | None = None  # (when, the meter's reading)
        #: ``alarm(kind, now, **data)`` (:meth:`nowblock.control.alarms.Alarms.raise_alarm`), or None.
        self.alarm = None
        self._far_now: set[str] = set()  # stations found more than a day off at the last observation
        self._far_alarmed: dict[str, pd.Timestamp] = {}  # station -> when its clock alarm was raised
        self._shared_site: tuple | None = None  # (base site, point ratings, the site with point fuses)

    @property
    def n_slots(self) -> int:
        """Slots of the planning horizon."""
        return max(1, int(self.horizon / self.step))

    def observe(self, now: pd.Timestamp) -> Observation:
        """The live block at ``now`` (see :class:`~nowblock.loop.observation.Observation`)."""
        raw = self.state.snapshot(now.to_pydatetime())
        cars = raw[list(CAR_COLUMNS)].copy()
        cars["connector_id"] = raw["connector_id"].to_numpy(np.int64)
        last = [self._last_meter(cp, tx) for cp, tx in zip(raw["charge_point_id"], raw["transaction_id"])]
        cars["last_meter"] = pd.to_datetime(pd.Series(last, index=raw.index, dtype=object), utc=True)
        cars["connected"] = raw["connected"].to_numpy(bool)
        cars["limit_known"] = raw["accepted_limit_a"].notna().to_numpy()
        if "reported_limit_a" in raw:
            # What a station says it applies (GetCompositeSchedule) counts over what it accepted,
            # while it can be sent a limit: the first period read then counts for 900 s, and an
            # offline car's read-back outlived its TxProfile (16 A drawn where 6 A were counted,
            # review rev3 F2 of session 36). Clipped by the physical maximum, not the planning
            # one: a cap window is enforced only by the profiles the step sends.
            rep = raw["reported_limit_a"].to_numpy(float)
            known = np.isfinite(rep) & raw["connected"].to_numpy(bool)
            if known.any():
                phys = np.array([self._physical_a(cp, tx, lo) if k else np.inf for cp, tx, lo, k in zip(
                    raw["charge_point_id"], raw["transaction_id"], raw["min_current_a"], known)], dtype=float)
                cars["offered_current_a"] = np.where(known, np.minimum(rep, phys),
                                                     cars["offered_current_a"].to_numpy(float))
                cars["limit_known"] = cars["limit_known"].to_numpy() | known
        far = self._far_clocks(now)
        if far:
            # A station whose clock is more than a day off applies no profile of ours, the fail-safe
            # neither (a review: a station reset to 1970 ran its car at 16 A while 12 A were counted,
            # 28 A on a 24 A grid): its cars count as a station that can be sent nothing, at their
            # maximum (or their draw), until its clock is set.
            off = raw["charge_point_id"].isin(far).to_numpy(bool)
            cars["connected"] = cars["connected"].to_numpy(bool) & ~off
            cars["limit_known"] = cars["limit_known"].to_numpy(bool) & ~off
        cars = cars[[*CAR_COLUMNS, *OBSERVED_COLUMNS]]
        # The dispatcher names each car's transaction to the central system, which then sends
        # nothing for one that ended while the step ran (a review: the column was dropped here,
        # so the guard never applied live).
        cars["transaction_id"] = raw["transaction_id"].to_numpy(object)
        running = list(zip(raw["charge_point_id"], raw["connector_id"]))
        obs = Observation(
            time=now, site=self.site, step=self.step, cars=cars, base_load_kw=self.base_load(now),
            prices_eur_per_kwh=self.prices_ahead(now), current_step_a=pilot_step_a(raw["version"]),
            idle_defaults_a=self.idle_defaults_a(now, running=running),
        )
        obs = obs if self.operator is None else self.operator.apply(obs)
        return self._shared_points(self._at_physical_maximum(obs))

    def _shared_points(self, obs: Observation) -> Observation:
        """``obs`` whose site carries each charging point with more than one car as a fuse of its
        own (:func:`nowblock.loop.caps.shared_points_site`): ``max_current_a`` [A per phase] is the
        point's, over all its connectors/EVSEs together, as its fail-safe is divided over them;
        lowered by a cap window in force now. Each EVSE of a twin wallbox planned at the point's
        whole maximum got 32 + 31 A at a 32 A point (an outside test; tests/test_live_twin_evse.py).
        What is held for the point's idle connectors is added to that rating: it is reserved on
        the fuses above (a car plugging in draws it before the next step reaches it), and taken
        from the point's own rating it would pause its cars for as long as a station that refuses
        defaults holds its idle connectors at their maximum."""
        count: dict[str, int] = {}
        for cp in obs.cars["charge_point_id"].astype(str):
            count[cp] = count.get(cp, 0) + 1
        shared = sorted(cp for cp, k in count.items() if k > 1)
        if not shared:
            return obs
        idle = obs.idle_defaults_a
        held = idle[idle > 0].groupby(level="charge_point_id").sum() if len(idle) else idle
        caps = self.site.cap_current_a([obs.time])[0]
        j = self.site.cp_index(shared)
        ratings = {cp: float(min(self.site.charge_points[i].max_current_a, caps[i]) + held.get(cp, 0.0))
                   for cp, i in zip(shared, j)}
        key = tuple(ratings.items())
        if self._shared_site is None or self._shared_site[0] is not obs.site or self._shared_site[1] != key:
            # Kept while nothing changes: a new site each step would rebuild every cached row.
            self._shared_site = (obs.site, key, shared_points_site(obs.site, ratings))
        return replace(obs, site=self._shared_site[2])

    def _at_physical_maximum(self, obs: Observation) -> Observation:
        """``obs`` with each car that cannot be sent a limit (``connected`` False: its station
        offline, rebooted since it named the car, or its clock unusable) at the most it may
        physically draw [A per phase]: the charging point's rated maximum and the car's own,
        not the site's cap windows nor a point out of service. Those are enforced only by the
        profiles such a station is not sent (or, its clock unusable, does not apply): counted at
        a cap window's 10 A, a car at a 32 A point whose clock went 1970 could draw 32 A next to
        the 30 A the cap left another car, 62 A on a 40 A grid (review rev1 H2 of session 36).
        What its station is known to hold still counts (``offered_current_a``, when ``limit_known``)."""
        cars = obs.cars
        off = ~cars["connected"].to_numpy(bool) if len(cars) else np.zeros(0, bool)
        if not off.any():
            return obs
        phys = cars["max_current_a"].to_numpy(float, copy=True)
        for i in np.flatnonzero(off):
            row = cars.iloc[i]
            phys[i] = self._physical_a(row["charge_point_id"], row["transaction_id"], row["min_current_a"])
        if np.array_equal(phys, cars["max_current_a"].to_numpy(float)):
            return obs
        cars = cars.copy()
        cars["max_current_a"] = phys
        return replace(obs, cars=cars, arrays=None)

    def _physical_a(self, cp_id, transaction_id, min_current_a) -> float:
        """[A per phase] The most a car may physically draw: min(the point's rating, the car's own
        maximum), as the live state's maximum with the site's caps left out (a car below the
        point's minimum is offered that minimum and draws its own maximum)."""
        cp = self.site.charge_point(str(cp_id))
        t = self.state.transaction(str(cp_id), transaction_id)
        ev = float(getattr(t, "ev_max_current_a", np.nan))
        ev = np.inf if not np.isfinite(ev) else ev
        return min(float(cp.max_current_a), max(ev, float(min_current_a)))

    #: How long past the lapse of an offline car's TxProfile what its station falls back to is
    #: looked at (:meth:`offline_floors_a`): at least the time between two steps. The fail-safe
    #: is re-installed while it has less than an hour left (FailsafeKeeper's horizon).
    OFFLINE_LOOKAHEAD = pd.Timedelta(hours=1)

    def offline_floors_a(self, cars: pd.DataFrame, now: pd.Timestamp) -> dict[str, float]:
        """[A per phase] For each car that cannot be sent a limit (``connected`` False; index
        session_id, ``charge_point_id``, ``connector_id``), the most its station may apply once
        the car's TxProfile lapses: what the live state knows it holds from ``now`` to that lapse
        plus :attr:`OFFLINE_LOOKAHEAD`, its TxProfiles left out
        (:func:`nowblock.control.failsafe.fallback_limit_a`). ``math.inf`` (the car's physical
        maximum) when at some instant nothing accepted applies, or when the station's clock is
        unusable or not known since its boot (it may apply none of our profiles). The step
        counts an offline car at least this (``ControlStep.offline_floor_a``)."""
        out: dict[str, float] = {}
        if not len(cars):
            return out
        t = now.to_pydatetime()
        for i in np.flatnonzero(~cars["connected"].to_numpy(bool)):
            sid, cp_id, c = cars.index[i], str(cars["charge_point_id"].iloc[i]), int(cars["connector_id"].iloc[i])
            st = self.state.stations.get(cp_id)
            if st is None or not _clock_known(st):
                out[sid] = math.inf
                continue
            ends = [p.valid_to for p in (*st.profiles, *st.unanswered)
                    if p.purpose == pr.TX and p.connector_id == c and p.valid_to is not None]
            lapse = max([t, *ends])
            out[sid] = fallback_limit_a(self.state, cp_id, c, t, lapse + self.OFFLINE_LOOKAHEAD.to_pytimedelta())
        return out

    def _far_clocks(self, now: pd.Timestamp) -> list[str]:
        """The stations whose clock is more than a day off ours (``Station.clock.far_s``) or whose
        stamps tie between offsets too far apart (``split_s``): unusable clocks; an alarm
        ``station_clock`` (:attr:`alarm`) when one is found so, at most hourly a station."""
        far = [cp for cp, st in self.state.stations.items() if not _usable(st)]
        for cp in far:
            last = self._far_alarmed.get(cp)
            if self.alarm is not None and cp not in self._far_now and (last is None or not (
                    pd.Timedelta(0) <= now - last < pd.Timedelta(hours=1))):
                self._far_alarmed[cp] = now
                clock = self.state.stations[cp].clock
                if clock.far_s is not None:
                    self.alarm("station_clock", now, charge_point_id=cp, offset_days=round(clock.far_s / 86400.0, 1))
                else:  # its stamps tie between offsets too far apart (ClockOffset.split_s)
                    self.alarm("station_clock", now, charge_point_id=cp, tied_offsets_apart_s=round(clock.split_s))
        self._far_now = set(far)
        return far

    def _last_meter(self, cp_id: str, tx_id) -> pd.Timestamp:
        t = self.state.transaction(cp_id, tx_id)
        lm = getattr(t, "last_meter", None)
        return pd.NaT if lm is None else pd.Timestamp(lm)

    def idle_defaults_a(self, now: pd.Timestamp, running=()) -> pd.Series:
        """The limit [A per phase] a car newly plugged in at each idle connector could draw.

        One value per connector (EVSE in 2.0.1) without a running transaction, indexed by
        (``charge_point_id``, ``connector_id``); ``running`` are the (charge point, connector)
        pairs that run one. The limit is what the live state knows the point applies to an idle
        connector (its TxDefaultProfile, a fallback default left behind, a station maximum);
        when it knows none, the point's maximum if the station booted in this process (so we
        know it holds none), else the fail-safe installed earlier (offline, or not yet heard
        from since a restart). Never above the point's maximum. A connector other than 1 that
        the station named in a StatusNotification only (it never ran a transaction nor took a
        profile) is held for only while it reports a car plugged in: it may not exist. At a
        station whose clock is unusable, or not known since its boot (no timestamped CALL since;
        ``ClockOffset.stamped``), every idle connector counts at the point's maximum.
        """
        busy = {(str(cp), int(c)) for cp, c in running}
        t = now.to_pydatetime()
        rows: dict[tuple[str, int], float] = {}
        for cp in self.site.charge_points:
            st = self.state.stations.get(cp.id)
            if st is None:
                continue
            for c in sorted({c for c in st.connectors if c > 0} | {1}):
                if (cp.id, c) in busy:
                    continue
                con = st.connectors.get(c)
                if c > 1 and con is not None and not con.known and con.status not in PLUGGED:
                    # Named by a StatusNotification alone (never ran a transaction, took no
                    # profile): it may not exist (an EVSE 5 on a 1-EVSE station was held at
                    # its fail-safe for good); it is held for once it reports a car plugged in.
                    continue
                # A clock more than a day off: nothing of ours in force there, the fail-safe neither.
                # Nor known to be, before it stamps a CALL after its boot: one reset to 1970 that
                # stamps no StatusNotification held its idle connector at the 20 A fail-safe its
                # clock does not apply (validFrom decades ahead), a car plugging in draws 32 A
                # (review rev1 of session 36).
                known = _clock_known(st)
                held = self.state.applied_limit_a(cp.id, c, t) if known else float(cp.max_current_a)
                if held is None:
                    held = cp.max_current_a if st.connected and st.boot else float(
                        self.failsafe_a.get(cp.id, cp.max_current_a))
                rows[(cp.id, c)] = min(float(held), float(cp.max_current_a))
        index = pd.MultiIndex.from_tuples(list(rows), names=["charge_point_id", "connector_id"])
        return pd.Series(list(rows.values()), index=index, dtype=float, name="current_a")

    def base_load(self, now: pd.Timestamp) -> pd.Series:
        """[kW] The block's other load from ``now`` on the planning grid: the forecast's maximum
        per slot, the meter's reading (or the last known value) for now; the setpoints sent now
        hold into the next slot, so now is planned for the larger of both, plus
        ``base_load_margin``."""
        n = self.n_slots
        values = np.full(n, np.nan)
        if self.forecaster is not None and self.base_load_history is not None:
            try:
                hist = self.base_load_history[self.base_load_history.index < now]
                fc = pd.Series(self.forecaster.predict(hist, now, self.horizon), dtype=float)
                if len(fc.dropna()):
                    values = on_grid(fc, now, self.step, n, how="max").to_numpy(float, copy=True)
            except Exception:  # noqa: BLE001 - a broken forecast must not stop control
                log.exception("base-load forecast failed; planning with the last known value")
        measured = self.metered_base_kw(now)
        if measured is not None:
            values[0] = measured
        elif not np.isfinite(values[0]) and self.base_load_history is not None and len(self.base_load_history):
            past = self.base_load_history[self.base_load_history.index <= now]
            values[0] = float(past.iloc[-1]) if len(past) else float(self.base_load_history.iloc[0])
        s = pd.Series(values, index=pd.date_range(now, periods=n, freq=self.step), name="kw")
        s = s.ffill().bfill().fillna(0.0)
        if len(s) > 1:
            s.iloc[0] = max(s.iloc[0], s.iloc[1])
        if len(s) and s.iloc[0] > 0:
            s.iloc[0] *= 1.0 + self.base_load_margin
        return s

    def metered_base_kw(self, now: pd.Timestamp) -> float | None:
        """[kW] The block's other load as its meter reads it now, or None without a meter (or
        when the reading fails). Read once per ``now``: the step's observation and its overload
        watch share the reading."""
        if self.base_load_meter is None:
            return None
        if self._metered is not None and self._metered[0] == now:  # one reading a step
            return self._metered[1]
        try:
            v = self.base_load_meter(now)
        except Exception:  # noqa: BLE001 - a broken meter reading must not stop control
            log.exception("base-load meter reading failed")
            v = None
        v = None if v is None or not np.isfinite(v) else float(v)
        self._metered = (now, v)
        return v

    def prices_ahead(self, now: pd.Timestamp) -> pd.Series | None:
        """[EUR/kWh] Prices on the planning grid from ``now`` (each slot's mean), or None."""
        if self.prices is None:
            return None
        return on_grid(self.prices, now, self.step, self.n_slots, how="mean", name="eur_per_kwh")
