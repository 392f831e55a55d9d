"""Each plugged-in car's needs: when it will leave and how much energy it wants.

OCPP 1.6 never says; 2.0.1 only sometimes. :class:`SessionNeedsForecaster` learns them from
past sessions (the sessions frame of the contract, optionally with an ``id_tag`` column) as a
conditional distribution: history sessions are weighted as neighbours of the car in question
(same id tag or charging point, kind of day, arrival hour; see
:func:`nowblock.forecast.kernels.needs_weights`), and the quantiles of their dwell time and
energy, given that this car is still plugged in and has already taken what it took, are the
forecast. Sessions of other charging points keep a small weight, so a new charging point or a
stranger gets the population's answer: the fallback is built into the weights.

The simulator calls ``predict_needs(cars, time)`` when needs are unknown
(``simulate(..., needs="unknown", needs_estimator=...)``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from nowblock.forecast import kernels as K
from nowblock.forecast.calendar import Calendar, ForecastError, day_classes


def _hours(index_like, tz: str) -> np.ndarray:
    t = pd.DatetimeIndex(index_like).tz_convert(tz)
    return (t.hour + t.minute / 60.0 + t.second / 3600.0).to_numpy(float)


class SessionNeedsForecaster:
    """Conditional quantiles of departure and energy from kernel-weighted past sessions.

    Parameters are grids; ``fit`` picks the combination with the lowest leave-one-out error of
    the weighted median (dwell and energy, each relative to the population baseline's error)
    on up to ``max_queries`` sampled sessions. ``quantiles`` are reported as extra columns
    (``departure_q0.1``, ``energy_kwh_q0.9`` ...); the point estimate is the median.
    """

    def __init__(self, *, quantiles=(0.1, 0.25, 0.75, 0.9), calendar: Calendar | None = None,
                 bandwidths_h=(0.5, 1.0, 2.0, 4.0), lams_cp=(0.005, 0.03, 0.2), lams_tag=(0.05, 0.3),
                 lams_weekend=(0.05, 0.3, 1.0), max_history: int = 5000, max_queries: int = 300,
                 min_remaining="5min", fallback_remaining="1h", seed: int = 0) -> None:
        self.quantiles = tuple(sorted(float(q) for q in quantiles))
        self.calendar = calendar or Calendar()
        self.grid = tuple(np.asarray(g, float) for g in (bandwidths_h, lams_cp, lams_tag, lams_weekend))
        self.max_history = int(max_history)
        self.max_queries = int(max_queries)
        self.min_remaining = pd.Timedelta(min_remaining)
        self.fallback_remaining = pd.Timedelta(fallback_remaining)
        self.seed = int(seed)
        self._fitted = False

    # ---- features ---------------------------------------------------------------------------
    def _weekend(self, times: pd.Series) -> np.ndarray:
        """Kind of arrival day: 0 workday before a workday, 1 workday before a day off
        (Friday, eve of a holiday: the car tends to stay longer), 2 day off."""
        day, _ = self.calendar.day_slot(pd.DatetimeIndex(times), pd.Timedelta("1h"))
        off = day_classes(self.calendar.day_types(day)) > 0
        off_next = day_classes(self.calendar.day_types(day + 1)) > 0
        return np.where(off, 2, np.where(off_next, 1, 0)).astype(np.int64)

    def _codes(self, values, categories) -> np.ndarray:
        return categories.get_indexer(pd.Series(values).astype(str)).astype(np.int64)  # -1: never seen

    def _tags(self, frame: pd.DataFrame) -> np.ndarray:
        if "id_tag" not in frame.columns or self._tag_categories is None:
            return np.full(len(frame), -1, np.int64)
        tags = frame["id_tag"]
        codes = self._codes(tags.fillna("").astype(str), self._tag_categories)
        codes[tags.isna().to_numpy() | (tags.astype(str) == "").to_numpy()] = -1
        return codes

    # ---- API ----------------------------------------------------------------------------------
    def fit(self, sessions: pd.DataFrame) -> "SessionNeedsForecaster":
        """Learn from past sessions: columns charge_point_id, arrival, departure (tz-aware),
        energy_kwh [kWh], optional id_tag. Rows with a bad dwell or energy are ignored."""
        need = ("charge_point_id", "arrival", "departure", "energy_kwh")
        missing = [c for c in need if c not in sessions.columns]
        if missing:
            raise ForecastError(f"sessions: missing column(s) {missing}")
        df = sessions.copy()
        for c in ("arrival", "departure"):
            df[c] = pd.to_datetime(df[c])
            if df[c].dt.tz is None:
                raise ForecastError(f"sessions.{c}: timestamps must be timezone-aware")
        dwell = ((df["departure"] - df["arrival"]) / pd.Timedelta(hours=1)).to_numpy(float)
        energy = pd.to_numeric(df["energy_kwh"], errors="coerce").to_numpy(float)
        ok = np.isfinite(dwell) & (dwell > 0) & np.isfinite(energy) & (energy >= 0)
        df = df[ok].sort_values("arrival").iloc[-self.max_history:]
        if len(df) == 0:
            raise ForecastError("sessions: no usable session (need departure after arrival and energy >= 0)")
        self._cp_categories = pd.Index(sorted(df["charge_point_id"].astype(str).unique()))
        tags = df["id_tag"].dropna().astype(str) if "id_tag" in df.columns else pd.Series([], dtype=str)
        tags = tags[tags != ""]
        self._tag_categories = pd.Index(sorted(tags.unique())) if len(tags) else None
        self._cp = self._codes(df["charge_point_id"], self._cp_categories)
        self._tag = self._tags(df)
        self._weekend_h = self._weekend(df["arrival"])
        self._hour = _hours(df["arrival"], self.calendar.tz)
        self._dwell = ((df["departure"] - df["arrival"]) / pd.Timedelta(hours=1)).to_numpy(float)
        self._energy = pd.to_numeric(df["energy_kwh"]).to_numpy(float)
        # Departure either as a dwell time or anchored to the clock (hours after the local
        # midnight of the arrival day: people leave at their hour, whenever they came home).
        self._leave_h = self._hour + self._dwell
        self._order_e = np.argsort(self._energy, kind="stable")
        n = len(df)
        # the population-median baseline's error scales the two targets
        scale_d = max(float(np.mean(np.abs(self._dwell - np.median(self._dwell)))), 1e-6)
        scale_e = max(float(np.mean(np.abs(self._energy - np.median(self._energy)))), 1e-6)
        bws, lcp, ltag, lwe = self.grid
        best = None
        for anchor, target in (("clock", self._leave_h), ("dwell", self._dwell)):
            order = np.argsort(target, kind="stable")
            if n >= 20:
                rng = np.random.default_rng(self.seed)
                queries = np.sort(rng.choice(n, size=min(n, self.max_queries), replace=False)).astype(np.int64)
                err = K.needs_loo_error(self._cp, self._tag, self._weekend_h, self._hour, target, self._energy,
                                        order, self._order_e, queries, bws, lcp, ltag, lwe, scale_d, scale_e)
                idx = np.unravel_index(int(np.argmin(err)), err.shape)
                cand = (float(err[idx]), anchor, idx)
            else:  # too few sessions to judge: a wide, population-leaning middle
                cand = (float("nan"), "dwell", (len(bws) - 1, len(lcp) - 1, len(ltag) - 1, len(lwe) - 1))
            if best is None or cand[0] < best[0]:
                best = cand
        self.loo_error_, self.anchor_, (ib, ic, it, iw) = best
        self._target_d = self._leave_h if self.anchor_ == "clock" else self._dwell
        self._order_d = np.argsort(self._target_d, kind="stable")
        self.params_ = {"bandwidth_h": float(bws[ib]), "lam_cp": float(lcp[ic]), "lam_tag": float(ltag[it]),
                        "lam_weekend": float(lwe[iw]), "anchor": self.anchor_}
        self._fitted = True
        return self

    def predict_needs(self, cars: pd.DataFrame, time) -> pd.DataFrame:
        """Estimated needs of plugged-in cars at ``time``.

        ``cars``: indexed by session_id (or with a session_id column) with charge_point_id,
        arrival (tz-aware), optional energy_delivered_kwh [kWh] (0 if absent) and id_tag.
        Returns a frame indexed by session_id with ``departure`` (tz-aware, after ``time``),
        ``energy_kwh`` [kWh] (>= delivered so far), both medians, and ``departure_qX`` /
        ``energy_kwh_qX`` for each quantile X. Never NaN.
        """
        if not self._fitted:
            raise ForecastError("call fit(sessions) before predict_needs()")
        time = pd.Timestamp(time)
        if time.tzinfo is None:
            raise ForecastError("time must be timezone-aware")
        frame = cars.set_index("session_id") if "session_id" in cars.columns else cars
        qs_all = np.asarray(sorted(set(self.quantiles) | {0.5}), float)
        m = len(frame)
        if m == 0:
            cols = ["departure", "energy_kwh"] + [f"{b}_q{q:g}" for b in ("departure", "energy_kwh") for q in self.quantiles]
            return pd.DataFrame(columns=cols, index=frame.index)
        arrival = pd.to_datetime(frame["arrival"])
        elapsed = np.maximum(((time - arrival) / pd.Timedelta(hours=1)).to_numpy(float), 0.0)
        delivered = (np.maximum(pd.to_numeric(frame["energy_delivered_kwh"], errors="coerce").fillna(0.0).to_numpy(float), 0.0)
                     if "energy_delivered_kwh" in frame.columns else np.zeros(m))
        p = self.params_
        hour = _hours(arrival, self.calendar.tz)
        shift = hour if self.anchor_ == "clock" else np.zeros(m)
        qd, qe = K.needs_quantiles(self._codes(frame["charge_point_id"], self._cp_categories), self._tags(frame),
                                   self._weekend(arrival), hour, elapsed + shift, delivered,
                                   self._cp, self._tag, self._weekend_h, self._hour, self._target_d, self._energy,
                                   self._order_d, self._order_e, p["bandwidth_h"], p["lam_cp"], p["lam_tag"],
                                   p["lam_weekend"], qs_all)
        qd = qd - shift[:, None]  # back to dwell [h]
        # Where no neighbour qualifies (the car already stayed or took more than any of them):
        # it leaves soon and wants nothing more.
        min_rem_h = self.min_remaining / pd.Timedelta(hours=1)
        fb_h = self.fallback_remaining / pd.Timedelta(hours=1)
        qd = np.where(np.isfinite(qd), qd, (elapsed + fb_h)[:, None])
        qd = np.maximum(qd, (elapsed + min_rem_h)[:, None])
        qe = np.where(np.isfinite(qe), qe, delivered[:, None])
        qe = np.maximum(qe, delivered[:, None])
        out = {}
        arr = pd.DatetimeIndex(arrival)
        for j, q in enumerate(qs_all):
            dep = arr + pd.to_timedelta(qd[:, j], unit="h")
            out[("departure", q)] = dep.tz_convert("UTC").round("s")
            out[("energy_kwh", q)] = qe[:, j]
        res = pd.DataFrame({"departure": out[("departure", 0.5)], "energy_kwh": out[("energy_kwh", 0.5)]},
                           index=frame.index)
        for base in ("departure", "energy_kwh"):
            for q in self.quantiles:
                res[f"{base}_q{q:g}"] = out[(base, q)]
        # rounding to the second must not put a departure at or before `time`
        floor = time.tz_convert("UTC") + self.min_remaining
        for c in res.columns:
            if c.startswith("departure"):
                res[c] = res[c].where(res[c] > time, floor)
        res.index.name = "session_id"
        return res

    def population_baseline(self, cars: pd.DataFrame, time) -> pd.DataFrame:
        """The naive comparison: population-median dwell and energy for every car [kWh], with
        the same guarantees as :meth:`predict_needs` (after ``time``, >= delivered)."""
        frame = cars.set_index("session_id") if "session_id" in cars.columns else cars
        arrival = pd.DatetimeIndex(pd.to_datetime(frame["arrival"]))
        dep = arrival + pd.Timedelta(hours=float(np.median(self._dwell)))
        dep = dep.where(dep > time, pd.Timestamp(time) + self.min_remaining)
        delivered = (pd.to_numeric(frame["energy_delivered_kwh"], errors="coerce").fillna(0.0).to_numpy(float)
                     if "energy_delivered_kwh" in frame.columns else np.zeros(len(frame)))
        e = np.maximum(float(np.median(self._energy)), delivered)
        return pd.DataFrame({"departure": dep.tz_convert("UTC"), "energy_kwh": e}, index=frame.index)
