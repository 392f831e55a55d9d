"""``--days N`` and ``simulate(days=N)`` are N calendar days in the site's time zone.

Found by an outside test: ``nowblock simulate --days 7`` simulated 7 x 24 h, so a week from
Monday 00:00 local ended Monday 01:00 after the spring switch and Sunday 23:00 after the
autumn one.
"""

from __future__ import annotations

import pandas as pd
import pytest

import nowblock as nb
from nowblock.block.scenario import Scenario
from nowblock.block.site import ChargePoint, Fuse, Site
from nowblock.cli import main


def _daily(tz: str, monday: str, n: int) -> pd.DataFrame:
    """One stay a day from local midnight to 20:00 local, ``n`` days from ``monday``."""
    day0 = pd.Timestamp(monday)
    arr = [(day0 + pd.Timedelta(days=k)).tz_localize(tz) for k in range(n)]
    dep = [(day0 + pd.Timedelta(days=k, hours=20)).tz_localize(tz) for k in range(n)]
    return pd.DataFrame({"session_id": [f"s{k}" for k in range(n)], "charge_point_id": "CP01",
                         "arrival": arr, "departure": dep, "energy_kwh": 5.0})


def _scenario(tmp_path, tz: str, monday: str, n: int = 10) -> Scenario:
    site = Site("dst", (Fuse("grid", (63.0, 63.0, 63.0)),), (ChargePoint("CP01", "grid", max_current_a=16.0),),
                timezone=tz)
    return Scenario(site, _daily(tz, monday, n))


@pytest.mark.parametrize("tz,monday,hours", [
    ("Europe/Berlin", "2026-03-23", 167),     # spring switch on Sunday 29 March
    ("Europe/Berlin", "2026-10-19", 169),     # autumn switch on Sunday 25 October
    ("America/New_York", "2026-03-02", 167),  # US spring switch on Sunday 8 March
])
def test_cli_days_are_local_calendar_days(tmp_path, tz, monday, hours):
    _scenario(tmp_path, tz, monday).to_dir(tmp_path / "scn")
    out = tmp_path / "out"
    assert main(["simulate", "--scenario", str(tmp_path / "scn"), "--policy", "edf", "--days", "7",
                 "--step", "15min", "--out", str(out), "--no-plot", "--quiet"]) == 0
    times = pd.DatetimeIndex(pd.to_datetime(pd.read_csv(out / "timeseries.csv")["time"], utc=True))
    end = times[-1] + pd.Timedelta("15min")
    want = (pd.Timestamp(monday) + pd.Timedelta(days=7)).tz_localize(tz)
    assert end == want
    assert (end - times[0]) / pd.Timedelta("1h") == hours
    # the last day's stay is simulated to its end, the next Monday's is not in it
    sessions = pd.read_csv(out / "sessions.csv")
    assert "s6" in set(sessions["session_id"]) and "s7" not in set(sessions["session_id"])


def test_api_days_match_the_cli_and_refuse_end_too(tmp_path):
    scn = _scenario(tmp_path, "Europe/Lisbon", "2026-10-19")
    start = pd.Timestamp("2026-10-19T00:00", tz="Europe/Lisbon")
    res = nb.simulate(scn, "edf", step="15min", start=start, days=7)
    assert res.timeseries.index[-1] + pd.Timedelta("15min") == pd.Timestamp("2026-10-26T00:00", tz="Europe/Lisbon")
    assert res.metrics["n_steps"] == 169 * 4
    with pytest.raises(ValueError, match="end or days"):
        nb.simulate(scn, "edf", start=start, end=start + pd.Timedelta(days=1), days=1)


def test_calendar_end_fraction_and_switch_day():
    from nowblock.sim.simulator import calendar_end

    start = pd.Timestamp("2026-03-28T12:00", tz="Europe/Berlin")
    # 1.5 days: the next local noon (23 h across the switch), then 12 h more
    assert calendar_end(start, 1.5, "Europe/Berlin") == pd.Timestamp("2026-03-30T00:00", tz="Europe/Berlin")
    assert calendar_end(start, 1, "UTC") - start == pd.Timedelta(hours=24)
    with pytest.raises(ValueError, match="positive"):
        calendar_end(start, 0, "Europe/Berlin")
