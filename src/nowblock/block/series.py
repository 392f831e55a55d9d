"""A scenario's time series (the block's other load, prices): reading, checking, and whether
they cover the planned time."""

from __future__ import annotations

import logging
from contextvars import ContextVar

import numpy as np
import pandas as pd

from nowblock.block.sessions import ISO_OFFSET_RE, OUTSIDE_TIMES, TIME_MAX, TIME_MIN, iso_times
from nowblock.block.site import Site

# The messages about a scenario's series keep the scenario's logger name, which users and the
# tests filter on; the functions moved here from scenario.py to keep that module readable.
log = logging.getLogger("nowblock.block.scenario")


class ScenarioError(ValueError):
    """A scenario folder or object that is incomplete or inconsistent."""


#: The unit of each series a scenario holds, by its name.
SERIES_UNITS = {"kw": "kW", "eur_per_kwh": "EUR/kWh"}


def time_series(obj, name: str, what: str, tz: str | None = None) -> pd.Series | None:
    """Normalise a time series to a float Series named ``name`` on a sorted UTC index.

    Parameters
    ----------
    obj : pandas.Series, pandas.DataFrame or None
        Values over timezone-aware times; a DataFrame needs the column ``name`` and either a
        ``time`` column or a timezone-aware index.
    name : str
        The Series' name (``kw`` [kW] for a base load, ``eur_per_kwh`` [EUR/kWh] for prices).
    what : str
        How the series is called in errors (they start with it).
    tz : str, optional
        Time zone of the times in errors (ISO 8601 text; UTC if None).

    Returns
    -------
    pandas.Series or None
        None for None.

    Raises
    ------
    TypeError
        ``obj`` is neither a Series nor a DataFrame (a list, an array, a number: no times).
    ScenarioError
        A missing column, a missing time (NaT, a blank cell), times without an offset or
        outside ``TIME_MIN`` .. ``TIME_MAX`` of :mod:`nowblock.block.sessions`, duplicate times,
        missing or infinite values.
    """
    if obj is None:
        return None
    if not isinstance(obj, (pd.Series, pd.DataFrame)):
        # A list got a RangeIndex and "time index must be timezone-aware", which did not say a
        # Series was expected; optimize's words (milp.inputs.check_series).
        unit = SERIES_UNITS.get(name, "")
        raise TypeError(f"{what}: expected a pandas Series [{unit}] over timezone-aware times (or a DataFrame with "
                        f"a column {name!r}), got {type(obj).__name__}")
    if isinstance(obj, pd.DataFrame):
        if name not in obj.columns:
            raise ScenarioError(f"{what}: expected a column {name!r}, got {list(obj.columns)}")
        obj = obj.set_index("time")[name] if "time" in obj.columns else obj[name]
    try:
        s = pd.Series(obj, dtype=float, name=name)
    except (ValueError, TypeError) as exc:  # pandas' words name neither the series nor the unit
        raise ScenarioError(f"{what}: expected numbers [{SERIES_UNITS.get(name, '')}] ({exc})") from exc
    gone = np.asarray(pd.isna(s.index))
    if gone.any():  # a blank time cell (pd.read_csv) became NaT and was kept, unlike in a file read by nowblock
        i = int(np.argmax(gone))
        raise ScenarioError(f"{what}: time is missing for value {i + 1} of {len(s)} ({s.iloc[i]:g} "
                            f"{SERIES_UNITS.get(name, '')}); every value needs its time")
    idx = _aware_index(s.index, what)
    if idx.tz is None:
        raise ScenarioError(f"{what}: time index must be timezone-aware")
    idx = idx.tz_convert("UTC")
    out = (idx < TIME_MIN) | (idx > TIME_MAX)
    if out.any():
        raise ScenarioError(f"{what}: time {iso_times(idx[out][:1], tz)[0]} {OUTSIDE_TIMES}")
    if len(idx) >= 3 and idx.is_monotonic_increasing and not idx.has_duplicates:
        # The same series read back from CSV equals the one written (freq included).
        idx = pd.DatetimeIndex(idx, freq="infer")
    s.index = idx
    s.index.name = "time"
    if s.index.has_duplicates:
        first = iso_times(s.index[s.index.duplicated()][:1], tz)[0]
        raise ScenarioError(f"{what}: duplicate times, first {first}")
    if s.isna().any():
        raise ScenarioError(f"{what}: missing values at {', '.join(iso_times(s.index[s.isna()][:3], tz))}")
    inf = np.isinf(s.to_numpy(float))
    if inf.any():  # an infinite price reached the MILP as NaN costs: HiGHS ran past its time limit
        raise ScenarioError(f"{what}: infinite values at {', '.join(iso_times(s.index[inf][:3], tz))}")
    return s.sort_index()


def _aware_index(index, what: str) -> pd.DatetimeIndex:
    """``index`` as a DatetimeIndex; text (a ``time`` column read by ``pd.read_csv``) with its
    offsets read as instants.

    A file across a clock change holds two offsets (+02:00, +01:00): pandas refuses to read
    such text into one zone ("Mixed timezones detected. Pass utc=True"), so
    ``nb.optimize(..., base_load=pd.read_csv("base_load.csv"))`` was refused with pandas'
    words. Each time is read with its own offset (to UTC; the zone does not matter for an
    instant); a time without an offset is still refused.
    """
    if isinstance(index, pd.DatetimeIndex):
        return index
    values = list(index)
    if all(isinstance(v, str) for v in values):
        text = pd.Series(values, dtype="string")
        no_offset = ~text.str.strip().str.contains(ISO_OFFSET_RE, regex=True).fillna(False).to_numpy()
        if no_offset.any():
            i = int(np.argmax(no_offset))
            raise ScenarioError(f"{what}: time index must be timezone-aware: {values[i]!r} has no UTC offset "
                                f"(expected ISO 8601 with one, like 2026-03-02T18:00+01:00)")
    try:
        return pd.DatetimeIndex(index)
    except (ValueError, TypeError):
        pass
    try:  # mixed offsets (or zones): each an instant
        return pd.DatetimeIndex(pd.to_datetime(values, utc=True, format="ISO8601"))
    except (ValueError, TypeError) as exc:
        raise ScenarioError(f"{what}: cannot read the times ({exc}); expected ISO 8601 with a UTC offset") from exc


#: A base load above this many times the grid connection's rating is refused: no block's other
#: load is that far past its connection for real; most likely W (or a power in kW x 1000) were
#: given where kW are expected.
MAX_BASE_LOAD_RATIO = 100.0

#: [EUR/kWh] A price beyond this (either sign) is refused: five times the most a European
#: electricity market clears at (intraday: +-9999 EUR/MWh), and more than any retail tariff
#: passing that through (9.999 EUR/kWh plus fees and VAT is about 12 EUR/kWh). A series in
#: EUR/MWh read as EUR/kWh (30-300 on an ordinary day) is past it.
MAX_PRICE_EUR_PER_KWH = 50.0

#: [EUR/kWh] A price beyond this (either sign), but within :data:`MAX_PRICE_EUR_PER_KWH`, is
#: warned about once: only a scarcity hour passed through to a retail tariff reaches it, and a
#: series in ct/kWh read as EUR/kWh (20-45 for a household) lands here. It is half the MILP's
#: default shortfall penalty (20 EUR/kWh), past which leaving a car empty is cheaper than
#: charging it.
PLAUSIBLE_PRICE_EUR_PER_KWH = 10.0

#: Where the series of a Scenario being built by ``from_dir`` come from: what -> (file, line of
#: each time), so that the checks in ``__post_init__`` can name the file and the line.
_SOURCES: ContextVar[dict] = ContextVar("_SOURCES", default={})


_warned: set[tuple] = set()  # each base-load warning once a process, like the sessions' warnings


def check_base_load(base_load: pd.Series | None, site: Site, what: str = "base_load",
                    lines: pd.Series | None = None) -> int:
    """Refuse an absurd base load and warn about one that alone overloads the grid connection.

    The block's other load is spread evenly over the three phases of the grid connection (the
    root fuse) and nothing can shed it: in a step in which it alone is past the rating the cars
    get nothing, and ``max_overload_a`` does not count the excess (it measures what the charging
    adds). Such a step is logged as one warning (logger ``nowblock.block.scenario``): how many
    values are past the rating, and the worst.

    Parameters
    ----------
    base_load : pandas.Series or None
        [kW] over UTC times (as normalised by :class:`~nowblock.block.scenario.Scenario`).
    site : Site
        Gives the grid connection's per-phase rating [A] and the voltage [V].
    what : str
        How the series is named in messages (a file's path, or ``"base_load"``).
    lines : pandas.Series, optional
        The file's line of each time (index: the UTC times), to name the line in messages.

    Returns
    -------
    int
        How many values are above the grid connection's rating (0 when none, or no series).

    Raises
    ------
    ScenarioError
        A value above :data:`MAX_BASE_LOAD_RATIO` times the grid connection's rating [kW].
    """
    if base_load is None or not len(base_load):
        return 0
    root = site.root
    rating_a = float(min(root.max_current_a))  # spread evenly: the weakest phase is reached first
    rating_kw = 3.0 * rating_a * site.voltage_v / 1000.0
    kw = base_load.to_numpy(float)
    worst = int(np.argmax(kw))

    def where(i: int) -> str:
        return _where(base_load, i, site.timezone, lines)

    per_phase_a = site.base_load_phase_current_a(kw)[:, 0]
    if kw[worst] > MAX_BASE_LOAD_RATIO * rating_kw:
        raise ScenarioError(
            f"{what}: {where(worst)}: kw {kw[worst]:g} is more than {MAX_BASE_LOAD_RATIO:g} times what the grid "
            f"connection {root.id!r} carries ({rating_kw:.1f} kW: {rating_a:g} A per phase at {site.voltage_v:g} V); "
            f"expected kW, was it given in W?")
    over = np.nonzero(per_phase_a > rating_a * (1 + 1e-9))[0]
    # Keyed by what was found, not by how the series is named: the same series is checked
    # again when a variant is made (with_site), by then without its file's name.
    key = (root.id, rating_a, len(over), len(kw), float(kw[worst]), base_load.index[worst])
    if len(over) and key not in _warned and len(_warned) < 1000:
        _warned.add(key)
        log.warning(
            "%s: the block's other load alone is above the grid connection %r (%.1f kW: %g A per phase at %g V) "
            "in %d of %d values; worst %s: %g kW (%.1f A per phase). Nothing can shed it: the cars get nothing "
            "then, and max_overload_a does not count it (it measures what the charging adds). Check that it is "
            "in kW, net of local generation, and the grid connection's rating",
            what, root.id, rating_kw, rating_a, site.voltage_v, len(over), len(kw), where(worst), kw[worst],
            per_phase_a[worst])
    return int(len(over))


def _where(series: pd.Series, i: int, tz: str | None, lines: pd.Series | None) -> str:
    """``series``' value ``i`` for messages: its file's line and time, or its time."""
    t = series.index[i]
    at = iso_times([t], tz)[0]
    if lines is not None and t in lines.index:
        return f"line {int(lines.loc[t])} ({at})"
    return f"at {at}"


def check_prices(prices: pd.Series | None, tz: str | None = None, what: str = "prices",
                 lines: pd.Series | None = None) -> None:
    """Refuse prices that cannot be EUR/kWh: any beyond :data:`MAX_PRICE_EUR_PER_KWH` either way;
    warn once about any beyond :data:`PLAUSIBLE_PRICE_EUR_PER_KWH` (a scarcity hour, or ct/kWh).

    Prices in EUR/MWh (300) or ct/kWh (30) were taken as EUR/kWh without a word: costs 1000 or
    100 times too high, and a MILP that weighs them against its shortfall penalty (20 EUR/kWh)
    left cars short to save money (outside test: demand met 0.8112 with EUR/kWh, 0.7790 with the
    same prices in EUR/MWh).

    Parameters
    ----------
    prices : pandas.Series or None
        [EUR/kWh] over UTC times (as normalised by :class:`~nowblock.block.scenario.Scenario`).
    tz : str, optional
        Time zone of the times in messages (ISO 8601 text; UTC if None).
    what : str
        How the series is named in messages (a file's path, or ``"prices"``).
    lines : pandas.Series, optional
        The file's line of each time (index: the UTC times), to name the line in messages.

    Raises
    ------
    ScenarioError
        Naming the first value (its line, or its time) beyond the ceiling and the unit expected.
    """
    if prices is None or not len(prices):
        return
    eur = prices.to_numpy(float)
    bad = np.abs(eur) > MAX_PRICE_EUR_PER_KWH
    if bad.any():
        i = int(np.argmax(bad))
        raise ScenarioError(
            f"{what}: {_where(prices, i, tz, lines)}: eur_per_kwh {eur[i]:g} is beyond +-{MAX_PRICE_EUR_PER_KWH:g} "
            f"EUR/kWh, more than any electricity market clears at (intraday: +-9.999 EUR/kWh); expected EUR/kWh, "
            f"was it given in EUR/MWh or ct/kWh?")
    # Over a day at least: a few scarcity hours are most of a short window (optimize's 4 h).
    span = prices.index.max() - prices.index.min() if isinstance(prices.index, pd.DatetimeIndex) else None
    whole_day = span is not None and span >= pd.Timedelta(hours=23)
    mid = float(np.nanmedian(np.abs(eur))) if np.isfinite(eur).any() else 0.0
    if whole_day and mid > PLAUSIBLE_PRICE_EUR_PER_KWH:
        # A scarcity hour is one hour: a series whose middle is past it is in another unit (a
        # windy day of 2-48 EUR/MWh passed the ceiling one value at a time; found by a review).
        raise ScenarioError(
            f"{what}: half of the prices are beyond +-{PLAUSIBLE_PRICE_EUR_PER_KWH:g} EUR/kWh (median of their size "
            f"{mid:g}): no tariff costs that for half its hours; expected EUR/kWh, was it given in EUR/MWh or ct/kWh?")
    odd = np.abs(eur) > PLAUSIBLE_PRICE_EUR_PER_KWH
    if odd.any():
        i = int(np.argmax(odd))
        key = ("prices", what, float(eur[i]))
        if key not in _warned:
            _warned.add(key)
            log.warning("%s: %s: eur_per_kwh %g is beyond +-%g EUR/kWh: only a scarcity hour passed through to "
                        "a retail tariff costs that; expected EUR/kWh, was it given in ct/kWh?", what,
                        _where(prices, i, tz, lines), eur[i], PLAUSIBLE_PRICE_EUR_PER_KWH)


def refuse_empty(series: pd.Series | None, what: str) -> None:
    """Refuse a series given without a value (a header-only file, an empty Series).

    Not the same as none given (None: 0 kW, 0 EUR/kWh, with a warning from
    :meth:`~nowblock.block.scenario.Scenario.from_dir`): an empty base load became 0 kW without a word, and a plan
    checked against the real load overloaded a 45 A grid phase by 45 A.

    Raises
    ------
    ScenarioError
        Naming ``what`` (a file's path, or the argument).
    """
    if series is not None and not len(series):
        raise ScenarioError(f"{what}: no values (only a header, or an empty series); give the series, or leave it "
                            f"out (None, no file) for none")


def _hours(td: pd.Timedelta) -> str:
    """A duration in hours for messages (``7.5 h``)."""
    return f"{td / pd.Timedelta(hours=1):.4g} h"


#: A gap between two times is a hole when it is longer than the step and more than this many
#: times the larger of its two neighbouring gaps: a tariff's change points (6 h, 16 h, 8 h) or a
#: switch from hourly to 15-minute rows is no hole, 6 h missing from 15-minute meter data is.
HOLE_FACTOR = 4


def _local_gaps(idx: pd.DatetimeIndex, step=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The gaps between ``idx``'s times, the larger neighbouring gap of each, and which are holes
    (all in the index's unit; see :data:`HOLE_FACTOR`)."""
    gaps = np.diff(idx.asi8)
    left = np.r_[0, gaps[:-1]]
    right = np.r_[gaps[1:], 0]
    near = np.maximum(left, right)  # 0 for the only gap of two times: nothing to judge it by
    step_n = pd.Timedelta(step) // pd.Timedelta(1, unit=idx.unit) if step is not None else 0
    holes = (near > 0) & (gaps > step_n) & (gaps > HOLE_FACTOR * near)
    return gaps, near, holes


def _last_holds(idx: pd.DatetimeIndex) -> pd.Timedelta:
    """How long the last of two or more times holds: the last gap that is no hole (two
    neighbouring gaps cannot both be holes)."""
    gaps, _, holes = _local_gaps(idx)
    last = gaps[-1] if not holes[-1] else gaps[-2]
    return pd.Timedelta(int(last), unit=idx.unit)


def series_span(series: pd.Series) -> tuple[pd.Timestamp, pd.Timestamp]:
    """The time a step series covers: from its first time to its last plus the time it holds.

    A value holds until the next one, so the last holds as long as the gap before it (the last
    gap that is no hole, :data:`HOLE_FACTOR`); a single value has no spacing and holds from its
    time on.

    Parameters
    ----------
    series : pandas.Series
        Values over a sorted UTC DatetimeIndex, at least one.

    Returns
    -------
    first, end : pandas.Timestamp
        [UTC] ``end`` is :data:`~nowblock.block.sessions.TIME_MAX` for a single value.
    """
    idx = series.index
    if len(idx) < 2:
        return idx[0], TIME_MAX
    return idx[0], idx[-1] + _last_holds(idx)


def missing_parts(series: pd.Series, start, end, step=None) -> list[tuple[pd.Timestamp, pd.Timestamp]]:
    """The parts of ``start`` .. ``end`` a step series gives no value for: before its first
    time, holes between its times, and after its last.

    A value holds until the next time. Each gap is judged by its neighbours, not by the whole
    series: it is a hole when it is longer than ``step`` and more than :data:`HOLE_FACTOR` (4)
    times the larger of the gaps on either side, and the hole runs from the first time plus
    that neighbouring gap to the second. The whole series' median gap made a tariff's change
    points (0.40 from 06:00, 0.20 from 22:00) holes and replaced the day price by the mean, and
    36 of 120 h of hourly prices followed by 15-minute ones; one missing 15-minute reading (a
    30-minute gap) refused a base load. A hole still found: a base load without its evening
    (16:00-22:00) in 15-minute data, whose 13.5 kW afternoon was held across a 32 kW peak (+26 A
    on a 50 A house connection). The last value holds as long as the gap before it, at least a
    step: 1-minute meter data ending at the last 15-minute slot's start covers the window.

    Parameters
    ----------
    series : pandas.Series
        Values over a sorted UTC DatetimeIndex, at least one (a single value holds from its
        time on).
    start, end : pandas.Timestamp
        The window, ``end`` after ``start``.
    step : pandas.Timedelta, optional
        The planner's or simulator's step; None: the gaps alone.

    Returns
    -------
    list of (pandas.Timestamp, pandas.Timestamp)
        [UTC] The missing intervals inside the window, in time order; empty when it is covered.
    """
    start, end = pd.Timestamp(start).tz_convert("UTC"), pd.Timestamp(end).tz_convert("UTC")
    idx = series.index
    parts = []
    if idx[0] > start:
        parts.append((start, idx[0]))
    if len(idx) >= 2:
        _, near, holes = _local_gaps(idx, step)
        for i in np.flatnonzero(holes):
            parts.append((idx[i] + pd.Timedelta(int(near[i]), unit=idx.unit), idx[i + 1]))
        holds = _last_holds(idx)
        tol = max(holds, pd.Timedelta(step)) if step is not None else holds
        if (end - idx[-1]) > tol:
            parts.append((idx[-1] + holds, end))
    clipped = [(max(a, start), min(b, end)) for a, b in parts]
    return [(a, b) for a, b in clipped if b > a]


def whole_steps(arrival_ns, departure_ns, start_ns: int, step_ns: int) -> tuple[np.ndarray, np.ndarray]:
    """The simulator's plugged steps of each stay: the first step that starts at or after its
    arrival, and the step after the last that ends at or before its departure.

    One rule for the simulator (:class:`nowblock.sim.block.SimulatedBlock`'s ``k_in``, ``k_out``) and
    :func:`plugged_times`: a base-load hole was judged under the steps a car is plugged in for.

    Parameters
    ----------
    arrival_ns, departure_ns : numpy.ndarray of int64
        [ns since the epoch, UTC] The stays.
    start_ns : int
        [ns since the epoch, UTC] The grid's start.
    step_ns : int
        [ns] The step, > 0.

    Returns
    -------
    k_in, k_out : numpy.ndarray of int64
        [steps from ``start_ns``] ceil((arrival - start) / step) and floor((departure - start)
        / step), neither clipped to the grid; the car is plugged in for steps k_in .. k_out - 1.
    """
    return -((start_ns - np.asarray(arrival_ns)) // step_ns), (np.asarray(departure_ns) - start_ns) // step_ns


def plugged_times(sessions: pd.DataFrame, start, end, step=None) -> list[tuple[pd.Timestamp, pd.Timestamp]] | None:
    """The times of ``start`` .. ``end`` when some car is plugged in (arrival to departure), merged.

    Parameters
    ----------
    sessions : pandas.DataFrame
        The sessions frame (``arrival``, ``departure``: times with offsets).
    start, end : pandas.Timestamp
        The window.
    step : pandas.Timedelta, optional
        The simulator's step, on a grid from ``start``: each stay is then the whole steps it
        covers, the steps the simulator plugs the car in for (from the first step that starts
        at or after its arrival to the last that ends at or before its departure). None: the
        stays as written (the optimizer plans the part of a slot a car is plugged in).

    Returns
    -------
    list of (pandas.Timestamp, pandas.Timestamp) or None
        [UTC] In time order, not overlapping; None when the times cannot be read (the sessions'
        own check says why later).
    """
    try:
        arr = pd.to_datetime(sessions["arrival"], utc=True, format="ISO8601")
        dep = pd.to_datetime(sessions["departure"], utc=True, format="ISO8601")
    except (KeyError, ValueError, TypeError):
        return None
    start, end = pd.Timestamp(start).tz_convert("UTC"), pd.Timestamp(end).tz_convert("UTC")
    if step is not None:
        # The simulator's steps (whole_steps): a 7-minute stay inside one 15-minute step is never
        # plugged in, yet the hole in the base load under it was the one a refusal named first.
        s_ns, st_ns = start.as_unit("ns").value, pd.Timedelta(step).value
        gone = (arr.isna() | dep.isna()).to_numpy()
        a_ns = np.where(gone, s_ns, pd.DatetimeIndex(arr).as_unit("ns").asi8)
        d_ns = np.where(gone, s_ns, pd.DatetimeIndex(dep).as_unit("ns").asi8)
        k_in, k_out = whole_steps(a_ns, d_ns, s_ns, st_ns)
        arr = pd.Series(pd.to_datetime(s_ns + k_in * st_ns, utc=True)).where(~gone)
        dep = pd.Series(pd.to_datetime(s_ns + k_out * st_ns, utc=True)).where(~gone)
    out: list[tuple[pd.Timestamp, pd.Timestamp]] = []
    for a, b in sorted(zip(arr.clip(lower=start), dep.clip(upper=end))):
        if pd.isna(a) or pd.isna(b) or not b > a:
            continue
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def cover_window(series: pd.Series | None, start, end, what: str, kind: str, tz: str | None = None,
                 window: str = "the planned horizon", step=None, needed=None) -> pd.Series | None:
    """``series`` checked to cover ``start`` .. ``end`` (:func:`missing_parts`): a base load
    that misses a time a car is plugged in is refused, prices that miss part of it are filled
    with their mean.

    The one coverage rule of :func:`nowblock.optimize` (its horizon) and :func:`nowblock.simulate`
    (its window). Before it a series a year off was held flat at its last value and a grid
    connection planned for the wrong load (+30 A on a 45 A phase in an outside test).

    - A **base load** without a value for any part of the window (before its first time, after
      its last, or a hole between) that ``needed`` holds (a car plugged in; all of it when
      None) is refused, naming the first such interval; elsewhere it is 0 kW. An unknown
      load of the flats is not 0 kW, and no value taken from other hours is safe. Its largest
      value, filled in before, is only the largest of the hours given: 12:00-16:00 given, the
      evening peak (32 kW) planned at 13.5 kW, +26 A on a 50 A house connection. A caller who
      knows a safe value fills the series before passing it.
    - **Prices** that cover none of the window are refused; the missing parts (ends or holes)
      of prices that cover some of it are taken as their **mean**, with one warning (holding
      the first or last price would make the unknown hours look as cheap or dear as that one
      hour and move the charging there). A wrong price costs money, not a fuse.

    Parameters
    ----------
    series : pandas.Series or None
        [kW] or [EUR/kWh] over a sorted UTC index (as :func:`time_series` gives it); None is
        returned as None (no series given: 0 kW / 0 EUR/kWh, as documented).
    start, end : pandas.Timestamp
        The window [UTC or any zone], ``end`` after ``start``.
    what : str
        How the series is named in messages (a file's path, or ``"base_load"``).
    kind : {"base_load", "prices"}
        Which rule applies.
    tz : str, optional
        Time zone of the times in messages.
    window : str
        How the window is called in messages.
    step : pandas.Timedelta, optional
        The step the window is planned or simulated at: a gap up to a step is not missing.
    needed : list of (pandas.Timestamp, pandas.Timestamp), optional
        The times a base load must be given for (:func:`plugged_times`: some car plugged in);
        a base load missing outside them is taken as 0 kW there, with one warning (no car to
        keep off a fuse then, and a value made up would put a peak or a cost in the plan that
        is not there). None: the whole window.

    Returns
    -------
    pandas.Series or None
        ``series`` itself when it covers the window; else (prices only) a copy with the mean
        added at the start of each missing part (a value holds until the next one).

    Raises
    ------
    ScenarioError
        An empty series, one that covers none of the window (its span and the window's given),
        or a base load that misses part of it (the first missing interval given).
    """
    if series is None:
        return None
    refuse_empty(series, what)
    start, end = pd.Timestamp(start).tz_convert("UTC"), pd.Timestamp(end).tz_convert("UTC")
    parts = missing_parts(series, start, end, step)
    if not parts:
        return series
    first, until = series_span(series)
    span = f"{iso_times([first], tz)[0]} .. " + (iso_times([until], tz)[0] if until < TIME_MAX else "on")
    win = f"{iso_times([start], tz)[0]} .. {iso_times([end], tz)[0]}"
    gone = sum((b - a for a, b in parts), pd.Timedelta(0))
    if gone >= end - start:
        raise ScenarioError(f"{what}: its times ({span}) cover none of {window} ({win}); a series for other days "
                            f"(a year off?) would be planned as if it were this one")
    def where(a, b) -> str:
        return ("before its first time" if b <= series.index[0] else
                "after its last time" if a >= series.index[-1] else "a gap between its times")

    a, b = parts[0]
    if kind == "base_load":
        bad = parts if needed is None else [(max(a, c), min(b, d)) for a, b in parts for c, d in needed
                                            if min(b, d) > max(a, c)]
        if bad:
            a, b = bad[0]
            lost = sum((y - x for x, y in bad), pd.Timedelta(0))
            more = f"; {len(bad)} such parts, {_hours(lost)} in all" if len(bad) > 1 else ""
            cars = ", while a car is plugged in" if needed is not None else ""
            raise ScenarioError(
                f"{what}: no value for {iso_times([a], tz)[0]} .. {iso_times([b], tz)[0]} ({_hours(b - a)}, "
                f"{where(a, b)}) of {window} ({win}){cars}{more}: an unknown load of the block is not 0 kW, and no "
                f"value taken from other hours is safe; give it for the whole window, or fill the missing part "
                f"yourself with a value known to be safe")
        fill = 0.0
        how = ("no car is plugged in then: taken as 0 kW there (no car to hold back for the fuses; a made-up value "
               "would plan a peak or a cost that is not there)")
    else:
        fill = float(series.mean())
        how = f"taken as its mean, {fill:g} EUR/kWh"
    key = ("cover", what, kind, first, until, start, end)
    if key not in _warned and len(_warned) < 1000:
        _warned.add(key)
        log.warning("%s: no value for %s of %s of %s (%s; first %s .. %s, %s): %s", what, _hours(gone),
                    _hours(end - start), window, win, iso_times([a], tz)[0], iso_times([b], tz)[0], where(a, b), how)
    extra = pd.Series(fill, index=pd.DatetimeIndex([p[0] for p in parts]).as_unit(series.index.unit))
    out = pd.concat([series, extra]).sort_index()
    out.index.name = series.index.name
    return out.rename(series.name)
