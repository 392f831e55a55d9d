"""A scenario: a site, its sessions, the block's other load and prices; on disk, a folder."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from nowblock.block.sessions import ISO_OFFSET_RE, iso_times, read_sessions_csv, validate_sessions, write_sessions_csv
from nowblock.block.site import Site

log = logging.getLogger(__name__)


class ScenarioError(ValueError):
    """A scenario folder or object that is incomplete or inconsistent."""


def _series(obj, name: str, what: str) -> pd.Series | None:
    """Normalise a time series to a float Series named ``name`` on a sorted UTC index."""
    if obj is None:
        return None
    if isinstance(obj, pd.DataFrame):
        if name not in obj.columns:
            raise ScenarioError(f"{what}: expected a column {name!r}, got {list(obj.columns)}")
        obj = obj.set_index("time")[name] if "time" in obj.columns else obj[name]
    s = pd.Series(obj, dtype=float, name=name)
    idx = pd.DatetimeIndex(s.index)
    if idx.tz is None:
        raise ScenarioError(f"{what}: time index must be timezone-aware")
    idx = idx.tz_convert("UTC")
    if len(idx) >= 3 and idx.is_monotonic_increasing and not idx.has_duplicates:
        # The same series read back from CSV equals the one written (freq included).
        idx = pd.DatetimeIndex(idx, freq="infer")
    s.index = idx
    s.index.name = "time"
    if s.index.has_duplicates:
        raise ScenarioError(f"{what}: duplicate times, first {s.index[s.index.duplicated()][0]}")
    if s.isna().any():
        raise ScenarioError(f"{what}: missing values at {list(s.index[s.isna()][:3])}")
    return s.sort_index()


@dataclass
class Scenario:
    """A block to simulate: ``site``, ``sessions`` (the sessions frame), ``base_load`` [kW]
    (Series named ``kw`` over UTC time, the block's load other than charging, net of local
    generation) and ``prices`` [EUR/kWh] (Series named ``eur_per_kwh``); both optional."""

    site: Site
    sessions: pd.DataFrame
    base_load: pd.Series | None = None
    prices: pd.Series | None = None
    name: str = "scenario"
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.sessions = validate_sessions(self.sessions, self.site)
        self.base_load = _series(self.base_load, "kw", "base_load")
        self.prices = _series(self.prices, "eur_per_kwh", "prices")

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
        base = _read_ts(p / "base_load.csv", "kw")
        prices = _read_ts(p / "prices.csv", "eur_per_kwh")
        name = p.resolve().name or site.name
        if base is None:
            log.warning("%s: no base_load.csv: the block's other load is taken as 0 kW, so only the cars load "
                        "the fuses (add base_load.csv with columns time,kw to plan around the households)", p)
        if prices is None:
            log.warning("%s: no prices.csv: cost_eur is 0 and the MILP has no reason to prefer cheap hours "
                        "(add prices.csv with columns time,eur_per_kwh)", p)
        return cls(site, sessions, base_load=base, prices=prices, name=name)

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


def _read_ts(path: Path, col: str) -> pd.Series | None:
    if not path.is_file():
        return None
    try:
        df = pd.read_csv(path)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise ScenarioError(f"{path}: cannot read it as CSV time,{col} ({exc})") from exc
    if "time" not in df.columns or col not in df.columns:
        raise ScenarioError(f"{path}: expected columns time,{col}; got {list(df.columns)}")
    text = df["time"].astype("string")
    no_offset = ~text.str.contains(ISO_OFFSET_RE, regex=True).fillna(False).to_numpy()
    if no_offset.any():
        i = int(np.argmax(no_offset))
        raise ScenarioError(f"{path}: line {i + 2}: time {text.iloc[i]!r} has no UTC offset (expected ISO 8601 "
                            f"with one, like 2026-03-02T18:00+01:00)")
    try:
        t = pd.to_datetime(text, format="ISO8601", utc=True)
    except (ValueError, TypeError) as exc:
        raise ScenarioError(f"{path}: cannot parse time column ({exc})") from exc
    values = pd.to_numeric(df[col], errors="coerce")
    bad = (values.isna() & df[col].notna()).to_numpy()
    if bad.any():
        i = int(np.argmax(bad))
        raise ScenarioError(f"{path}: line {i + 2}: {col} {df[col].iloc[i]!r} is not a number")
    return pd.Series(values.to_numpy(float), index=pd.DatetimeIndex(t), name=col)


def generate_block(**overrides) -> Scenario:
    """The embedded NOW-Block scenario with ``overrides`` (see
    :func:`nowblock.block.synth.generate_parts`); the same as ``Scenario.default(**overrides)``."""
    return Scenario.default(**overrides)
