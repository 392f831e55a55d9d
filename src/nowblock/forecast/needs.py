"""Each plugged-in car's needs: when it will leave and how much energy it wants.

OCPP 1.6 never says; 2.0.1 only sometimes. :class:`SessionNeedsForecaster` learns them from
past sessions (the sessions frame of the contract, optionally with an ``id_tag`` column) as a
conditional distribution: history sessions are weighted as neighbours of the car in question
(same id tag or charging point, kind of day, arrival hour, time since the charging point's
previous session; see :func:`nowblock.forecast.kernels.needs_weights`), and the quantiles of
their dwell time and energy, given that this car is still plugged in and has already taken
what it took, are the forecast. Sessions of other charging points keep a small weight, so a
new charging point or a stranger gets the population's answer: the fallback is built into the
weights.

The simulator and the live loop call ``predict_needs(cars, time)`` when needs are unknown
(``simulate(..., needs="unknown", needs_estimator=...)``). The estimator watches the cars it
is shown: when a session it saw is gone, that charging point's previous departure moves on,
which keeps the "time since the last session" feature current without a refit.
"""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd

from nowblock.forecast import kernels as K
from nowblock.forecast.calendar import Calendar, ForecastError, check_time_range, day_classes

_H_NS = 3_600 * 10**9
_MAX_NS = pd.Timestamp.max.value


def _ns(values, name: str = "timestamps") -> np.ndarray:
    """Timestamps (tz-aware, within :data:`~nowblock.forecast.calendar.TIME_MIN` ..
    ``TIME_MAX``) as int64 UTC nanoseconds; ``name`` is the argument a message names."""
    idx = pd.DatetimeIndex(values)
    if idx.tz is None:
        raise ForecastError(f"{name}: timestamps must be timezone-aware")
    check_time_range(name, idx)
    return idx.as_unit("ns").asi8


def _time(time) -> pd.Timestamp:
    """The time asked about: tz-aware and within the forecasters' range."""
    time = pd.Timestamp(time)
    if time.tzinfo is None:
        raise ForecastError("time must be timezone-aware")
    check_time_range("time", time)
    return time


def check_arrived(sessions: pd.Index, arrival_ns: np.ndarray, time: pd.Timestamp) -> None:
    """Refuse cars that arrive after ``time``: a car plugged in now has arrived by now.

    Parameters
    ----------
    sessions : pandas.Index
        The cars' session ids (for the message).
    arrival_ns : numpy.ndarray
        Their arrivals as int64 UTC nanoseconds (:func:`_ns`).
    time : pandas.Timestamp
        The time asked about (tz-aware).

    Raises
    ------
    ForecastError
        Naming the first such car, its arrival and ``time``, and how many there are.
    """
    late = arrival_ns > time.as_unit("ns").value
    if late.any():
        i = int(np.argmax(late))
        more = f" (and {int(late.sum()) - 1} more)" if late.sum() > 1 else ""
        arrival = pd.Timestamp(int(arrival_ns[i]), tz="UTC").isoformat()
        raise ForecastError(f"cars: session {sessions[i]!r} arrives at {arrival}, after the time asked about "
                            f"({time.tz_convert('UTC').isoformat()}){more}; ask only about cars plugged in by then")


class SessionNeedsForecaster:
    """Conditional quantiles of departure and energy from kernel-weighted past sessions.

    Parameters are grids; ``fit`` picks, for departure and for energy separately, the
    combination with the lowest leave-one-out mean absolute error of the weighted median on up
    to ``max_queries`` sampled sessions (for departure also whether it is anchored to the clock
    or to the arrival). ``quantiles`` are reported as extra columns
    (``departure_q0.1``, ``energy_kwh_q0.9`` ...). The ``departure`` and ``energy_kwh``
    columns are the ``departure_point`` and ``energy_point`` quantiles, by default the
    planning values 0.1 and 0.9 (leave early, want much: a planner that plans with them
    finishes early rather than short; measured in docs/bench_forecast.md). Pass 0.5 and 0.5
    for the medians, which have the lowest mean absolute error.

    ``track``: each ``predict_needs`` call shows every plugged-in car (as the simulator and the
    live loop do), so a session that disappeared has left; set False when calling with
    arbitrary subsets and report departures with :meth:`observe_departures` instead.
    """

    def __init__(self, *, quantiles=(0.1, 0.25, 0.75, 0.9), calendar: Calendar | None = None,
                 bandwidths_h=(1.0, 2.0, 4.0, 8.0), lams_cp=(0.002, 0.02, 0.2), lams_tag=(0.05, 0.3),
                 lams_kind=(0.05, 0.3, 1.0), bandwidths_gap=(0.0, 0.3, 0.6), max_history: int = 5000,
                 max_queries: int = 1000, min_remaining="5min", fallback_remaining="1h",
                 departure_point: float = 0.1, energy_point: float = 0.9, track: bool = True,
                 full_below_a: float = 0.5, seed: int = 0) -> None:
        self.quantiles = tuple(sorted(float(q) for q in quantiles))
        if not (0 < departure_point < 1 and 0 < energy_point < 1):
            raise ForecastError("departure_point and energy_point must lie in (0, 1)")
        self.departure_point = float(departure_point)
        self.energy_point = float(energy_point)
        self.calendar = calendar or Calendar()
        self.grid = np.array(list(itertools.product(bandwidths_h, lams_cp, lams_tag, lams_kind, bandwidths_gap)),
                             dtype=float)
        self.max_history = int(max_history)
        self.max_queries = int(max_queries)
        self.min_remaining = pd.Timedelta(min_remaining)
        self.fallback_remaining = pd.Timedelta(fallback_remaining)
        self.track = bool(track)
        self.full_below_a = float(full_below_a)
        self.seed = int(seed)
        self._fitted = False

    # ---- features ---------------------------------------------------------------------------
    def _kind_hour(self, arrival_ns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Kind of arrival day and local arrival hour [h].

        The kind is ``2 * (arrival day is a day off) + (next day is a day off)``: 0 workday
        before a workday, 1 workday before a day off (cars tend to stay longer), 2 day off
        before a workday, 3 day off before a day off. People leave on the next morning's
        schedule, so whether that morning is a workday matters as much as the arrival day:
        a Sunday-evening car leaves at its Monday commute hour, a Saturday-evening one often
        stays into Sunday or Monday (3 and 2 were one kind before; splitting them cut the
        leave-one-out departure error on the training sessions by 3 to 7 %)."""
        idx = pd.DatetimeIndex(arrival_ns.astype("datetime64[ns]")).tz_localize("UTC")
        day, slot = self.calendar.day_slot(idx, pd.Timedelta("1s"))
        off = day_classes(self.calendar.day_types(day)) > 0
        off_next = day_classes(self.calendar.day_types(day + 1)) > 0
        kind = (2 * off + off_next).astype(np.int64)
        return kind, slot / 3600.0

    def _cp_codes(self, values) -> np.ndarray:
        return self._cp_categories.get_indexer(pd.Index(values).astype(str)).astype(np.int64)  # -1: never seen

    def _tag_codes(self, frame: pd.DataFrame) -> np.ndarray:
        if "id_tag" not in frame.columns or self._tag_categories is None:
            return np.full(len(frame), -1, np.int64)
        tags = frame["id_tag"]
        known = tags.notna().to_numpy() & (tags.astype(str) != "").to_numpy()
        codes = self._tag_categories.get_indexer(pd.Index(tags.astype(str))).astype(np.int64)
        return np.where(known, codes, -1)

    # ---- API ----------------------------------------------------------------------------------
    def fit(self, sessions: pd.DataFrame) -> "SessionNeedsForecaster":
        """Learn from past sessions: columns charge_point_id, arrival, departure (tz-aware),
        energy_kwh [kWh], optional id_tag. Rows with a bad dwell or energy are ignored."""
        need = ("charge_point_id", "arrival", "departure", "energy_kwh")
        missing = [c for c in need if c not in sessions.columns]
        if missing:
            raise ForecastError(f"sessions: missing column(s) {missing}")
        df = sessions.copy()
        arr, dep = _ns(df["arrival"], "sessions.arrival"), _ns(df["departure"], "sessions.departure")
        energy = pd.to_numeric(df["energy_kwh"], errors="coerce").to_numpy(float)
        ok = (dep > arr) & np.isfinite(energy) & (energy >= 0)
        if not ok.any():
            raise ForecastError("sessions: no usable session (need departure after arrival and energy >= 0)")
        df = df[ok].assign(_arr=arr[ok], _dep=dep[ok]).sort_values("_arr", kind="stable")
        cps = df["charge_point_id"].astype(str).to_numpy()
        # hours since the previous session on the same charging point ended (-1: none seen)
        prev = pd.Series(df["_dep"].to_numpy()).groupby(cps).shift(1).to_numpy(float)
        gap = np.where(np.isnan(prev), -1.0, np.maximum(df["_arr"].to_numpy() - np.nan_to_num(prev), 0) / _H_NS)
        last_dep = pd.Series(df["_dep"].to_numpy()).groupby(cps).max()
        df = df.iloc[-self.max_history:]
        gap = gap[-self.max_history:]
        self._cp_categories = pd.Index(sorted(set(cps)))
        self._last_dep_ns = {str(k): int(v) for k, v in last_dep.items()}
        tags = df["id_tag"].dropna().astype(str) if "id_tag" in df.columns else pd.Series([], dtype=str)
        tags = tags[tags != ""]
        self._tag_categories = pd.Index(sorted(tags.unique())) if len(tags) else None
        self._cp = self._cp_codes(df["charge_point_id"])
        self._tag = self._tag_codes(df)
        self._kind, self._hour = self._kind_hour(df["_arr"].to_numpy())
        self._gap = gap
        # Stays in local wall-clock hours: people leave by the clock, so the night of a DST
        # switch (23 h or 25 h) is learnt as the usual 13 h from 18:00 to 07:00.
        self._dwell = (self.calendar.wall_ns(df["_dep"].to_numpy()) - self.calendar.wall_ns(df["_arr"].to_numpy())) / _H_NS
        self._energy = pd.to_numeric(df["energy_kwh"]).to_numpy(float)
        self._order_e = np.argsort(self._energy, kind="stable")
        # Departure either as a dwell time or anchored to the clock (hours after the local
        # midnight of the arrival day: people leave at their hour, whenever they came home).
        leave_h = self._hour + self._dwell
        n = len(df)
        last_row = len(self.grid) - 1  # too few sessions to judge: the widest, most pooled
        self._params_d = self._params_e = self.grid[last_row].copy()
        self.anchor_, self.loo_error_ = "dwell", {}
        if n >= 20:
            rng = np.random.default_rng(self.seed)
            queries = np.sort(rng.choice(n, size=min(n, self.max_queries), replace=False)).astype(np.int64)
            feats = (self._cp, self._tag, self._kind, self._hour, self._gap)
            best_d = (np.inf, "dwell", last_row)
            for anchor, target in (("clock", leave_h), ("dwell", self._dwell)):
                err = K.needs_loo_error(*feats, target, np.argsort(target, kind="stable"), queries, self.grid)
                i = int(np.argmin(err))
                if err[i] < best_d[0]:
                    best_d = (float(err[i]), anchor, i)
            err_e = K.needs_loo_error(*feats, self._energy, self._order_e, queries, self.grid)
            i_e = int(np.argmin(err_e))
            self.anchor_ = best_d[1]
            self._params_d, self._params_e = self.grid[best_d[2]].copy(), self.grid[i_e].copy()
            self.loo_error_ = {"departure_mae_h": best_d[0], "energy_mae_kwh": float(err_e[i_e])}
        self._target_d = leave_h if self.anchor_ == "clock" else self._dwell
        self._order_d = np.argsort(self._target_d, kind="stable")
        names = ("bandwidth_h", "lam_cp", "lam_tag", "lam_kind", "bandwidth_gap")
        self.params_ = {"departure": {**dict(zip(names, map(float, self._params_d))), "anchor": self.anchor_},
                        "energy": dict(zip(names, map(float, self._params_e)))}
        self._seen: dict[str, tuple[str, int]] = {}
        self._fitted = True
        return self

    def observe_departures(self, sessions: pd.DataFrame) -> None:
        """Record finished sessions (charge_point_id, departure) without refitting, so the
        time since each charging point's previous session stays current."""
        for cp, dep in zip(sessions["charge_point_id"].astype(str), _ns(sessions["departure"], "sessions.departure")):
            self._last_dep_ns[cp] = max(self._last_dep_ns.get(cp, dep), int(dep))

    def _track(self, cp: np.ndarray, sid: pd.Index, now_ns: int) -> None:
        # Every call shows all plugged-in cars (``track=True``), so a session shown before and
        # gone now has left, at about the last time it was seen.
        current = set(map(str, sid))
        for s_id, (c, seen_ns) in list(self._seen.items()):
            if s_id not in current:
                self._last_dep_ns[c] = max(self._last_dep_ns.get(c, seen_ns), seen_ns)
                del self._seen[s_id]
        for s_id, c in zip(map(str, sid), cp):
            self._seen[s_id] = (c, now_ns)

    def predict_needs(self, cars: pd.DataFrame, time) -> pd.DataFrame:
        """Estimated needs of plugged-in cars at ``time``.

        ``cars``: indexed by session_id (or with a session_id column) with charge_point_id,
        arrival (tz-aware), optional energy_delivered_kwh [kWh] (0 if absent) and id_tag. With
        the snapshot columns measured_current_a, offered_current_a and min_current_a [A], a car
        offered at least its minimum that draws under ``full_below_a`` is taken to be full.
        Returns a frame indexed by session_id with ``departure`` (UTC, after ``time``) and
        ``energy_kwh`` [kWh] (>= delivered so far), and ``departure_qX`` / ``energy_kwh_qX``
        for each quantile X, non-decreasing in X. Never NaN.

        A car whose arrival is after ``time`` has not arrived yet: it is refused
        (:class:`ForecastError` naming it), as the sessions frame refuses a session that leaves
        before it arrives, and nothing is recorded (its estimate was taken from an elapsed time
        of zero before).
        """
        if not self._fitted:
            raise ForecastError("call fit(sessions) before predict_needs()")
        time = _time(time)
        frame = cars.set_index("session_id") if "session_id" in cars.columns else cars
        now_ns = int(time.as_unit("ns").value)
        m = len(frame)
        cp_str = frame["charge_point_id"].astype(str).to_numpy() if m else np.array([], dtype=object)
        arr_ns = _ns(frame["arrival"], "cars.arrival") if m else np.array([], dtype=np.int64)
        check_arrived(frame.index, arr_ns, time)
        if self.track:
            self._track(cp_str, frame.index, now_ns)
        qs_all = np.asarray(sorted(set(self.quantiles) | {self.departure_point, self.energy_point}), float)
        if m == 0:
            cols = ["departure", "energy_kwh"] + [f"{b}_q{q:g}" for b in ("departure", "energy_kwh") for q in self.quantiles]
            return pd.DataFrame(columns=cols, index=frame.index)
        arr_wall = self.calendar.wall_ns(arr_ns)
        # wall-clock hours, as the stays were learnt (0 inside the repeated autumn hour at worst)
        elapsed = np.maximum((int(self.calendar.wall_ns(np.array([now_ns]))[0]) - arr_wall) / _H_NS, 0.0)
        delivered = (np.maximum(pd.to_numeric(frame["energy_delivered_kwh"], errors="coerce").fillna(0.0)
                                .to_numpy(float), 0.0)
                     if "energy_delivered_kwh" in frame.columns else np.zeros(m))
        kind, hour = self._kind_hour(arr_ns)
        last = np.array([self._last_dep_ns.get(c, -1) for c in cp_str], dtype=np.int64)
        gap = np.where((last >= 0) & (last <= arr_ns), (arr_ns - last) / _H_NS, -1.0)
        shift = hour if self.anchor_ == "clock" else np.zeros(m)
        qd, qe = K.needs_quantiles(self._cp_codes(cp_str), self._tag_codes(frame), kind, hour, gap, elapsed + shift,
                                   delivered, self._cp, self._tag, self._kind, self._hour, self._gap,
                                   self._target_d, self._energy, self._order_d, self._order_e, self._params_d,
                                   self._params_e, qs_all)
        qd = qd - shift[:, None]  # back to dwell [h]
        # Where no neighbour qualifies (the car already stayed or took more than any of them):
        # it leaves soon and wants nothing more.
        qd = np.where(np.isfinite(qd), qd, (elapsed + self.fallback_remaining / pd.Timedelta(hours=1))[:, None])
        qe = np.maximum(np.where(np.isfinite(qe), qe, delivered[:, None]), delivered[:, None])
        # A car that was offered at least its minimum and drew (almost) nothing is full: what it
        # got is what it wanted. Without this a planner keeps reserving capacity it cannot use.
        if {"measured_current_a", "offered_current_a", "min_current_a"} <= set(frame.columns):
            meas = pd.to_numeric(frame["measured_current_a"], errors="coerce").to_numpy(float)
            offered = pd.to_numeric(frame["offered_current_a"], errors="coerce").fillna(0.0).to_numpy(float)
            full = (np.isfinite(meas) & (meas < self.full_below_a) & (delivered > 0)
                    & (offered >= pd.to_numeric(frame["min_current_a"], errors="coerce").fillna(np.inf).to_numpy(float)))
            qe[full] = delivered[full, None]
        floor_ns = now_ns + int(self.min_remaining.value)
        # a stay that would run past pandas' last timestamp ends there (int64 would wrap round)
        dwell_s = np.minimum(np.round(qd * 3600.0), ((_MAX_NS - arr_wall) // 10**9)[:, None])
        dep_wall = arr_wall[:, None] + dwell_s.astype(np.int64) * 10**9
        dep_ns = np.maximum(self.calendar.from_wall_ns(dep_wall.ravel()).reshape(dep_wall.shape), floor_ns)
        col = {q: j for j, q in enumerate(qs_all)}

        def dep(j):
            return pd.DatetimeIndex(dep_ns[:, j].astype("datetime64[ns]")).tz_localize("UTC")

        data = {"departure": dep(col[self.departure_point]), "energy_kwh": qe[:, col[self.energy_point]]}
        for q in self.quantiles:
            data[f"departure_q{q:g}"] = dep(col[q])
        for q in self.quantiles:
            data[f"energy_kwh_q{q:g}"] = qe[:, col[q]]
        res = pd.DataFrame(data, index=frame.index)
        res.index.name = "session_id"
        return res

    def population_baseline(self, cars: pd.DataFrame, time) -> pd.DataFrame:
        """The naive comparison: population-median dwell and energy for every car [kWh], with
        the same guarantees as :meth:`predict_needs` (after ``time``, >= delivered)."""
        frame = cars.set_index("session_id") if "session_id" in cars.columns else cars
        arr_ns = _ns(frame["arrival"], "cars.arrival")
        floor_ns = int(_time(time).as_unit("ns").value + self.min_remaining.value)
        dep_ns = np.maximum(arr_ns + np.minimum(int(np.median(self._dwell) * _H_NS), _MAX_NS - arr_ns), floor_ns)
        delivered = (pd.to_numeric(frame["energy_delivered_kwh"], errors="coerce").fillna(0.0).to_numpy(float)
                     if "energy_delivered_kwh" in frame.columns else np.zeros(len(frame)))
        e = np.maximum(float(np.median(self._energy)), delivered)
        dep = pd.DatetimeIndex(dep_ns.astype("datetime64[ns]")).tz_localize("UTC")
        return pd.DataFrame({"departure": dep, "energy_kwh": e}, index=frame.index)
