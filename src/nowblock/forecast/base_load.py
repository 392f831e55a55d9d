"""Forecasts of the block's base load (its load other than charging) [kW].

Estimators in the familiar style: ``fit(history)`` with a Series of kW on a tz-aware index
(15-min or any step that divides a day), then ``predict(horizon)`` -> DataFrame with the point
forecast ``kw`` (the median by default, ``point="mean"`` for the profile itself) and quantile
columns ``q0.05`` ... ``q0.95`` (names from :func:`quantile_column`), never below the lowest load
in the history (``clip_to_history``).

* :class:`SeasonalNaiveForecaster`: last week's reading at the same local time (the floor).
* :class:`SimilarDayForecaster`: exponentially weighted similar-day profiles (per weekday and
  per day class, public holidays counted as Sundays), a level term that pulls the first hours
  towards the load just measured, all parameters chosen by a grid search of day-ahead errors
  run in Numba (:func:`nowblock.forecast.kernels.fit_similar_day`).

Quantiles of both come from out-of-sample (day-ahead) residuals of the last weeks, per hour of
the day. No NaN leaves ``predict``: gaps are skipped, a short history falls back to the
day-class profile, the all-days profile, then the mean.

:class:`BaseLoadForecaster` is the hook the simulator and the live controller call every step:
``predict(history, now, horizon) -> Series`` [kW], refitting once a day; with ``quantile=0.95``
it hands out the upper quantile so that a planner keeps a safety margin.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from nowblock.forecast import kernels as K
from nowblock.forecast.calendar import (
    Calendar,
    ForecastError,
    check_horizon,
    check_time_range,
    day_classes,
    infer_step,
    parse_horizon,
    to_matrix,
)

DEFAULT_QUANTILES = (0.05, 0.1, 0.5, 0.9, 0.95)


def quantile_column(q: float) -> str:
    """Column name of quantile ``q`` (0..1) in a forecast frame, e.g. 0.95 -> 'q0.95'."""
    return f"q{q:g}"


@dataclass(frozen=True)
class _Layout:
    """Where each reading of a history falls in the (local day, slot) matrix."""

    step: pd.Timedelta
    n_slots: int
    day0: int  # local epoch day of matrix row 0
    n_days: int
    rows: np.ndarray
    slots: np.ndarray
    day_type: np.ndarray


def _as_series(history, name: str = "history") -> pd.Series:
    if isinstance(history, pd.DataFrame):
        if "kw" in history.columns:
            history = history["kw"]
        elif history.shape[1] == 1:
            history = history.iloc[:, 0]
        else:
            raise ForecastError(f"{name}: expected a Series or a frame with a 'kw' column, got {list(history.columns)}")
    if not isinstance(history, pd.Series):
        raise ForecastError(f"{name}: expected a pandas Series of kW, got {type(history).__name__}")
    if not isinstance(history.index, pd.DatetimeIndex):
        raise ForecastError(f"{name}: index must be a DatetimeIndex")
    if history.index.tz is None:
        raise ForecastError(f"{name}: time index must be timezone-aware")
    check_time_range(name, history.index)
    s = pd.Series(pd.to_numeric(history, errors="coerce").to_numpy(float), index=history.index)
    if not s.index.is_monotonic_increasing:
        s = s.sort_index()
    if s.index.has_duplicates:
        s = s[~s.index.duplicated(keep="last")]
    return s


class _Estimator:
    """Shared plumbing: validation, the local-time matrix, horizons, output frames.

    ``quantiles`` (0..1) to report; ``calendar`` (clock and holidays); ``min_history`` finite
    readings below which ``fit`` raises; ``quantile_days`` of day-ahead residuals behind the
    quantiles; ``point`` "median" or "mean"; ``clip_to_history`` floors every column at the
    lowest reading in the history [kW].
    """

    def __init__(self, *, quantiles=DEFAULT_QUANTILES, calendar: Calendar | None = None,
                 min_history: int = 4, quantile_days: int = 56, point: str = "median",
                 clip_to_history: bool = True) -> None:
        qs = np.asarray(sorted(set(float(q) for q in quantiles)), float)
        if len(qs) and (qs.min() <= 0 or qs.max() >= 1):
            raise ForecastError(f"quantiles must lie in (0, 1), got {quantiles}")
        if point not in ("median", "mean"):
            raise ForecastError(f"point must be 'median' or 'mean', got {point!r}")
        self.quantiles = qs
        self.point = point
        self.clip_to_history = bool(clip_to_history)
        # offsets are learnt for the median too, whether or not it is asked for
        self._qs_all = np.asarray(sorted(set(qs.tolist()) | {0.5}), float)
        self.calendar = calendar or Calendar()
        self.min_history = int(min_history)
        self.quantile_days = int(quantile_days)
        self._fitted = False

    # ---- layout -------------------------------------------------------------------------
    def _layout(self, index: pd.DatetimeIndex, step: pd.Timedelta | None = None) -> _Layout:
        step = step if step is not None else infer_step(index)
        n_slots = int(pd.Timedelta(days=1) / step)
        day, slot = self.calendar.day_slot(index, step)
        day0 = int(day.min())
        n_days = int(day.max()) - day0 + 1
        dtype = self.calendar.day_types(np.arange(day0, day0 + n_days))
        return _Layout(step, n_slots, day0, n_days, day - day0, slot, dtype)

    def _check(self, s: pd.Series) -> None:
        n_ok = int(np.isfinite(s.to_numpy()).sum())
        if n_ok < self.min_history:
            raise ForecastError(
                f"history has {n_ok} finite readings; need at least {self.min_history} (one day or more recommended)"
            )

    def fit(self, history) -> "_Estimator":
        """Learn from ``history``: a Series of load [kW] on a tz-aware DatetimeIndex (NaN = gap)."""
        s = _as_series(history)
        self._check(s)
        layout = self._layout(s.index)
        values = s.to_numpy()
        self._fit_arrays(values, layout)
        self._floor = float(np.nanmin(values))
        self._end = s.index[-1]
        self._tz = s.index.tz
        self._fitted = True
        return self

    def predict(self, horizon, *, start=None, recent: pd.Series | None = None) -> pd.DataFrame:
        """Forecast ``horizon`` (steps, or a duration like '24h') from ``start`` (default: one
        step after the history) -> DataFrame of ``kw`` and quantile columns [kW].

        ``recent``: readings [kW] newer than the fitted history (up to ``start``), used to pull
        the first hours towards the current level without refitting.
        """
        if not self._fitted:
            raise ForecastError("call fit(history) before predict()")
        step = self._lay.step
        n = parse_horizon(horizon, step)
        start = self._end + step if start is None else pd.Timestamp(start)
        if start.tzinfo is None:
            raise ForecastError("start must be timezone-aware")
        check_horizon(start, n, step, horizon)
        times = pd.date_range(start.tz_convert(self._tz), periods=n, freq=step)
        day, slot = self.calendar.day_slot(times, step)
        point, offsets = self._point(day, slot, times, _as_series(recent, "recent") if recent is not None else None)
        lo = self._floor if self.clip_to_history else -np.inf  # never below the lowest load measured
        all_q = {float(q): np.maximum(point + offsets[:, j], lo) for j, q in enumerate(self._qs_all)}
        cols = {"kw": all_q[0.5] if self.point == "median" else np.maximum(point, lo)}
        cols.update({quantile_column(q): all_q[float(q)] for q in self.quantiles})
        out = pd.DataFrame(cols, index=times)
        out.index.name = "time"
        if not np.isfinite(out.to_numpy()).all():  # pragma: no cover - every path has a fallback
            raise ForecastError("forecast produced non-finite values")
        return out

    # ---- helpers for subclasses ----------------------------------------------------------
    def _quantile_offsets(self, resid: np.ndarray, slots: np.ndarray) -> np.ndarray:
        """Per-hour residual quantiles (24, n_q); pooled where an hour has few residuals."""
        group = (slots * 24) // self._lay.n_slots
        off = K.group_quantiles(resid.astype(float), group.astype(np.int64), 24, self._qs_all, 20)
        if not np.isfinite(off).all():
            off = np.zeros((24, len(self._qs_all)))
        return off

    def _offsets_at(self, slot: np.ndarray) -> np.ndarray:
        return self._offsets[(slot * 24) // self._lay.n_slots]

    def _fit_arrays(self, values, layout):  # pragma: no cover - abstract
        raise NotImplementedError

    def _point(self, day, slot, times, recent):  # pragma: no cover - abstract
        raise NotImplementedError


class SeasonalNaiveForecaster(_Estimator):
    """Weekly seasonal naive: the reading one week earlier at the same local time [kW].

    Falls back to two, three ... weeks earlier, then the latest earlier day, then the mean.
    Quantiles from the residuals of this rule on the last ``quantile_days`` days, per hour.
    """

    period_days = 7

    def _fit_arrays(self, values, layout):
        self._lay = layout
        self._y = to_matrix(values, layout.rows, layout.slots, layout.n_days, layout.n_slots)
        self._mean = float(np.nanmean(self._y))
        d0 = max(1, layout.n_days - self.quantile_days)
        dd, ss = np.meshgrid(np.arange(d0, layout.n_days), np.arange(layout.n_slots), indexing="ij")
        dd, ss = dd.ravel().astype(np.int64), ss.ravel().astype(np.int64)
        pred = K.seasonal_naive_at(self._y[:, :], dd, ss, self.period_days, self._mean)
        # each in-sample day sees only the days before it; where none of them has a reading at
        # the slot the rule falls back to the mean, and that residual is left out: it measures
        # the load's swing around its mean, not the rule's error (one day of history starting at
        # 01:00 local left only the night hour before 01:00 to learn from, all -3 kW against
        # the mean, and pulled the whole median forecast 2 kW down to the history's minimum)
        seen = np.cumsum(np.isfinite(self._y), axis=0)
        resid = np.where(seen[dd - 1, ss] > 0, self._y[dd, ss] - pred, np.nan)
        self._offsets = self._quantile_offsets(resid, ss)

    def _point(self, day, slot, times, recent):
        rows = (day - self._lay.day0).astype(np.int64)
        point = K.seasonal_naive_at(self._y, rows, slot.astype(np.int64), self.period_days, self._mean)
        return point, self._offsets_at(slot)


class SimilarDayForecaster(_Estimator):
    """Weighted similar-day profile with holiday handling and a level term [kW].

    The forecast of a slot is ``blend * A + (1 - blend) * B + rho**h * r``: ``A`` the
    exponentially weighted profile (smoothing ``alpha_a`` per day) of the same weekday
    (holidays count as Sundays), ``B`` that of the same day class (workday, Saturday,
    Sunday/holiday; ``alpha_b``), both learnt on the load smoothed over +-``half_width`` in
    time, and ``r`` the mean error over the last ``level_window`` of measured load, fading
    with the step ``h``. ``fit`` picks every parameter from the grids below by day-ahead mean
    absolute error over the last ``eval_days`` days (a Numba grid search over the last
    ``search_days`` of history; the final profiles learn from all of it); with fewer than
    ``min_search_days`` days of history it keeps the defaults.
    """

    def __init__(self, *, quantiles=DEFAULT_QUANTILES, calendar: Calendar | None = None,
                 alphas_a=(0.1, 0.2, 0.35, 0.6, 1.0), alphas_b=(0.05, 0.1, 0.2, 0.4), alpha_g: float = 0.1,
                 half_widths=("0min", "15min", "30min", "60min"), blends=(0.0, 0.25, 0.5, 0.75, 1.0),
                 rhos=(0.0, 0.5, 0.8, 0.9, 0.95, 0.98), level_window="2h", eval_days: int = 28,
                 search_days: int = 182,
                 min_search_days: int = 21, min_history: int = 4, quantile_days: int = 56,
                 point: str = "median", clip_to_history: bool = True) -> None:
        super().__init__(quantiles=quantiles, calendar=calendar, min_history=min_history,
                         quantile_days=quantile_days, point=point, clip_to_history=clip_to_history)
        self.alphas_a = np.asarray(alphas_a, float)
        self.alphas_b = np.asarray(alphas_b, float)
        self.alpha_g = float(alpha_g)
        self.half_widths = tuple(pd.Timedelta(w) for w in half_widths)
        self.blends = np.asarray(blends, float)
        self.rhos = np.asarray(rhos, float)
        self.level_window = pd.Timedelta(level_window)
        self.eval_days = int(eval_days)
        self.search_days = int(search_days)
        self.min_search_days = int(min_search_days)

    def _fit_arrays(self, values, layout):
        self._lay = layout
        y = to_matrix(values, layout.rows, layout.slots, layout.n_days, layout.n_slots)
        dtype = layout.day_type
        dclass = day_classes(dtype)
        widths = np.array([int(w / layout.step) for w in self.half_widths], np.int64)
        n_level = max(1, int(self.level_window / layout.step))
        # the search sees the last `search_days` only: enough for the profiles to settle before
        # the evaluated days, and half the work on a year of history; too short to judge: the
        # middle of each grid (search_from = -1)
        search_from, eval_start = -1, 0
        if layout.n_days >= self.min_search_days:
            search_from = max(0, layout.n_days - self.search_days)
            eval_start = max(14, layout.n_days - search_from - self.eval_days)
        # one kernel for search, profiles and residual quantiles: one cache load at first use
        iw, ia, ib, il, ir, mean, f, sa, sb, sg, off = K.similar_day_fit_all(
            y, dtype, dclass, self.alphas_a, self.alphas_b, self.alpha_g, widths, self.blends, self.rhos,
            n_level, eval_start, search_from, self.quantile_days, self._qs_all, 20)
        self.params_ = {
            "half_width": self.half_widths[iw], "alpha_a": float(self.alphas_a[ia]),
            "alpha_b": float(self.alphas_b[ib]), "blend": float(self.blends[il]), "rho": float(self.rhos[ir]),
        }
        self._mean = float(mean)
        self._state = (sa, sb, sg)
        self._n_level = n_level
        # per-hour quantiles of the out-of-sample day-ahead residuals (see _quantile_offsets)
        self._offsets = off if np.isfinite(off).all() else np.zeros((24, len(self._qs_all)))
        # closing error of the history, for the level term of the next forecast
        ok = np.isfinite(values)
        tail = np.nonzero(ok)[0][-n_level:]
        self._tail_resid = values[tail] - f[layout.rows[tail], layout.slots[tail]]

    def _profile(self, day, slot) -> np.ndarray:
        sa, sb, sg = self._state
        dtype = self.calendar.day_types(day)
        dclass = day_classes(dtype)
        slot = slot.astype(np.int64)
        one = np.zeros_like(slot)
        return K.combine_profiles(sa[dtype, slot][None, :], sb[dclass, slot][None, :], sg[one, slot][None, :],
                                  self.params_["blend"], self._mean)[0]

    def _point(self, day, slot, times, recent):
        tail = self._tail_resid
        last = self._end
        if recent is not None:
            recent = recent[(recent.index > self._end) & np.isfinite(recent.to_numpy())]
            if len(recent):
                rd, rs = self.calendar.day_slot(recent.index, self._lay.step)
                tail = np.concatenate([tail, recent.to_numpy() - self._profile(rd, rs)])[-self._n_level:]
                last = recent.index[-1]
        level = float(tail.mean()) if len(tail) else 0.0
        h = np.maximum((times - last) / self._lay.step, 1.0)
        point = self._profile(day, slot) + level * self.params_["rho"] ** np.asarray(h, float)
        return point, self._offsets_at(slot)


_MODELS = {"similar_day": SimilarDayForecaster, "seasonal_naive": SeasonalNaiveForecaster}


class BaseLoadForecaster:
    """The hook for the simulator and the live loop: ``predict(history, now, horizon)``.

    ``model``: 'similar_day' (default), 'seasonal_naive' or an estimator instance.
    ``quantile``: None for the point forecast, or a level such as 0.95 to hand out that upper
    quantile (a safety margin for the planner). Fits on at most ``lookback`` of history before
    local midnight once a day, and uses today's readings only for the level term, so a call
    per control step costs well under a millisecond of model work after the daily refit.
    """

    def __init__(self, model="similar_day", *, quantile: float | None = None, lookback="365D",
                 calendar: Calendar | None = None) -> None:
        qs = tuple(sorted(set(DEFAULT_QUANTILES) | ({float(quantile)} if quantile is not None else set())))
        if isinstance(model, str):
            if model not in _MODELS:
                raise ForecastError(f"unknown base-load model {model!r}; choose from {sorted(_MODELS)}")
            model = _MODELS[model](quantiles=qs, calendar=calendar)
        elif quantile is not None and not np.isclose(model.quantiles, quantile).any():
            raise ForecastError(f"model has no quantile {quantile}; construct it with quantiles=(..., {quantile})")
        self.model = model
        self.quantile = quantile
        self.column = "kw" if quantile is None else quantile_column(float(quantile))
        self.lookback = pd.Timedelta(lookback)
        self._fit_key = None

    def predict(self, history: pd.Series, now, horizon) -> pd.Series:
        """Load [kW] over ``horizon`` (a duration, or steps) from the slot holding ``now``.

        Only readings at or before ``now`` are used; the index runs at the history's step from
        ``now`` floored to that step. The value of a slot with a reading is the reading (it is
        measured, not forecast). Without any finite reading there is nothing to forecast from
        and the result is an empty Series (the caller keeps the current load); with fewer than
        the model's minimum it is flat at their mean. Never NaN. Returns a Series named 'kw'.
        """
        now = pd.Timestamp(now)
        if now.tzinfo is None:
            raise ForecastError("now must be timezone-aware")
        check_time_range("now", now)
        full = _as_series(history) if len(history) else pd.Series([], index=pd.DatetimeIndex([], tz="UTC"), dtype=float)
        s = full[(full.index <= now) & (full.index > now - self.lookback)]
        finite = s[np.isfinite(s.to_numpy())]
        if len(finite) == 0:
            return pd.Series([], index=pd.DatetimeIndex([], tz=now.tz), dtype=float, name="kw")
        full_index = full.index
        step = infer_step(s.index) if len(s) >= 2 else (infer_step(full_index) if len(full_index) >= 2 else None)
        if step is None or len(finite) < self.model.min_history:
            step = step or pd.Timedelta("15min")
            n = parse_horizon(horizon, step)
            times = pd.date_range(now.floor(step), periods=n, freq=step)
            return pd.Series(float(finite.mean()), index=times, name="kw")
        midnight = now.tz_convert(self.model.calendar.tz).normalize()
        key = (midnight, step)
        if key != self._fit_key:
            before = s[s.index < midnight]
            enough = np.isfinite(before.to_numpy()).sum() >= max(self.model.min_history, 2 * int(pd.Timedelta("1D") / step))
            base = before if enough else s
            self.model.fit(base)
            self._fit_key = key if enough else None  # refit next call while history is short
            self._fit_end = base.index[-1]
        n = parse_horizon(horizon, step)
        recent = s[s.index > self._fit_end]
        start = now.floor(step)
        fc = self.model.predict(n, start=start, recent=recent)[self.column]
        measured = s.reindex(fc.index)
        fc = fc.where(~np.isfinite(measured.to_numpy()), measured)
        fc.name = "kw"
        return fc
