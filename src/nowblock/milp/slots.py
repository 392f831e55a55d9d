"""The planning slot grid and time series put onto it (shared by the formulation's adapters).

Slot starts are kept as integer nanoseconds since the epoch (UTC) in :class:`SlotTicks`; a
``pandas.DatetimeIndex`` is made only when someone reads it (:attr:`Formulation.times`).
Building the index was ~0.1 ms of a 50-car receding-horizon step, which rarely reads it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

_NS_PER_UNIT = {"s": 1_000_000_000, "ms": 1_000_000, "us": 1_000, "ns": 1}


@dataclass(frozen=True)
class SlotTicks:
    """Slot starts as integer nanoseconds since the epoch (UTC) and the index's time unit."""

    ns: np.ndarray
    unit: str = "ns"

    def __len__(self) -> int:
        return len(self.ns)

    def index(self) -> pd.DatetimeIndex:
        """The slot starts as a UTC index in ``unit`` (finer if the ticks need it)."""
        unit, per = self.unit, _NS_PER_UNIT[self.unit]
        if per > 1 and (self.ns % per).any():
            unit, per = "ns", 1
        return pd.DatetimeIndex((self.ns // per).view(f"M8[{unit}]"), tz="UTC")


def slot_ticks(start, horizon, step, first=None) -> tuple[np.ndarray, np.ndarray]:
    """Slot starts as integer nanoseconds since the epoch (UTC) and slot lengths [h]: ``step``
    slots over ``horizon``; with ``first`` shorter than ``step``, the first slot is ``first``
    long (a receding-horizon loop's control step) and the regular slots follow it."""
    step_ns = _as_ns(step)
    horizon_ns = _as_ns(horizon)
    if step_ns <= 0 or horizon_ns < step_ns:
        raise ValueError(f"step must be > 0 and horizon >= step (got step={pd.Timedelta(step)}, "
                         f"horizon={pd.Timedelta(horizon)})")
    if not isinstance(start, pd.Timestamp):
        start = pd.Timestamp(start)
    if start.tz is None:
        raise ValueError("start: must be timezone-aware")
    first_ns = step_ns if first is None else _as_ns(first)
    # Integers throughout: pd.date_range and Timedelta arithmetic were a third of the adapter.
    if first_ns <= 0 or first_ns >= step_ns:
        T = -(-horizon_ns // step_ns)
        offs_ns = np.arange(T, dtype=np.int64) * step_ns
        lengths = np.full(T, step_ns / 3.6e12)
    else:
        T = 1 + -(-(horizon_ns - first_ns) // step_ns)
        offs_ns = np.zeros(T, dtype=np.int64)
        offs_ns[1:] = first_ns + np.arange(T - 1, dtype=np.int64) * step_ns
        lengths = np.full(T, step_ns / 3.6e12)
        lengths[0] = first_ns / 3.6e12
    return start.value + offs_ns, lengths


def _as_ns(td) -> int:
    """A duration as integer nanoseconds."""
    return (td if isinstance(td, pd.Timedelta) else pd.Timedelta(td)).value


def on_slots(series: pd.Series | None, ticks_ns: np.ndarray, slot_h: np.ndarray, default: float,
             how: str = "mean") -> np.ndarray:
    """A time series per slot: its ``how`` ("mean" or "max") over the slot starting at
    ``ticks_ns`` [ns since the epoch, UTC] of length ``slot_h`` [h] (step-wise values, last
    value carried forward, the first value before the series)."""
    if series is None or len(series) == 0:
        return np.full(len(ticks_ns), float(default))
    from nowblock.milp.kernels import sample_steps

    t_ns = utc_ns(series.index)
    v = series.to_numpy(dtype=float, na_value=np.nan)
    slot_ns = np.asarray(slot_h, dtype=float) * 3.6e12
    # Sample on a fine grid inside each slot so a series finer than the slot is averaged (a
    # kernel: the pandas reindex/union this replaced cost ~10 ms a call, numpy ~50 us).
    vals, top = sample_steps(t_ns, v, ticks_ns, slot_ns, 15, True)
    if len(vals) == 0:  # NaN, or unsorted or duplicated times: fill, keep the last of each time
        if np.isnan(v).any():
            v = pd.Series(v).ffill().bfill().to_numpy(float)
        order = np.argsort(t_ns, kind="stable")
        t_ns, v = t_ns[order], v[order]
        last = np.r_[t_ns[1:] != t_ns[:-1], True]
        vals, top = sample_steps(t_ns[last], v[last], ticks_ns, slot_ns, 15, False)
    return top if how == "max" else vals.mean(axis=1)


def nan_to(a: np.ndarray, value: float) -> np.ndarray:
    """A copy of ``a`` with NaN replaced by ``value`` (np.nan_to_num costs ~10 us a call)."""
    return np.where(np.isnan(a), value, a)


def utc_ns(index) -> np.ndarray:
    """Nanoseconds since the epoch (UTC; naive counts as UTC) of a datetime index, without
    re-wrapping an index that already is one (that alone cost ~0.1 ms a call)."""
    idx = index if isinstance(index, pd.DatetimeIndex) else pd.DatetimeIndex(index)
    if idx.tz is None:
        idx = idx.tz_localize("UTC")
    # pandas 3 stores microseconds: scale the integers (as_unit("ns") cost ~30 us a call).
    return idx.asi8 * _NS_PER_UNIT[idx.unit]


def hours_since_epoch(ts) -> np.ndarray:
    """Hours since the epoch, whatever the datetime unit (pandas 3 may store us or ns)."""
    idx = pd.DatetimeIndex(ts)
    idx = idx.tz_localize("UTC") if idx.tz is None else idx.tz_convert("UTC")
    return ((idx - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(hours=1)).to_numpy(float)


def plugged_fraction(arrival, departure, times: pd.DatetimeIndex, dt_h) -> np.ndarray:
    """(n, T) fraction of each slot between arrival and departure."""
    t0 = hours_since_epoch(times)[None, :]
    a = hours_since_epoch(arrival)[:, None]
    d = hours_since_epoch(departure)[:, None]
    overlap = np.minimum(d, t0 + dt_h) - np.maximum(a, t0)
    return np.clip(overlap / dt_h, 0.0, 1.0)
