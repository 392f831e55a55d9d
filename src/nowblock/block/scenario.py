"""A scenario: a site, its sessions, the block's other load and prices; on disk, a folder."""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from nowblock.block.sessions import (
    ISO_OFFSET_RE,
    OUTSIDE_TIMES,
    TIME_MAX,
    TIME_MIN,
    field_count_error,
    iso_times,
    read_sessions_csv,
    scan_csv,
    separator_hint,
    warn_foreign_offsets,
    validate_sessions,
    write_sessions_csv,
)
from nowblock.block.site import Site
from nowblock.block.series import (  # the series' names stay importable from here (__all__)
    ScenarioError,
    SERIES_UNITS,
    time_series,
    MAX_BASE_LOAD_RATIO,
    MAX_PRICE_EUR_PER_KWH,
    PLAUSIBLE_PRICE_EUR_PER_KWH,
    check_base_load,
    check_prices,
    refuse_empty,
    HOLE_FACTOR,
    series_span,
    missing_parts,
    plugged_times,
    cover_window,
    _SOURCES,
)

log = logging.getLogger(__name__)

__all__ = [
    "Scenario", "ScenarioError", "generate_block", "read_base_load_csv",
    "SERIES_UNITS", "time_series", "check_base_load", "check_prices", "refuse_empty", "series_span", "missing_parts",
    "plugged_times", "cover_window", "HOLE_FACTOR", "MAX_BASE_LOAD_RATIO", "MAX_PRICE_EUR_PER_KWH",
    "PLAUSIBLE_PRICE_EUR_PER_KWH",
]


@dataclass
class Scenario:
    """A block to simulate: ``site``, ``sessions`` (the sessions frame), ``base_load`` [kW]
    (Series named ``kw`` over UTC time, the block's load other than charging, net of local
    generation) and ``prices`` [EUR/kWh] (Series named ``eur_per_kwh``); both optional.

    A base load above :data:`MAX_BASE_LOAD_RATIO` times the grid connection (W for kW) and a
    price beyond :data:`MAX_PRICE_EUR_PER_KWH` either way (EUR/MWh or ct/kWh for EUR/kWh)
    raise :class:`ScenarioError`, naming the file and line when read by :meth:`from_dir`."""

    site: Site
    sessions: pd.DataFrame
    base_load: pd.Series | None = None
    prices: pd.Series | None = None
    name: str = "scenario"
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.sessions = validate_sessions(self.sessions, self.site)
        tz = self.site.timezone
        self.base_load = time_series(self.base_load, "kw", "base_load", tz)
        self.prices = time_series(self.prices, "eur_per_kwh", "prices", tz)
        what, lines = _SOURCES.get().get("base_load", ("base_load", None))
        refuse_empty(self.base_load, what)
        check_base_load(self.base_load, self.site, what, lines)
        what, lines = _SOURCES.get().get("prices", ("prices", None))
        refuse_empty(self.prices, what)
        check_prices(self.prices, tz, what, lines)

    @classmethod
    def default(cls, **overrides) -> "Scenario":
        """The embedded, seeded NOW-Block scenario (Dortmund, residential; see docs/scenario.md).

        Keyword ``overrides`` go to :func:`nowblock.block.synth.generate_parts` (for example
        ``days=14`` or ``grid_current_a=63``).
        """
        from nowblock.block.synth import generate_parts

        return cls(**generate_parts(**overrides))

    @classmethod
    def from_dir(cls, path: str | Path) -> "Scenario":
        """Read a scenario folder: site.toml, sessions.csv, optional base_load.csv, prices.csv."""
        p = Path(path)
        if not (p / "site.toml").is_file():
            raise ScenarioError(f"{p}: no site.toml (a scenario folder needs site.toml and sessions.csv)")
        if not (p / "sessions.csv").is_file():
            raise ScenarioError(f"{p}: no sessions.csv")
        site = Site.from_toml(p / "site.toml")
        sessions = read_sessions_csv(p / "sessions.csv", site)
        base, base_lines = _read_ts(p / "base_load.csv", "kw", site.timezone)
        prices, price_lines = _read_ts(p / "prices.csv", "eur_per_kwh", site.timezone)
        name = p.resolve().name or site.name
        if base is None:
            log.warning("%s: no base_load.csv: the block's other load is taken as 0 kW, so only the cars load "
                        "the fuses (add base_load.csv with columns time,kw to plan around the households)", p)
        if prices is None:
            log.warning("%s: no prices.csv: cost_eur is 0 and the MILP has no reason to prefer cheap hours "
                        "(add prices.csv with columns time,eur_per_kwh)", p)
        sources = {}
        for key, series, lines, fname in (("base_load", base, base_lines, "base_load.csv"),
                                          ("prices", prices, price_lines, "prices.csv")):
            if series is not None:
                sources[key] = (str(p / fname), pd.Series(lines, index=series.index))
        token = _SOURCES.set(sources)
        try:
            scn = cls(site, sessions, base_load=base, prices=prices, name=name)
        finally:
            _SOURCES.reset(token)
        # The files' names for later messages (simulate's window check); not a field: a variant
        # (with_site) is no longer these files.
        scn._series_files = {key: src for key, (src, _lines) in sources.items()}
        return scn

    def to_dir(self, path: str | Path) -> Path:
        """Write this scenario as a folder (created if needed); returns the folder."""
        p = Path(path)
        p.mkdir(parents=True, exist_ok=True)
        self.site.to_toml(p / "site.toml")
        # Local wall-clock times with their offset: readable, and exact after conversion to UTC.
        tz = self.site.timezone
        write_sessions_csv(self.sessions, p / "sessions.csv", tz=tz)
        for s, fname in ((self.base_load, "base_load.csv"), (self.prices, "prices.csv")):
            if s is not None:
                out = s.to_frame()
                out.index = iso_times(out.index, tz)
                out.to_csv(p / fname, index_label="time")
        return p

    def with_site(self, site: Site) -> "Scenario":
        """The same scenario on another site (for example a congested variant)."""
        return replace(self, site=site)

    @property
    def start(self) -> pd.Timestamp:
        """First arrival (UTC)."""
        return self.sessions["arrival"].min()

    @property
    def end(self) -> pd.Timestamp:
        """Last departure (UTC)."""
        return self.sessions["departure"].max()


def read_base_load_csv(path: str | Path, site: Site) -> pd.Series:
    """The block's other load [kW] from a CSV ``time,kw``, checked as a scenario's base_load.csv.

    For files read outside a scenario folder (``nowblock serve --base-load``): every time
    carries its UTC offset (a naive local time read as UTC moved the flats' evening peak by an
    hour, two in summer, in the forecast the live loop plans with), no time repeats, every value
    is a number, and no value is absurd for the grid connection (:func:`check_base_load`).

    Parameters
    ----------
    path : str or Path
        The CSV file, columns ``time`` (ISO 8601 with offset) and ``kw`` [kW].
    site : Site
        Gives the time zone for messages and the grid connection's rating.

    Returns
    -------
    pandas.Series
        [kW] named ``kw``, over UTC times, sorted by time.

    Raises
    ------
    FileNotFoundError
        No such file.
    ScenarioError
        Naming the file and its line (the header is line 1).
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such file")
    series, lines = _read_ts(p, "kw", site.timezone)
    refuse_empty(series, str(p))
    lines = pd.Series(lines, index=series.index)
    check_base_load(series, site, str(p), lines)
    return series.sort_index()


def _read_ts(path: Path, col: str, tz: str | None = None) -> tuple[pd.Series | None, np.ndarray | None]:
    """The series in CSV ``path`` (columns ``time``, ``col``), in file order, and each value's
    line in the file; (None, None) without the file.

    Every error names the file and the line (the header is line 1; blank lines, which pandas
    skips, count, as in :func:`~nowblock.block.sessions.scan_csv`: record number + 2 named
    line 6 for line 7 after a blank line); times in it are ISO 8601 text in ``tz``.
    """
    if not path.is_file():
        return None, None
    try:
        with warnings.catch_warnings():  # pandas' "loss of data": a row with a field too many is refused below
            warnings.simplefilter("ignore", pd.errors.ParserWarning)
            df = pd.read_csv(path, index_col=False)  # not the first column as the index when rows are longer
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        bad = scan_csv(path, ("time", col), (col,))[0]
        raise ScenarioError(f"{path}: " + (field_count_error(bad) if bad else
                                           f"cannot read it as CSV time,{col} ({exc})")) from exc
    bad, starts = scan_csv(path, ("time", col), (col,))
    lines = np.asarray(starts if starts is not None and len(starts) == len(df) else np.arange(len(df)) + 2)
    if bad is not None and "time" in df.columns and col in df.columns:
        raise ScenarioError(f"{path}: {field_count_error(bad)}")
    if "time" not in df.columns or col not in df.columns:
        raise ScenarioError(f"{path}: expected columns time,{col}; got {list(df.columns)}{separator_hint(df.columns)}")
    text = df["time"].astype("string")
    gone = text.isna().to_numpy()
    if gone.any():
        raise ScenarioError(f"{path}: line {lines[int(np.argmax(gone))]}: time is missing")
    no_offset = ~text.str.contains(ISO_OFFSET_RE, regex=True).fillna(False).to_numpy()
    if no_offset.any():
        i = int(np.argmax(no_offset))
        raise ScenarioError(f"{path}: line {lines[i]}: time {text.iloc[i]!r} has no UTC offset (expected ISO 8601 "
                            f"with one, like 2026-03-02T18:00+01:00)")
    try:
        t = pd.to_datetime(text, format="ISO8601", utc=True)
    except (ValueError, TypeError) as exc:
        raise ScenarioError(f"{path}: cannot parse time column ({exc})") from exc
    out = ((t < TIME_MIN) | (t > TIME_MAX)).to_numpy()
    if out.any():
        i = int(np.argmax(out))
        raise ScenarioError(f"{path}: line {lines[i]}: time {text.iloc[i]} {OUTSIDE_TIMES}")
    warn_foreign_offsets(text, t, tz, str(path), lambda i: f"line {lines[i]}")
    dup = t.duplicated().to_numpy()
    if dup.any():
        i = int(np.argmax(dup))
        first = int(np.argmax((t == t.iloc[i]).to_numpy()))
        raise ScenarioError(f"{path}: line {lines[i]}: time {iso_times([t.iloc[i]], tz)[0]} "
                            f"repeats line {lines[first]}")
    values = pd.to_numeric(df[col], errors="coerce")
    bad = (values.isna() & df[col].notna()).to_numpy()
    if bad.any():
        i = int(np.argmax(bad))
        raise ScenarioError(f"{path}: line {lines[i]}: {col} {df[col].iloc[i]!r} is not a number")
    gone = values.isna().to_numpy()
    if gone.any():
        raise ScenarioError(f"{path}: line {lines[int(np.argmax(gone))]}: {col} is missing")
    return pd.Series(values.to_numpy(float), index=pd.DatetimeIndex(t), name=col), lines


def generate_block(**overrides) -> Scenario:
    """The embedded NOW-Block scenario with ``overrides`` (see
    :func:`nowblock.block.synth.generate_parts`); the same as ``Scenario.default(**overrides)``."""
    return Scenario.default(**overrides)
