"""The live controller learns a block's habits in the block's own clock (found by an outside test)."""

import types

import pandas as pd

from nowblock.block.site import ChargePoint, Fuse, Site
from nowblock.control import Controller
from test_control import Clock, FakeCentral


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
