"""Local calendar for the forecaster: wall-clock day and slot of a timestamp, day types.

Household load follows the local clock, not UTC, so every model works on a matrix of
(local day, slot of the day). A DST day has one hour missing (spring: those slots stay NaN)
or doubled (autumn: the two readings of that hour are averaged).

Day types: 0..6 = Monday..Sunday, with public holidays (``holidays``, Germany / North
Rhine-Westphalia by default) mapped to 6, "like a Sunday". Day classes: 0 workday,
1 Saturday, 2 Sunday or holiday.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pandas as pd

DAY_NS = 86_400 * 10**9
SUNDAY = 6


class ForecastError(ValueError):
    """History or arguments a forecaster cannot work with; the message says what to fix."""


@dataclass(frozen=True)
class Calendar:
    """Which clock and holidays a forecaster uses: ``tz`` (IANA name), ``country``/``subdiv``
    for :func:`holidays.country_holidays` (``country=None`` disables holidays)."""

    tz: str = "Europe/Berlin"
    country: str | None = "DE"
    subdiv: str | None = "NW"

    def day_slot(self, index: pd.DatetimeIndex, step: pd.Timedelta) -> tuple[np.ndarray, np.ndarray]:
        """Local epoch day number and slot of the day (``step`` wide) for each timestamp."""
        if index.tz is None:
            raise ForecastError("time index must be timezone-aware")
        wall = index.tz_convert(self.tz).tz_localize(None).as_unit("ns").asi8
        step_ns = int(step / pd.Timedelta(1, "ns"))
        day = np.floor_divide(wall, DAY_NS)
        slot = np.floor_divide(wall - day * DAY_NS, step_ns)
        return day.astype(np.int64), slot.astype(np.int64)

    def day_types(self, epoch_days: np.ndarray) -> np.ndarray:
        """Day type 0..6 (Monday..Sunday, holidays as 6) of local epoch day numbers."""
        epoch_days = np.asarray(epoch_days, dtype=np.int64)
        out = (epoch_days + 3) % 7  # 1970-01-01 was a Thursday
        if self.country is not None and len(epoch_days):
            y0 = int(pd.Timestamp(int(epoch_days.min()) * DAY_NS).year)
            y1 = int(pd.Timestamp(int(epoch_days.max()) * DAY_NS).year)
            hol = _holiday_days(self.country, self.subdiv, y0, y1)
            out = np.where(np.isin(epoch_days, hol), SUNDAY, out)
        return out.astype(np.int64)


def day_classes(day_type: np.ndarray) -> np.ndarray:
    """Day class of each day type: 0 workday, 1 Saturday, 2 Sunday or holiday."""
    t = np.asarray(day_type)
    return np.where(t <= 4, 0, t - 4).astype(np.int64)


@lru_cache(maxsize=64)
def _holiday_days(country: str, subdiv: str | None, y0: int, y1: int) -> np.ndarray:
    import holidays

    cal = holidays.country_holidays(country, subdiv=subdiv, years=range(y0, y1 + 1))
    days = [(pd.Timestamp(d) - pd.Timestamp("1970-01-01")).days for d in cal]
    return np.array(sorted(days), dtype=np.int64)


def infer_step(index: pd.DatetimeIndex) -> pd.Timedelta:
    """The series' step: the most common spacing of its timestamps; must divide a day."""
    if len(index) < 2:
        raise ForecastError("need at least two timestamps to infer the step")
    diffs = np.diff(index.as_unit("ns").asi8)
    diffs = diffs[diffs > 0]
    if len(diffs) == 0:
        raise ForecastError("timestamps do not advance")
    vals, counts = np.unique(diffs, return_counts=True)
    step_ns = int(vals[np.argmax(counts)])
    if DAY_NS % step_ns:
        raise ForecastError(f"step {pd.Timedelta(step_ns, 'ns')} does not divide a day")
    return pd.Timedelta(step_ns, "ns")


def to_matrix(values: np.ndarray, row: np.ndarray, slot: np.ndarray, n_rows: int, n_slots: int) -> np.ndarray:
    """Average ``values`` into a (n_rows, n_slots) matrix; cells without a finite value are NaN."""
    ok = np.isfinite(values) & (row >= 0) & (row < n_rows)
    flat = row[ok] * n_slots + slot[ok]
    total = np.bincount(flat, weights=values[ok], minlength=n_rows * n_slots)
    count = np.bincount(flat, minlength=n_rows * n_slots)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = total / count
    return out.reshape(n_rows, n_slots)


def parse_horizon(horizon, step: pd.Timedelta) -> int:
    """Number of steps in ``horizon`` (an int of steps, or a Timedelta / string like '24h')."""
    if isinstance(horizon, (int, np.integer)):
        n = int(horizon)
    else:
        n = int(np.ceil(pd.Timedelta(horizon) / step))
    if n <= 0:
        raise ForecastError(f"horizon must be positive, got {horizon!r}")
    return n
