"""Forecasters, and the live controller's, learn in the site's own wall clock.

Forecasters learn in the site's own wall clock where a site is known.

Found by an outside test: every forecaster defaulted to Europe/Berlin, so a New York block's
Friday-evening stays (18:00 local = Saturday 00:00 Berlin) were learnt as weekend ones: their
0.25 departure quantile was Saturday 21:31 instead of Monday 07:00.

The live controller learns a block's habits in the block's own clock (found by an outside test).
"""

from __future__ import annotations

import logging
import types

import numpy as np
import pandas as pd
import pytest
from test_control import Clock, FakeCentral

import nowblock as nb
from nowblock.block.scenario import Scenario
from nowblock.block.site import ChargePoint, Fuse, Site
from nowblock.control import Controller


def _site(tmp_path, tz: str) -> Site:
    return Site("abroad", (Fuse("grid", (63.0, 63.0, 63.0)),), (ChargePoint("CP01", "grid", max_current_a=16.0),),
                timezone=tz)


def _commuter(tz: str) -> pd.DataFrame:
    """Arrives 18:00 local Monday to Friday; leaves 07:00 local the next workday."""
    rows = []
    for d in pd.date_range("2026-01-05", "2026-04-10", freq="D"):
        if d.day_of_week >= 5:
            continue
        rows.append(("CP01", (d + pd.Timedelta(hours=18)).tz_localize(tz),
                     (d + pd.Timedelta(days=3 if d.day_of_week == 4 else 1, hours=7)).tz_localize(tz), 20.0))
    return pd.DataFrame(rows, columns=["charge_point_id", "arrival", "departure", "energy_kwh"])


def test_calendar_for_site_takes_the_sites_zone_and_country(tmp_path):
    from nowblock.forecast import Calendar

    assert Calendar.for_site(_site(tmp_path, "Europe/Lisbon")) == Calendar("Europe/Lisbon", "PT", None)
    assert Calendar.for_site(_site(tmp_path, "America/New_York")) == Calendar("America/New_York", "US", None)
    assert Calendar.for_site(_site(tmp_path, "Europe/Berlin")) == Calendar()
    assert Calendar.for_zone("UTC").country is None  # no country: no holidays rather than German ones


def test_new_york_stays_are_learnt_on_new_york_wall_clock(tmp_path):
    from nowblock.forecast import Calendar, SessionNeedsForecaster

    tz = "America/New_York"
    f = SessionNeedsForecaster(calendar=Calendar.for_site(_site(tmp_path, tz))).fit(_commuter(tz))
    for day, leaves in (("2026-04-16", "2026-04-17T07:00"), ("2026-04-17", "2026-04-20T07:00")):
        arr = pd.Timestamp(f"{day}T18:00", tz=tz)
        cars = pd.DataFrame({"charge_point_id": ["CP01"], "arrival": [arr]}, index=pd.Index(["x"], name="session_id"))
        got = f.predict_needs(cars, arr + pd.Timedelta("5min"))["departure_q0.25"].iloc[0]
        assert abs(pd.Timestamp(got) - pd.Timestamp(leaves, tz=tz)) <= pd.Timedelta("15min"), (day, got)


def test_lisbon_base_load_profile_in_lisbon_wall_clock(tmp_path):
    """A weekday-only 23:00-24:00 Lisbon peak is Saturday 00:00 in Berlin on Fridays."""
    from nowblock.forecast import BaseLoadForecaster, Calendar

    tz = "Europe/Lisbon"
    idx = pd.date_range(pd.Timestamp("2026-03-02", tz=tz), pd.Timestamp("2026-04-16T23:45", tz=tz), freq="15min")
    kw = np.where((idx.day_of_week < 5) & (idx.hour == 23), 10.0, 2.0)
    hist = pd.Series(kw, index=idx.tz_convert("UTC"))
    f = BaseLoadForecaster(calendar=Calendar.for_site(_site(tmp_path, tz)))
    fc = f.predict(hist, pd.Timestamp("2026-04-17T00:00", tz=tz), "48h").tz_convert(tz)
    assert fc.between_time("23:00", "23:45").iloc[:4].mean() == pytest.approx(10.0, abs=0.5)  # Friday 23:00
    assert fc.between_time("23:00", "23:45").iloc[4:].mean() == pytest.approx(2.0, abs=0.5)   # Saturday 23:00


def test_demo_forecasters_use_the_sites_zone(tmp_path):
    from nowblock.cli.demo import _base_forecaster, _fit_needs

    site = _site(tmp_path, "America/New_York")
    assert _fit_needs(_commuter(site.timezone), site).calendar.tz == "America/New_York"
    assert _base_forecaster(site).model.calendar.tz == "America/New_York"


def test_simulate_warns_about_a_forecaster_on_another_clock(tmp_path, caplog):
    from nowblock.forecast import BaseLoadForecaster, Calendar

    site = _site(tmp_path, "America/New_York")
    sessions = _commuter(site.timezone).iloc[-3:].assign(session_id=["a", "b", "c"])
    scn = Scenario(site, sessions)
    with caplog.at_level(logging.WARNING, logger="nowblock.sim.simulator"):
        nb.simulate(scn, "edf", step="15min", base_load_forecaster=BaseLoadForecaster())
    assert "Europe/Berlin clock, the site's time zone is America/New_York" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="nowblock.sim.simulator"):
        nb.simulate(scn, "edf", step="15min", base_load_forecaster=BaseLoadForecaster(calendar=Calendar.for_site(site)))
    assert "clock" not in caplog.text


def test_online_forecaster_learns_on_the_calendar_given_and_simulate_warns_about_the_default(tmp_path, caplog):
    """OnlineNeedsForecaster had no calendar option: for a New York block it learnt on Berlin's
    clock inside simulate(needs="unknown") without a word."""
    from nowblock.forecast import Calendar, OnlineNeedsForecaster

    site = _site(tmp_path, "America/New_York")
    scn = Scenario(site, _commuter(site.timezone).iloc[:8].assign(session_id=[f"s{k}" for k in range(8)]))
    est = OnlineNeedsForecaster(min_sessions=5, calendar=Calendar.for_site(site))
    with caplog.at_level(logging.WARNING, logger="nowblock.sim.simulator"):
        nb.simulate(scn, "edf", step="1h", needs="unknown", needs_estimator=est)
    assert est.fits > 0 and est._model.calendar.tz == "America/New_York"
    assert "clock" not in caplog.text
    with caplog.at_level(logging.WARNING, logger="nowblock.sim.simulator"):
        nb.simulate(scn, "edf", step="1h", end=scn.sessions["arrival"].min() + pd.Timedelta("2h"), needs="unknown",
                    needs_estimator=OnlineNeedsForecaster(min_sessions=5))
    assert "needs_estimator learns on the Europe/Berlin clock" in caplog.text


def test_the_controllers_needs_forecaster_learns_in_the_sites_clock():
    """A New York block's needs forecaster was refitted on Berlin's clock every day: its Friday
    18:00 stays were learnt as Saturday-midnight ones."""
    cps = tuple(ChargePoint(id=f"CP{i}", fuse="grid", max_current_a=32.0, min_current_a=6.0) for i in range(2))
    site = Site("ny", (Fuse("grid", (63.0,) * 3),), cps, timezone="America/New_York")
    clock = Clock()
    ctl = Controller(FakeCentral(site), site, "edf", period_s=60, clock=clock, min_replan_s=0.0)
    arrivals = pd.date_range(clock.now - pd.Timedelta(days=30), periods=25, freq="D")
    hist = pd.DataFrame({"charge_point_id": "CP0", "arrival": arrivals,
                         "departure": arrivals + pd.Timedelta(hours=9), "energy_kwh": 12.0})
    ctl.store = types.SimpleNamespace(sessions_history=lambda since=None: hist)
    ctl._refit_needs(clock.now)
    cal = ctl.needs_forecaster.calendar
    assert (cal.tz, cal.country) == ("America/New_York", "US")
