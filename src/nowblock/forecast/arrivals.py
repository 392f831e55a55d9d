"""Cars that will still arrive: expected new sessions per slot, and what they will want.

:class:`ArrivalForecaster` counts past arrivals per (local day, slot), averages them per day
class (workday, Saturday, Sunday/holiday, with recent days weighted more), smooths them around
the clock, and does the same for the energy [kWh] and dwell [h] of the sessions that arrived
then. An optimizer can hold back capacity for the expected arrivals.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from nowblock.forecast import kernels as K
from nowblock.forecast.calendar import (
    Calendar,
    ForecastError,
    check_horizon,
    check_time_range,
    day_classes,
    parse_horizon,
)

_H_NS = 3_600 * 10**9


def _ns(values) -> np.ndarray:
    """Timestamps (tz-aware) as int64 UTC nanoseconds."""
    return pd.DatetimeIndex(pd.to_datetime(values)).tz_convert("UTC").as_unit("ns").asi8


class ArrivalForecaster:
    """Expected arrivals per slot and their expected energy [kWh] and dwell [h].

    ``step``: slot width (must divide a day). ``decay``: weight of a day one day older
    (0.98 -> a half-life of about five weeks). ``smooth``: half-width of the triangular
    smoothing of arrival rates around the clock; energy and dwell use twice that.
    """

    def __init__(self, *, step="15min", calendar: Calendar | None = None, decay: float = 0.98,
                 smooth="1h") -> None:
        self.step = pd.Timedelta(step)
        if pd.Timedelta(days=1) % self.step:
            raise ForecastError(f"step {self.step} does not divide a day")
        self.calendar = calendar or Calendar()
        self.decay = float(decay)
        self.smooth = pd.Timedelta(smooth)
        self._fitted = False

    def fit(self, sessions: pd.DataFrame, *, start=None, end=None) -> "ArrivalForecaster":
        """Learn from past sessions (arrival, departure tz-aware; energy_kwh [kWh]).

        The observed period runs from ``start`` (default: local midnight before the first
        arrival) to ``end`` (default: the end of the last arrival's day); days in it without an
        arrival count as zero arrivals.
        """
        if len(sessions) == 0 and (start is None or end is None):
            raise ForecastError("sessions: empty; pass start and end to learn a zero rate")
        arr = pd.DatetimeIndex(pd.to_datetime(sessions["arrival"])) if len(sessions) else pd.DatetimeIndex([], tz="UTC")
        if arr.tz is None:
            raise ForecastError("sessions.arrival: timestamps must be timezone-aware")
        check_time_range("sessions.arrival", arr)
        if len(sessions):
            check_time_range("sessions.departure", pd.to_datetime(sessions["departure"]))
        for name, t in (("start", start), ("end", end)):
            if t is not None:
                check_time_range(name, pd.Timestamp(t))
        n_slots = int(pd.Timedelta(days=1) / self.step)
        day, slot = self.calendar.day_slot(arr, self.step)
        first = (self.calendar.day_slot(pd.DatetimeIndex([pd.Timestamp(start)]), self.step)[0][0]
                 if start is not None else int(day.min()))
        last = (self.calendar.day_slot(pd.DatetimeIndex([pd.Timestamp(end) - pd.Timedelta(1, "ns")]), self.step)[0][0]
                if end is not None else int(day.max()))
        n_days = last - first + 1
        if n_days <= 0:
            raise ForecastError("sessions: end is before start")
        rows = day - first
        ones = np.ones(len(arr))
        inside = (rows >= 0) & (rows < n_days)
        flat = rows[inside] * n_slots + slot[inside]
        counts = np.bincount(flat, minlength=n_days * n_slots).reshape(n_days, n_slots).astype(float)
        energy = pd.to_numeric(sessions["energy_kwh"], errors="coerce").fillna(0.0).to_numpy(float) if len(arr) else ones
        # Stays in local wall-clock hours (people leave by the clock): the 23 h and 25 h nights of
        # the DST switches are the usual 18:00 to 07:00; predict turns them back into hours.
        dwell = ((self.calendar.wall_ns(_ns(sessions["departure"])) - self.calendar.wall_ns(arr.as_unit("ns").asi8))
                 / _H_NS if len(arr) else ones)
        if len(arr):
            # A session without a departure (still plugged in, or not exported) or one leaving
            # before it came says nothing about stays: it takes the others' mean. Read as a stay,
            # a missing departure (the smallest int64 once converted) gave 284,170 h (a review).
            dep = pd.DatetimeIndex(pd.to_datetime(sessions["departure"]))
            ok = ~np.asarray(dep.isna()) & (dwell > 0)
            dwell = np.where(ok, dwell, float(dwell[ok].mean()) if ok.any() else 0.0)
        e_sum = np.bincount(flat, weights=energy[inside], minlength=n_days * n_slots).reshape(n_days, n_slots)
        d_sum = np.bincount(flat, weights=dwell[inside], minlength=n_days * n_slots).reshape(n_days, n_slots)
        dclass = day_classes(self.calendar.day_types(np.arange(first, last + 1)))
        hw = int(self.smooth / self.step)
        rate = K.decayed_day_mean(counts, dclass, 3, self.decay)
        e_rate = K.decayed_day_mean(e_sum, dclass, 3, self.decay)
        d_rate = K.decayed_day_mean(d_sum, dclass, 3, self.decay)
        # a class never observed (e.g. no holiday yet) borrows the all-days mean
        all_days = np.zeros(n_days, np.int64)
        for mat, src in ((rate, counts), (e_rate, e_sum), (d_rate, d_sum)):
            fill = K.decayed_day_mean(src, all_days, 1, self.decay)[0]
            mat[np.isnan(mat).any(axis=1)] = fill
        self._rate = K.circular_smooth(rate, hw)
        wide_c = K.circular_smooth(rate, 2 * hw)
        pop_e = float(np.mean(energy)) if len(arr) else 0.0
        pop_d = float(np.mean(dwell)) if len(arr) else 0.0
        with np.errstate(invalid="ignore", divide="ignore"):
            self._energy = np.where(wide_c > 1e-9, K.circular_smooth(e_rate, 2 * hw) / wide_c, pop_e)
            self._dwell = np.where(wide_c > 1e-9, K.circular_smooth(d_rate, 2 * hw) / wide_c, pop_d)
        self.n_days_ = n_days
        self._fitted = True
        return self

    def _hours_from(self, times: pd.DatetimeIndex, wall_h: np.ndarray) -> np.ndarray:
        """[h] Elapsed hours of stays of ``wall_h`` local wall-clock hours from each of ``times``
        (one less across the spring switch, one more across the autumn one)."""
        utc = times.tz_convert("UTC").as_unit("ns").asi8
        ok = np.isfinite(wall_h)
        wall_ns = self.calendar.wall_ns(utc) + np.round(np.where(ok, wall_h, 0.0) * _H_NS).astype(np.int64)
        out = (self.calendar.from_wall_ns(wall_ns) - utc) / _H_NS
        return np.where(ok, np.maximum(out, 0.0), wall_h)

    def predict(self, start, horizon) -> pd.DataFrame:
        """Expected arrivals over ``horizon`` (steps or a duration) from ``start`` (tz-aware).

        Columns: ``arrivals`` (expected number arriving in the slot), ``energy_kwh`` (expected
        energy of one such session [kWh]), ``energy_total_kwh`` (their product) and ``dwell_h``
        (expected stay [h]). Index: slot start times in ``start``'s timezone.
        """
        if not self._fitted:
            raise ForecastError("call fit(sessions) before predict()")
        start = pd.Timestamp(start)
        if start.tzinfo is None:
            raise ForecastError("start must be timezone-aware")
        n = parse_horizon(horizon, self.step)
        check_horizon(start.floor(self.step), n, self.step, horizon)
        times = pd.date_range(start.floor(self.step), periods=n, freq=self.step)
        day, slot = self.calendar.day_slot(times, self.step)
        k = day_classes(self.calendar.day_types(day))
        rate = self._rate[k, slot]
        energy = self._energy[k, slot]
        out = pd.DataFrame({"arrivals": rate, "energy_kwh": energy, "energy_total_kwh": rate * energy,
                            "dwell_h": self._hours_from(times, self._dwell[k, slot])}, index=times)
        out.index.name = "time"
        return out
