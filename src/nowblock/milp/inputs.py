"""Checks of :func:`nowblock.optimize`'s time and series arguments, each error naming its argument.

Without them a wrong argument failed far from the call (a numba typing error for a DataFrame,
``pd.Timedelta``'s "unit abbreviation w/o a number" for ``step="quarter"``) or, worse, did not
fail: a base load on a timezone-naive index was read as UTC and the plan overloaded a fuse phase
at the real local peak; an all-NaN base load reached HiGHS, which refused the model, and the
fallback plan ignored the households; all-NaN prices made HiGHS run forever, past the time limit.

Series are checked as :class:`~nowblock.block.scenario.Scenario` checks them (the same functions,
the same messages, times in the site's zone; a base load 100 times past the grid connection is
refused as W given for kW, one alone past it is logged), so that ``optimize`` and ``simulate``
accept the same base loads and prices; on top of that a value must be finite (an infinite price
or load has no plan: the MILP ended in an AttributeError, the simulator's MILP policy in HiGHS
running forever).
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from nowblock.block.scenario import (
    ScenarioError,
    check_base_load,
    check_prices,
    cover_window,
    plugged_times,
    refuse_empty,
    time_series,
)
from nowblock.block.site import Site

_BARE_NUMBER_RE = re.compile(r"\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*")

#: What each series argument of ``optimize`` holds: its column name in a DataFrame and its unit.
SERIES_COLUMNS = {"base_load": ("kw", "kW"), "prices": ("eur_per_kwh", "EUR/kWh")}


def check_series(obj, what: str, site: Site) -> pd.Series | None:
    """``base_load`` or ``prices`` of :func:`~nowblock.milp.solve.optimize` as a float Series on
    a sorted UTC index, checked as :class:`~nowblock.block.scenario.Scenario` checks it.

    Parameters
    ----------
    obj : pandas.Series, pandas.DataFrame or None
        A Series over timezone-aware times, or a DataFrame with the column (``kw`` [kW] for
        ``base_load``, ``eur_per_kwh`` [EUR/kWh] for ``prices``) and either a ``time`` column
        or a timezone-aware index.
    what : {"base_load", "prices"}
        The argument's name (it starts every message).
    site : Site
        Its time zone is the one of the times in messages; a base load is checked against its
        grid connection's rating [A per phase] (:func:`~nowblock.block.scenario.check_base_load`).

    Returns
    -------
    pandas.Series or None
        Named ``kw`` [kW] or ``eur_per_kwh`` [EUR/kWh], index ``time`` (UTC); None for None.

    Raises
    ------
    TypeError
        ``obj`` is neither a Series nor a DataFrame (a number, a list, an array: no times).
    ScenarioError
        No values (an empty series is not "none given": pass None for that), times without an
        offset, duplicate times, missing, non-numeric or infinite values, a DataFrame without
        the column, a base load above
        :data:`~nowblock.block.scenario.MAX_BASE_LOAD_RATIO` times the grid connection [kW], or a
        price beyond :data:`~nowblock.block.scenario.MAX_PRICE_EUR_PER_KWH` either way [EUR/kWh].
    """
    if obj is None:
        return None
    column, unit = SERIES_COLUMNS[what]
    if not isinstance(obj, (pd.Series, pd.DataFrame)):
        raise TypeError(f"{what}: expected a pandas Series [{unit}] over timezone-aware times (or a DataFrame "
                        f"with a column {column!r}), got {type(obj).__name__}")
    try:
        s = time_series(obj, column, what, site.timezone)
    except ScenarioError:
        raise
    except (ValueError, TypeError) as exc:
        # Non-numeric values or times pandas cannot read: pandas's own message names neither.
        raise ScenarioError(f"{what}: expected numbers [{unit}] over timezone-aware times ({exc})") from exc
    refuse_empty(s, what)
    if what == "base_load":
        check_base_load(s, site, what)
    else:
        check_prices(s, site.timezone, what)
    return s


def cover_horizon(base_load: pd.Series | None, prices: pd.Series | None, site: Site, sessions, start,
                  horizon: pd.Timedelta, step: pd.Timedelta) -> tuple[pd.Series | None, pd.Series | None]:
    """``base_load`` and ``prices`` (as :func:`check_series` gives them) made to cover
    :func:`~nowblock.milp.solve.optimize`'s horizon (:func:`~nowblock.block.scenario.cover_window`).

    Parameters
    ----------
    base_load, prices : pandas.Series or None
        [kW], [EUR/kWh] over sorted UTC times.
    site : Site
        Its time zone is the one of the times in messages.
    sessions : pandas.DataFrame
        The sessions frame; its first arrival floored to ``step`` is the default start.
    start : pandas.Timestamp or None
        The first slot's start (:func:`check_start`); None: the first arrival.
    horizon, step : pandas.Timedelta
        The horizon and the slot length.

    Returns
    -------
    base_load, prices : pandas.Series or None
        Each as given when it covers the horizon; prices that miss part of it with the
        missing parts taken as their mean, a base load that misses only times when no car is
        plugged in with 0 kW there (one warning each).

    Raises
    ------
    ScenarioError
        A series that covers none of the horizon (its span and the horizon's given), or a base
        load that misses a time when some car is plugged in (the first such interval given).
    """
    if base_load is None and prices is None:
        return base_load, prices
    if start is None:
        try:  # the sessions are checked (and their errors raised) when the model is built
            arrival = pd.to_datetime(sessions["arrival"], utc=True, format="ISO8601")
        except (KeyError, ValueError, TypeError):
            return base_load, prices
        if not len(arrival) or arrival.isna().all():
            return base_load, prices
        start = arrival.min().floor(step)
    end = start + horizon
    where = "the horizon"
    # Only while a car is plugged in is the base load needed: a series covering the sessions'
    # span was refused under the default 24 h horizon (rev4 F3).
    needed = plugged_times(sessions, start, end)
    return (cover_window(base_load, start, end, "base_load", "base_load", site.timezone, where, step, needed),
            cover_window(prices, start, end, "prices", "prices", site.timezone, where, step))


def check_start(start) -> pd.Timestamp | None:
    """``start`` of :func:`~nowblock.milp.solve.optimize`: the first slot's start.

    Parameters
    ----------
    start : timestamp, str or None
        A timezone-aware ``Timestamp``/``datetime``, or ISO 8601 text with a UTC offset such as
        ``"2026-03-02T18:00+01:00"``; None keeps the default (the first arrival).

    Returns
    -------
    pandas.Timestamp or None

    Raises
    ------
    TypeError
        A number (it would be read as nanoseconds since 1970).
    ValueError
        Text pandas cannot read as a time, NaT, a time without an offset, or one outside
        1677-09-23 .. 2262-04-09 UTC.
    """
    from nowblock.block.sessions import aware_time

    return None if start is None else aware_time(start, "start", none_means="the first arrival")


def check_duration(value, what: str) -> pd.Timedelta:
    """``step`` or ``horizon`` of :func:`~nowblock.milp.solve.optimize` as a positive duration.

    Parameters
    ----------
    value : str, Timedelta, datetime.timedelta or numpy.timedelta64
        A duration with its unit, such as ``"15min"`` or ``"24h"``.
    what : {"step", "horizon"}
        The argument's name (it starts every message).

    Returns
    -------
    pandas.Timedelta

    Raises
    ------
    TypeError
        A bare number (pandas reads it as nanoseconds: ``step=15`` meant 15 ns slots).
    ValueError
        Text pandas cannot read as a duration, a number without a unit, NaT, or not > 0.
    """
    if isinstance(value, (bool, int, float, np.integer, np.floating)) and not isinstance(value, np.timedelta64):
        raise TypeError(f"{what}: expected a duration with a unit, such as '15min' or '24h', got the number {value!r}")
    if isinstance(value, str) and _BARE_NUMBER_RE.fullmatch(value):
        raise ValueError(f"{what}: {value!r} has no unit; expected a duration such as '15min' or '24h'")
    try:
        td = pd.Timedelta(value)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{what}: cannot read {value!r} as a duration ({exc}); expected e.g. '15min' or '24h'") \
            from exc
    if td is pd.NaT:
        raise ValueError(f"{what}: missing (NaT); expected a duration such as '15min' or '24h'")
    if td <= pd.Timedelta(0):
        raise ValueError(f"{what}: must be > 0, got {value!r}")
    return td
