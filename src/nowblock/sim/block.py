"""The simulated block: cars that plug in, draw what they are offered (or less) and leave.

:class:`SimulatedBlock` is the simulator's :class:`~nowblock.loop.observation.SnapshotSource`:
``observe(time)`` reports the plugged-in cars as a live central system would (the current each
drew in the previous step as the measurement, the limit in force, the energy so far, the needs
if they are known), and ``apply(time, current_a)`` lets the cars draw for one step. The control
step in between is :class:`nowblock.loop.step.ControlStep`, the very one the live loop runs.

A step may be split where a meter reading wakes a control step inside it (the simulator's
``meter_interval_s``): ``apply(time, current_a, until=...)`` lets the cars draw for a part of the
step, ``observe`` at that instant reports the draw of that part, and the next ``apply`` from
there runs the rest. Energy adds over the parts; the step's fuse and offered currents and its
unbalance are those of its worst part (an overload of any part is never averaged away); the
time series keep the fixed step grid.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from nowblock.block.series import whole_steps
from nowblock.block.site import PHASES
from nowblock.loop.observation import Observation, observed_frame
from nowblock.loop.series import step_stats
from nowblock.seam import root_index
from nowblock.sim.battery import TaperBattery

_DONE_KWH = 1e-9
_NOISE_A = 1e-6  # the safety net's own tolerance
_NAT = np.iinfo(np.int64).min  # NaT as int64 nanoseconds


class SimulatedBlock:
    """A scenario played step by step (see the module docstring).

    Parameters
    ----------
    scenario : nowblock.Scenario
        Site, sessions, base load [kW], prices [EUR/kWh].
    step, horizon : pandas.Timedelta
        Control step, and how far ahead base load and prices reach in each observation.
    start, end : pandas.Timestamp
        The simulated window (UTC).
    needs_known : bool
        Whether a car's departure and energy are reported (else NaT/NaN, needs_known False).
    base_load_forecaster : object, optional
        ``predict(history, now, horizon) -> Series`` [kW]; None: perfect foresight. The value for
        now is always the true maximum within the coming step.
    current_step_a : float
        [A] Pilot-signal step of the simulated chargers.
    battery : TaperBattery
        The cars' battery model.

    Notes
    -----
    A session is plugged in for the steps that start at or after its arrival and end at or
    before its departure (arrival rounded up and departure rounded down to the step grid).
    Each car draws ``min(offered, its own maximum) x draw_fraction``, no more than its battery
    accepts and no more than it still wants; its energy is the drawn power times the step.
    The base load the fuses see in a step is its maximum within the step (the worst moment);
    energies use the step's time-weighted mean.
    """

    def __init__(self, scenario, *, step: pd.Timedelta, horizon: pd.Timedelta, start: pd.Timestamp,
                 end: pd.Timestamp, needs_known: bool = True, base_load_forecaster=None,
                 current_step_a: float = 1.0, battery: TaperBattery | None = None) -> None:
        self.scenario = scenario
        self.site = site = scenario.site
        self.step = step
        self.horizon = horizon
        self.needs_known = bool(needs_known)
        self.forecaster = base_load_forecaster
        self.current_step_a = float(current_step_a)
        self.battery = battery or TaperBattery()
        self.dt_h = step / pd.Timedelta(hours=1)
        self.n_h = max(1, math.ceil(horizon / step))
        self.start = start
        self.n_t = n_t = max(0, math.ceil((end - start) / step))
        sess = scenario.sessions
        keep = ((sess["departure"] > start) & (sess["arrival"] < end)).to_numpy()
        self.sessions = sess = sess.loc[keep].reset_index(drop=True)
        n_s = len(sess)
        self.sid = sess["session_id"].to_numpy(dtype=object)
        self.cp_ids = sess["charge_point_id"].to_numpy(dtype=object)
        self.cpi = cpi = site.cp_index(self.cp_ids) if n_s else np.zeros(0, dtype=np.int64)
        self.phases = np.minimum(sess["phases"].to_numpy(np.int64), site.cp_phases[cpi])
        self.kw_per_a = self.phases * site.voltage_v / 1000.0
        self.car_max = np.minimum(sess["max_current_a"].to_numpy(float), site.cp_max_current_a[cpi])
        self.cp_min = site.cp_min_current_a[cpi]
        # A charger offers 0 or at least its minimum (IEC 61851); a car whose own maximum is
        # below that minimum is offered the minimum and draws its own maximum.
        self.offer_max = np.maximum(self.car_max, self.cp_min)
        self.req = sess["energy_kwh"].to_numpy(float)
        self.draw_frac = sess["draw_fraction"].to_numpy(float)
        self.prio = sess["priority"].to_numpy(float)
        self.cap_kwh = self.battery.capacities_kwh(self.req)
        self.soc = self.battery.start_soc(self.req, self.cap_kwh)
        s_ns, st_ns = start.as_unit("ns").value, step.as_unit("ns").value
        arr_ns = pd.DatetimeIndex(sess["arrival"]).as_unit("ns").asi8
        dep_ns = pd.DatetimeIndex(sess["departure"]).as_unit("ns").asi8
        k_in, k_out = whole_steps(arr_ns, dep_ns, s_ns, st_ns)
        self.k_in, self.k_out = np.maximum(0, k_in), np.minimum(n_t, k_out)
        self.arr_ns, self.dep_ns = arr_ns, dep_ns
        self.arrival = pd.DatetimeIndex(sess["arrival"]).as_unit("ns").array
        self.departure = pd.DatetimeIndex(sess["departure"]).as_unit("ns").array
        self.inc = site.phase_incidence(cpi, self.phases)  # (F*3, n_s)
        self.root = root_index(site)
        self.grid = pd.date_range(start, periods=n_t + self.n_h, freq=step, name="time")
        self.base_mean, self.base_max = step_stats(scenario.base_load, start, step, n_t + self.n_h)
        self.price_mean, _ = step_stats(scenario.prices, start, step, n_t + self.n_h)
        self.has_prices = scenario.prices is not None
        self.caps = site.cap_current_a(self.grid[:n_t], step) if n_t else np.zeros((0, len(site.charge_points)))
        # Object arrays: taking from arrow-backed strings cost a tenth of a step (measured).
        self.sid_index = pd.Index(self.sid, name="session_id", dtype=object)
        self.cp_str = np.asarray(self.cp_ids, dtype=object)
        # state
        self.delivered = np.zeros(n_s)
        self.measured = np.full(n_s, np.nan)
        self.offered = np.zeros(n_s)
        n_f = len(site.fuses)
        self.fuse_a = np.zeros((n_t, n_f * 3))
        self.cars_ph_a = np.zeros((n_t, 3))
        self.offered_ph_a = np.zeros((n_t, 3))
        self.charging_kw = np.zeros(n_t)
        self.offered_sum_a = np.zeros(n_t)
        self.n_plugged = np.zeros(n_t, dtype=np.int64)
        self.n_charging = np.zeros(n_t, dtype=np.int64)
        self.unbalance_a = np.zeros(n_t)  # the grid's charging unbalance, its worst part of each step
        self._log: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._split = False  # a step was drawn in parts: draws() sums their rows
        self._part: tuple[int, np.ndarray] | None = None  # the step drawn last, and who drew in it

    def index_of(self, time: pd.Timestamp) -> int:
        """The step that starts at ``time``."""
        return int(round((pd.Timestamp(time) - self.start) / self.step))

    def step_at(self, time: pd.Timestamp) -> int:
        """The step that holds ``time`` (its start or an instant inside it)."""
        return int((pd.Timestamp(time) - self.start) // self.step)

    def plugged(self, k: int) -> np.ndarray:
        """Positions of the sessions plugged in during step ``k``."""
        return np.nonzero((self.k_in <= k) & (self.k_out > k))[0]

    # ---- the SnapshotSource side ----------------------------------------------------------------
    def observe(self, time: pd.Timestamp) -> Observation:
        """The block at ``time``, a step's start or an instant inside it where a meter reading
        wakes a control step (see :class:`Observation`): the readings then are the draws since
        the step's start."""
        k = self.step_at(time)
        act = self.plugged(k)
        self.n_plugged[k] = len(act)
        now = self.grid[k]
        if pd.Timestamp(time) != now:  # a reading inside the step: its time, the step's series
            now = pd.Timestamp(time).tz_convert(now.tz)
        cols = {
            "session_id": self.sid_index.take(act),
            "charge_point_id": self.cp_str.take(act),
            "cp_index": self.cpi[act],
            "phases": self.phases[act],
            "min_current_a": self.cp_min[act],
            "max_current_a": np.minimum(self.offer_max[act], self.caps[k, self.cpi[act]]),
            "arrival": self.arrival.take(act),
            "departure": self.departure.take(act),
            "energy_requested_kwh": self.req[act],
            "energy_delivered_kwh": self.delivered[act],
            "measured_current_a": self.measured[act],
            "offered_current_a": self.offered[act],
            "priority": self.prio[act],
            "needs_known": np.full(len(act), self.needs_known),
            # A simulated charger reports at every step's start: the draw of the step before, with
            # its limit in force all step, or no draw yet for a car that plugged in within it
            # (offered nothing). Not "no meter value": a car that arrived mid-step was stale in its
            # first step, so every such arrival took the untrusted path of a silent charger.
            # Inside a step (a meter wake-up): the draw since the step's start, read now.
            "last_meter": pd.DatetimeIndex(np.full(len(act), now.as_unit("ns").value).view("M8[ns]"), tz="UTC").array,
        }
        if not self.needs_known:
            cols["departure"] = pd.DatetimeIndex(np.full(len(act), _NAT).view("M8[ns]"), tz="UTC").array
            cols["energy_requested_kwh"] = np.full(len(act), np.nan)
        # Inside a step the series stay on the step grid: the first value (the step's maximum)
        # holds from the step's start, so the plan's first slot sees the worst of the rest of it.
        ahead = self.grid[k : k + self.n_h]
        base_kw = self.base_max[k : k + self.n_h]
        if self.forecaster is not None:
            base_kw = forecast_base(self.forecaster, self.scenario.base_load, self.grid[k], self.step, self.horizon,
                                    self.n_h, self.base_max[k])
        n = len(act)
        arrays = {c: cols[c] for c in ("cp_index", "phases", "min_current_a", "max_current_a", "energy_requested_kwh",
                                        "energy_delivered_kwh", "measured_current_a", "offered_current_a", "priority")}
        arrays.update(connected=np.ones(n, bool), limit_known=np.ones(n, bool), needs_known=cols["needs_known"],
                      arrival=self.arr_ns[act], departure=self.dep_ns[act] if self.needs_known else np.full(n, _NAT))
        return Observation(
            time=now, site=self.site, step=self.step, cars=observed_frame(cols), arrays=arrays,
            base_load_kw=pd.Series(base_kw, index=ahead, name="kw"),
            prices_eur_per_kwh=pd.Series(self.price_mean[k : k + self.n_h], index=ahead, name="eur_per_kwh")
            if self.has_prices else None,
            current_step_a=self.current_step_a, incidence_a=self.inc[:, act],
        )

    # ---- the cars draw ---------------------------------------------------------------------------
    def apply(self, time: pd.Timestamp, current_a: pd.Series, *, until: pd.Timestamp | None = None) -> None:
        """Offer ``current_a`` [A per phase] (by session_id) from ``time`` to ``until``; the cars draw.

        Parameters
        ----------
        time : pandas.Timestamp
            [UTC] A step's start, or an instant inside it (the rest of a step split by a
            meter wake-up).
        current_a : pandas.Series
            [A per phase] The offers, by session_id (missing: 0 A).
        until : pandas.Timestamp, optional
            [UTC] The end of this part, inside the step; default the step's end.

        Notes
        -----
        The part from a step's start sets the step's figures; a later part of the same step adds
        its energy [kWh] and keeps the worst of the fuse currents, offers and unbalance [A].
        """
        k = self.step_at(time)
        act = self.plugged(k)
        if not len(act):
            return
        t0, end = pd.Timestamp(time), self.grid[k] + self.step
        t1 = end if until is None else min(pd.Timestamp(until), end)
        first = t0 == self.grid[k]
        # A whole step keeps the step's own dt_h, so results without a split are unchanged to the bit.
        dt_h = self.dt_h if (first and t1 == end) else (t1 - t0) / pd.Timedelta(hours=1)
        x = as_setpoints(current_a, self.sid_index.take(act))
        ceiling = np.minimum(x, self.car_max[act]) * self.draw_frac[act]
        accept = self.battery.accepted_current_a(self.soc[act], self.car_max[act])
        drawn = np.minimum(ceiling, accept)
        remaining = np.maximum(self.req[act] - self.delivered[act], 0.0)
        per_a_kwh = self.kw_per_a[act] * dt_h
        e = np.minimum(drawn * per_a_kwh, remaining)
        e[remaining <= _DONE_KWH] = 0.0
        with np.errstate(divide="ignore", invalid="ignore"):
            drawn = np.where(per_a_kwh > 0, e / per_a_kwh, 0.0)
        self.delivered[act] += e
        self.soc[act] += e / self.cap_kwh[act]
        # What a meter shows at the step's end, as a live one would: a car that filled up within
        # the step draws nothing any more. Its average over the step (what it drew until full, a
        # part of its offer) read as a tapering draw: the safety net counted it on the light side
        # of an unbalance row for one more step, and with unknown needs the grid's phases were
        # 25.7 A apart under a 10 A limit for two steps (found by an outside test).
        self.measured[act] = np.where(self.req[act] - self.delivered[act] <= _DONE_KWH, 0.0, drawn)
        self.offered[act] = x
        r0 = self.root
        fuse = self.inc[:, act] @ drawn
        cars = fuse[3 * r0 : 3 * r0 + 3]
        offered_ph = self.inc[3 * r0 : 3 * r0 + 3, act] @ np.minimum(x, self.car_max[act])
        on = drawn > 0
        same = not first and self._part is not None and self._part[0] == k and len(self._part[1]) == len(act)
        if same:
            # The worst part of the step counts for the fuses, offers and unbalance: a mean over
            # the step would hide a part's overload.
            np.maximum(self.fuse_a[k], fuse, out=self.fuse_a[k])
            self.cars_ph_a[k] = self.fuse_a[k, 3 * r0 : 3 * r0 + 3]
            np.maximum(self.offered_ph_a[k], offered_ph, out=self.offered_ph_a[k])
            self.charging_kw[k] += float(e.sum() / self.dt_h)
            self.offered_sum_a[k] = max(self.offered_sum_a[k], float(x.sum()))
            self.unbalance_a[k] = max(self.unbalance_a[k], float(cars.max() - cars.min()))
            on = on | self._part[1]
        else:
            self.fuse_a[k] = fuse
            self.cars_ph_a[k] = cars
            self.offered_ph_a[k] = offered_ph
            self.charging_kw[k] = float(e.sum() / self.dt_h)
            self.offered_sum_a[k] = float(x.sum())
            self.unbalance_a[k] = float(cars.max() - cars.min())
        self._part = (k, on)
        self.n_charging[k] = int(on.sum())
        part_on = drawn > 0
        if part_on.any():
            if dt_h == self.dt_h:
                self._log.append((np.full(int(part_on.sum()), k), act[part_on], drawn[part_on]))
            else:  # a part: its share of the step's mean current (draws() sums the parts)
                self._split = True
                self._log.append((np.full(int(part_on.sum()), k), act[part_on], drawn[part_on] * (dt_h / self.dt_h)))

    # ---- results -----------------------------------------------------------------------------------
    def timeseries(self) -> tuple[pd.DataFrame, float, int, float, np.ndarray]:
        """The per-step time series and the overload figures (see :func:`nowblock.simulate`).

        Returns (timeseries, max_overload_a, overload_steps, max_unbalance_excess_a, excess per
        fuse-phase row and step)."""
        site, n_t, r0 = self.site, self.n_t, self.root
        base_a_max = site.base_load_phase_current_a(self.base_max[:n_t])  # (n_t, 3)
        base_a_mean = site.base_load_phase_current_a(self.base_mean[:n_t])
        fuse_a = self.fuse_a.copy()
        fuse_a[:, 3 * r0 : 3 * r0 + 3] += base_a_max
        limits = site.limits_a.reshape(-1)
        allowed = np.tile(limits, (n_t, 1))
        allowed[:, 3 * r0 : 3 * r0 + 3] = np.maximum(allowed[:, 3 * r0 : 3 * r0 + 3], base_a_max)
        excess = fuse_a - allowed
        # Below a microampere an "excess" is floating-point noise of sums, not an overload.
        max_overload = float(excess.max()) if n_t and excess.max() > _NOISE_A else 0.0
        unbalance = self.unbalance_a  # each step's worst part
        unb_excess = (float(max(0.0, (unbalance - site.max_unbalance_a).max()))
                      if (n_t and site.max_unbalance_a is not None) else 0.0)
        if unb_excess <= _NOISE_A:  # as max_overload: 3.55e-15 A was reported, not 0
            unb_excess = 0.0
        ts = {
            "base_load_kw": self.base_mean[:n_t],
            "base_load_max_kw": self.base_max[:n_t],
            "charging_kw": self.charging_kw,
            "block_kw": self.base_mean[:n_t] + self.charging_kw,
            "price_eur_per_kwh": self.price_mean[:n_t] if self.has_prices else np.full(n_t, np.nan),
            "n_plugged": self.n_plugged,
            "n_charging": self.n_charging,
            "offered_a": self.offered_sum_a,
        }
        for p in range(3):
            ts[f"households_{PHASES[p]}_a"] = base_a_mean[:, p]
            ts[f"cars_{PHASES[p]}_a"] = self.cars_ph_a[:, p]
            ts[f"offered_{PHASES[p]}_a"] = self.offered_ph_a[:, p]
        for f, fid in enumerate(site.fuse_ids):
            for p in range(3):
                ts[f"{fid}_{PHASES[p]}_a"] = fuse_a[:, 3 * f + p]
                ts[f"{fid}_{PHASES[p]}_limit_a"] = np.full(n_t, limits[3 * f + p])
        overload_steps = int((excess > _NOISE_A).any(axis=1).sum()) if n_t else 0
        return pd.DataFrame(ts, index=self.grid[:n_t]), max_overload, overload_steps, unb_excess, excess

    def session_table(self) -> pd.DataFrame:
        """One row a simulated session: requested and delivered energy [kWh], fraction delivered."""
        req, got = self.req, self.delivered
        frac = np.where(req > 0, got / np.where(req > 0, req, 1.0), 1.0)
        return pd.DataFrame({
            "session_id": self.sid,
            "charge_point_id": self.cp_ids,
            "arrival": self.sessions["arrival"],
            "departure": self.sessions["departure"],
            "energy_requested_kwh": req,
            "energy_delivered_kwh": got,
            "fraction_delivered": frac,
            "unmet_kwh": np.maximum(req - got, 0.0),
            "steps_plugged": np.maximum(self.k_out - self.k_in, 0),
        })

    def draws(self) -> pd.DataFrame:
        """Long format: time, session_id, current_a [A], power_kw [kW] for every step a car drew."""
        if self._log:
            kk, ss, aa = (np.concatenate(c) for c in zip(*self._log))
            if self._split:  # one row a car and step: the parts' shares of its mean current add up
                key = kk.astype(np.int64) * len(self.sid) + ss
                uniq, inv = np.unique(key, return_inverse=True)
                mean = np.zeros(len(uniq))
                np.add.at(mean, inv, aa)
                kk, ss, aa = uniq // len(self.sid), uniq % len(self.sid), mean
        else:
            kk, ss, aa = np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
        return pd.DataFrame({"time": self.grid[kk], "session_id": self.sid[ss], "current_a": aa,
                             "power_kw": aa * self.kw_per_a[ss]})


def as_setpoints(answer, index: pd.Index) -> np.ndarray:
    """Setpoints [A] as non-negative floats in the order of ``index`` (missing and NaN: 0)."""
    if isinstance(answer, pd.Series):
        x = answer.to_numpy(float) if answer.index.equals(index) else answer.reindex(index).to_numpy(float)
    else:
        x = np.asarray(answer, dtype=float).reshape(-1)
        if len(x) != len(index):
            raise ValueError(f"{len(x)} setpoints for {len(index)} cars")
    return np.maximum(np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0), 0.0)


def forecast_base(forecaster, history, now, step, horizon, n_h, now_max_kw) -> np.ndarray:
    """Forecast base load [kW] on the step grid; the first value is the true maximum of now.

    The forecaster sees the readings before ``now`` only. Each step takes the forecast's
    maximum within it; an empty forecast (nothing to forecast from) keeps the current load.
    """
    hist = history.iloc[: history.index.searchsorted(now)] if history is not None else pd.Series(dtype=float, name="kw")
    fc = forecaster.predict(hist, now, horizon)
    fc = pd.Series(fc, dtype=float).dropna() if fc is not None else None
    if fc is None or len(fc) == 0:
        mx = np.full(n_h, now_max_kw)
    else:
        _, mx = step_stats(fc, now, step, n_h)
    mx[0] = now_max_kw
    return mx
