"""The live controller checks its prices as a scenario and optimize do (found by a review:
``Controller(..., prices=<EUR/MWh>)`` was planned on without a word)."""

import pandas as pd
import pytest

from nowblock.block.scenario import ScenarioError
from nowblock.block.site import ChargePoint, Fuse, Site
from nowblock.control import Controller
from test_control import Clock, FakeCentral


def _controller(prices):
    site = Site("p", (Fuse("grid", (63.0,) * 3),), (ChargePoint("CP0", "grid", 16.0, 6.0),))
    clock = Clock()
    return Controller(FakeCentral(site), site, "edf", period_s=60, clock=clock, min_replan_s=0.0, prices=prices)


def test_live_prices_in_eur_per_mwh_are_refused():
    idx = pd.date_range("2026-12-07T00:00", periods=24, freq="1h", tz="UTC")
    with pytest.raises(ScenarioError, match="eur_per_kwh 300 is beyond"):
        _controller(pd.Series(300.0, index=idx))
    with pytest.raises(TypeError, match="prices: expected a pandas Series"):
        _controller([0.3] * 24)
    ctl = _controller(pd.Series(0.3, index=idx))  # EUR/kWh: planned on
    assert float(ctl.source.prices.max()) == 0.3
