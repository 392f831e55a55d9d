"""Local calendar for the forecaster: wall-clock day and slot of a timestamp, day types.

Household load follows the local clock, not UTC, so every model works on a matrix of
(local day, slot of the day). A DST day has one hour missing (spring: those slots stay NaN)
or doubled (autumn: the two readings of that hour are averaged).

Day types: 0..6 = Monday..Sunday, with public holidays (``holidays``, Germany / North
Rhine-Westphalia by default) mapped to 6, "like a Sunday". Day classes: 0 workday,
1 Saturday, 2 Sunday or holiday.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from nowblock.block.sessions import TIME_MAX, TIME_MIN

DAY_NS = 86_400 * 10**9
SUNDAY = 6

# Every forecaster computes in pandas' nanosecond timestamps, which run from 1677-09-21 to
# 2262-04-11; two days are kept free at each end for local days, the day after and a day of slots
# (TIME_MIN, TIME_MAX: the range every input is checked against, one definition).
_RANGE = (f"{TIME_MIN:%Y-%m-%d} to {TIME_MAX:%Y-%m-%d} UTC (pandas' nanosecond timestamps run from "
          f"{pd.Timestamp.min:%Y-%m-%d} to {pd.Timestamp.max:%Y-%m-%d}; two days are kept free at each end)")


class ForecastError(ValueError):
    """History or arguments a forecaster cannot work with; the message says what to fix."""


def check_time_range(name: str, times) -> None:
    """Raise :class:`ForecastError` naming ``name`` if a timestamp in ``times`` (a Timestamp,
    DatetimeIndex or Series; NaT ignored) lies outside ``TIME_MIN`` .. ``TIME_MAX``, the
    range the forecasters can compute in (beyond it pandas raises OutOfBoundsDatetime deep
    inside them)."""
    idx = pd.DatetimeIndex([times]) if isinstance(times, (pd.Timestamp, dt.datetime)) else pd.DatetimeIndex(times)
    idx = idx[~idx.isna()]
    if not len(idx):
        return
    lo, hi = (TIME_MIN, TIME_MAX) if idx.tz is not None else (TIME_MIN.tz_localize(None), TIME_MAX.tz_localize(None))
    first, last = idx.min(), idx.max()
    if first < lo or last > hi:
        bad = first if first < lo else last
        raise ForecastError(f"{name}: {bad.isoformat()} is outside the range the forecasters work in: {_RANGE}")


def check_horizon(start: pd.Timestamp, n: int, step: pd.Timedelta, horizon) -> None:
    """Raise :class:`ForecastError` if ``start`` or the ``n`` steps of ``horizon`` from it leave
    the range of :func:`check_time_range`."""
    check_time_range("start", start)
    if n > (TIME_MAX - start) / step:
        raise ForecastError(f"horizon: {horizon!r} from {start.isoformat()} runs past {TIME_MAX:%Y-%m-%d} UTC, "
                            f"the end of the range the forecasters work in: {_RANGE}")


@dataclass(frozen=True)
class Calendar:
    """Which clock and holidays a forecaster uses: ``tz`` (IANA name), ``country``/``subdiv``
    for :func:`holidays.country_holidays` (``country=None`` disables holidays)."""

    tz: str = "Europe/Berlin"
    country: str | None = "DE"
    subdiv: str | None = "NW"

    @classmethod
    def for_site(cls, site) -> "Calendar":
        """The calendar of ``site``'s clock: :meth:`for_zone` of its ``timezone``.

        Every forecaster defaults to Europe/Berlin; where a site is known (the simulator, the
        live controller, the demo) it should learn in the site's own wall clock, else a New York
        block's Friday-evening stays are learnt as Saturday-morning ones.

        Parameters
        ----------
        site : nowblock.Site
            The block (only its ``timezone``, an IANA name, is read).

        Returns
        -------
        Calendar
        """
        return cls.for_zone(site.timezone)

    @classmethod
    def for_zone(cls, tz: str) -> "Calendar":
        """The calendar of the IANA time zone ``tz`` with its country's public holidays.

        Europe/Berlin keeps the default (Germany, North Rhine-Westphalia, where the embedded
        block lies); another zone takes the country the IANA ``zone.tab`` gives it, national
        holidays only, when the ``holidays`` library knows that country, else none (German
        holidays would mark the wrong days off). Pass ``Calendar(tz, country, subdiv)`` for a
        region's own holidays.

        Parameters
        ----------
        tz : str
            An IANA time zone such as ``"Europe/Lisbon"``.

        Returns
        -------
        Calendar
        """
        if tz == cls.tz:
            return cls()
        return cls(tz=tz, country=_zone_country(tz), subdiv=None)

    def day_slot(self, index: pd.DatetimeIndex, step: pd.Timedelta) -> tuple[np.ndarray, np.ndarray]:
        """Local epoch day number and slot of the day (``step`` wide) for each timestamp."""
        if index.tz is None:
            raise ForecastError("time index must be timezone-aware")
        wall = index.tz_convert(self.tz).tz_localize(None).as_unit("ns").asi8
        step_ns = int(step / pd.Timedelta(1, "ns"))
        day = np.floor_divide(wall, DAY_NS)
        slot = np.floor_divide(wall - day * DAY_NS, step_ns)
        return day.astype(np.int64), slot.astype(np.int64)

    def wall_ns(self, utc_ns) -> np.ndarray:
        """Local wall-clock time in ``tz`` of UTC instants, both as int64 nanoseconds.

        Parameters
        ----------
        utc_ns : array-like of int
            [ns] UTC nanoseconds since the epoch.

        Returns
        -------
        numpy.ndarray
            [ns] The local wall clock read as if it were UTC (the autumn hour that happens twice
            maps both of its instants onto the same wall times).
        """
        idx = pd.DatetimeIndex(np.asarray(utc_ns, dtype=np.int64).astype("datetime64[ns]")).tz_localize("UTC")
        return idx.tz_convert(self.tz).tz_localize(None).as_unit("ns").asi8

    def from_wall_ns(self, wall_ns) -> np.ndarray:
        """The UTC instant [ns] of local wall-clock times [ns], the inverse of :meth:`wall_ns`.

        A wall time in the repeated autumn hour is read as its first (summer-time) instant and one
        in the skipped spring hour as the last instant before the switch: of two readings the
        earlier, so a departure read from the clock is never planned later than it happens.
        Wall times within a day of pandas' last timestamp take the offset of that day; the result
        never passes ``pd.Timestamp.max``.

        Parameters
        ----------
        wall_ns : array-like of int
            [ns] Local wall-clock times read as if they were UTC.

        Returns
        -------
        numpy.ndarray
            [ns] UTC nanoseconds since the epoch.
        """
        wall = np.asarray(wall_ns, dtype=np.int64)
        if not len(wall):
            return wall.copy()
        # pandas cannot localize right at its ends: take the offset from a day inside them
        clipped = np.clip(wall, pd.Timestamp.min.value + DAY_NS, pd.Timestamp.max.value - DAY_NS)
        local = pd.DatetimeIndex(clipped.astype("datetime64[ns]")).tz_localize(
            self.tz, ambiguous=np.ones(len(wall), dtype=bool), nonexistent="shift_backward")
        offset = clipped - local.tz_convert("UTC").tz_localize(None).as_unit("ns").asi8
        lo, hi = np.int64(pd.Timestamp.min.value), np.int64(pd.Timestamp.max.value)
        with np.errstate(over="ignore"):
            utc = wall - offset  # wraps round only where replaced below
        return np.where((offset < 0) & (wall > hi + offset), hi, np.where((offset > 0) & (wall < lo + offset), lo, utc))

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


@lru_cache(maxsize=64)
def _zone_country(tz: str) -> str | None:
    """The ISO country code of an IANA zone from the system's ``zone.tab`` (None if unknown, or
    if the ``holidays`` library has no calendar for it)."""
    import zoneinfo

    for folder in zoneinfo.TZPATH:
        try:
            lines = (Path(folder) / "zone.tab").read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            cols = line.split("\t")
            if len(cols) >= 3 and not line.startswith("#") and cols[2] == tz:
                import holidays

                return cols[0] if cols[0] in holidays.list_supported_countries() else None
        return None
    return None


def day_classes(day_type: np.ndarray) -> np.ndarray:
    """Day class of each day type: 0 workday, 1 Saturday, 2 Sunday or holiday."""
    t = np.asarray(day_type)
    return np.where(t <= 4, 0, t - 4).astype(np.int64)


def _cache_dir() -> Path | None:
    """Where holiday tables are kept between processes: ``NOWBLOCK_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/nowblock`` (``~/.cache/nowblock``); empty ``NOWBLOCK_CACHE_DIR`` = none."""
    env = os.environ.get("NOWBLOCK_CACHE_DIR")
    if env is not None:
        return Path(env) if env else None
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "nowblock"


def _holiday_days(country: str, subdiv: str | None, y0: int, y1: int) -> np.ndarray:
    """Local epoch day numbers of the public holidays of ``country``/``subdiv`` in y0..y1."""
    return np.concatenate([_holiday_year(country, subdiv, y) for y in range(y0, y1 + 1)])


@lru_cache(maxsize=1)
def _holidays_stamp() -> str:
    # which `holidays` is installed, without importing it or reading package metadata (both
    # cost more than the cached table saves): its __init__.py's modification time and size
    import importlib.util

    spec = importlib.util.find_spec("holidays")
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError("No module named 'holidays'")
    st = os.stat(spec.origin)
    return f"{st.st_mtime_ns:x}{st.st_size:x}"


@lru_cache(maxsize=256)
def _holiday_year(country: str, subdiv: str | None, year: int) -> np.ndarray:
    """Holidays of one year as local epoch day numbers (sorted).

    ``holidays`` builds any country's calendar only after importing all of its 280 country
    modules (0.15 to 0.3 s, as much as the rest of a first forecast), so each year's table is
    also kept on disk (:func:`_cache_dir`), keyed by the installed ``holidays``; a cache file
    that cannot be read or written is ignored.
    """
    path = None
    folder = _cache_dir()
    if folder is not None:
        path = folder / f"holidays-{_holidays_stamp()}-{country}-{subdiv}-{year}.npy"
        try:
            return np.load(path)
        except (OSError, ValueError):
            pass
    import holidays

    cal = holidays.country_holidays(country, subdiv=subdiv, years=year)
    epoch = dt.date(1970, 1, 1)
    days = np.array(sorted((d - epoch).days for d in cal), dtype=np.int64)
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
            np.save(tmp, days)
            os.replace(tmp, path)  # atomic: a concurrent process never reads half a file
        except OSError:
            pass
    return days


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
