"""Days are calendar days in the site's time zone: simulate's and the CLI's --days, and a study's
[simulate] days.

``--days N`` and ``simulate(days=N)`` are N calendar days in the site's time zone.

Found by an outside test: ``nowblock simulate --days 7`` simulated 7 x 24 h, so a week from
Monday 00:00 local ended Monday 01:00 after the spring switch and Sunday 23:00 after the
autumn one.

A study's ``[simulate] days``: calendar days in the site's zone, as ``nowblock simulate --days``.

A study of scenario folders could not simulate their first week: ``days`` was not one of its
simulate keys (StudyError), and ``end`` is an instant (an hour off across a daylight saving switch).
"""

from __future__ import annotations

import pandas as pd
import pytest

import nowblock as nb
from nowblock.block.scenario import Scenario
from nowblock.block.site import ChargePoint, Fuse, Site
from nowblock.cli import main
from nowblock.studies import Study, StudyError, study


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


def _folder(tmp_path):
    """Ten daily stays from Monday 23 March 2026 (Berlin; the clocks go forward on the 29th)."""
    site = Site("dst", (Fuse("grid", (63.0, 63.0, 63.0)),), (ChargePoint("CP01", "grid", max_current_a=16.0),),
                timezone="Europe/Berlin")
    day0 = pd.Timestamp("2026-03-23")
    sessions = pd.DataFrame({
        "session_id": [f"s{k}" for k in range(10)], "charge_point_id": "CP01",
        "arrival": [(day0 + pd.Timedelta(days=k)).tz_localize("Europe/Berlin") for k in range(10)],
        "departure": [(day0 + pd.Timedelta(days=k, hours=20)).tz_localize("Europe/Berlin") for k in range(10)],
        "energy_kwh": 5.0})
    return Scenario(site, sessions).to_dir(tmp_path / "week")


def test_study_days_are_the_site_calendar_days(tmp_path):
    table = study(scenario_dirs=[str(_folder(tmp_path))], policies=["edf"],
                  simulate={"step": "15min", "days": [1, 7]}, engine="process", progress=False)
    assert list(table["status"]) == ["ok", "ok"], table["error"].tolist()
    steps = dict(zip(table["simulate.days"], table["n_steps"]))
    assert steps == {1: 24 * 4, 7: 167 * 4}  # Monday 00:00 to the next Monday 00:00 local: 167 h
    assert dict(zip(table["simulate.days"], table["n_sessions"])) == {1: 1, 7: 7}


@pytest.mark.parametrize("simulate, words", [
    ({"days": 7, "end": "2026-03-30T00:00:00+02:00"}, "simulate: give end or days, not both"),
    ({"days": 0}, "simulate.days: expected a positive number of calendar days, got 0"),
    ({"days": [1, -2]}, "got -2"),
    ({"days": "7"}, "got '7'"),
])
def test_study_days_that_no_cell_could_run_are_refused(tmp_path, simulate, words):
    with pytest.raises(StudyError, match=words):
        Study(scenario_dirs=[str(_folder(tmp_path))], policies=["edf"], simulate=simulate)


@pytest.mark.parametrize("simulate, words", [
    ({"step": 5}, "simulate.step: expected a duration with a unit, such as '15min' or '24h', got the number 5"),
    ({"step": ["15min", "5"]}, "simulate.step: '5' has no unit"),
    ({"horizon": "24"}, "simulate.horizon: '24' has no unit"),
    ({"horizon": "-1h"}, "simulate.horizon: must be > 0"),
])
def test_study_step_or_horizon_without_unit_is_refused_before_any_cell(tmp_path, simulate, words):
    """Every cell of such a study failed (``step = 5`` in TOML read as 5 ns: a MemoryError) or, for
    a horizon, ran without look-ahead."""
    with pytest.raises(StudyError, match=words):
        Study(scenario_dirs=[str(_folder(tmp_path))], policies=["edf"], simulate=simulate)
