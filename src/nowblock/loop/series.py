"""Time series on the control grid: one rule for the base load and prices, simulated or live."""

from __future__ import annotations

import numpy as np
import pandas as pd


def step_stats(series: pd.Series | None, start: pd.Timestamp, step: pd.Timedelta, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Time-weighted mean and maximum of a step-function series over ``n`` steps from ``start``.

    Parameters
    ----------
    series : pandas.Series or None
        Values over a sorted UTC DatetimeIndex; a sample holds until the next one, the first
        value holds before the first sample and the last after the last. None or empty: zeros.
    start : pandas.Timestamp
        Start of the first step (UTC).
    step : pandas.Timedelta
        Length of every step.
    n : int
        Number of steps.

    Returns
    -------
    mean, maximum : numpy.ndarray
        Two arrays of length ``n`` in the series' unit: the time-weighted mean of every step and
        the largest value inside it (a load that peaks inside a step is planned at its peak).
    """
    if series is None or len(series) == 0:
        return np.zeros(n), np.zeros(n)
    t = series.index.as_unit("ns").asi8.astype(np.int64)
    v = series.to_numpy(float)
    s0, st = int(pd.Timestamp(start).as_unit("ns").value), int(pd.Timedelta(step).value)
    edges = s0 + st * np.arange(n + 1, dtype=np.int64)
    pos = np.clip(np.searchsorted(t, edges, side="right") - 1, 0, len(t) - 1)
    mx = v[pos[:-1]].copy()
    k = np.searchsorted(edges, t, side="right") - 1
    inner = (k >= 0) & (k < n) & (t > edges[np.clip(k, 0, n)])
    np.maximum.at(mx, k[inner], v[inner])
    # Cumulative integral of the step function at the samples, then at the edges.
    cum = np.concatenate([[0.0], np.cumsum(v[:-1] * np.diff(t).astype(float))])
    f_edges = cum[pos] + v[pos] * (edges - t[pos]).astype(float)
    mean = np.diff(f_edges) / float(st)
    return mean, mx


def on_grid(series: pd.Series | None, start: pd.Timestamp, step: pd.Timedelta, n: int, *, how: str = "max",
            name: str = "kw", default: float = 0.0) -> pd.Series:
    """``series`` resampled onto ``n`` steps from ``start`` (see :func:`step_stats`).

    Parameters
    ----------
    how : {"max", "mean"}
        The step's maximum (loads: plan for the peak) or time-weighted mean (prices).
    default : float
        The value of every step when ``series`` is None or empty.

    Returns
    -------
    pandas.Series
        Indexed by the step starts (UTC), named ``name``.
    """
    index = pd.date_range(pd.Timestamp(start), periods=n, freq=pd.Timedelta(step))
    if series is None or len(series) == 0:
        return pd.Series(np.full(n, float(default)), index=index, name=name)
    mean, mx = step_stats(series.dropna(), start, step, n)
    return pd.Series(mx if how == "max" else mean, index=index, name=name)
